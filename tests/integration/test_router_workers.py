"""The router run as its service process with two workers on one port (BERTH_ROUTER_WORKERS=2): a
real nats-server, the router's processes, in-process upstream replicas."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import psutil
import pytest
from nats.aio.client import Client
from prometheus_client.parser import text_string_to_metric_families

from libs.config import Settings
from libs.events import RequestMetricsReported
from tests.helpers import eventually
from tests.integration.test_router_proxy import Bus, Upstream, _collect, bus, get, serving, upstreams  # noqa: F401

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def workers(settings: Settings, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    env = dict(os.environ)
    env.update(
        BERTH_NATS_URL=str(settings.nats_url), BERTH_ROUTER_PORT=str(settings.router_port),
        BERTH_DATA_DIR=str(settings.data_dir), BERTH_ROUTER_WORKERS="2",
        BERTH_ROUTER_METRICS_INTERVAL_SECONDS="0.3", PYTHONUNBUFFERED="1",
    )  # fmt: skip
    with open(tmp_path / "router.log", "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "services.router"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    yield process
    if process.poll() is None:
        left = _children(process)
        process.kill()
        process.wait(10)
        for worker in left:
            if _running(worker):
                worker.kill()


def _children(process: subprocess.Popen[bytes]) -> list[psutil.Process]:
    return psutil.Process(process.pid).children()


async def test_two_workers_share_the_port_each_reports_its_own_requests_and_a_scrape_sees_both(
    workers: subprocess.Popen[bytes], settings: Settings, bus: Bus, nc: Client, upstreams: list[Upstream]  # noqa: F811
) -> None:
    reports: list[RequestMetricsReported] = []
    everything: list[RequestMetricsReported] = []  # the wait's requests too
    await nc.subscribe("berth.metrics.v1.requests.d1", cb=_collect(reports))
    await nc.subscribe("berth.metrics.v1.requests.d1", cb=_collect(everything))
    await bus.assign(serving=upstreams[:1])
    url = f"http://127.0.0.1:{settings.router_port}/default/iris/"
    # A new connection for each request: the kernel spreads connections (not requests) over the workers.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
        await eventually(lambda: len(_children(workers)) == 2, what="two worker processes")
        # Both workers must have read the assignment before counting: every request then is answered.
        await eventually(
            lambda: _all_ok(http, url, 20), timeout=20, what="every worker serving the deployment"
        )
        await eventually(lambda: reports and reports[-1].requests == 0, what="the wait's traffic reported")
        reports.clear()
        for _ in range(40):
            assert (await get(http, url))[0] == 200
        await eventually(lambda: _quiet_after(reports, 40), what="the 40 requests reported, then quiet windows")
    busy = {r.reporter for r in reports if r.requests}
    pids = {str(child.pid) for child in _children(workers)}
    assert len(busy) == 2 and {reporter.rsplit("/", 1)[1] for reporter in busy} == pids
    assert sum(r.requests for r in reports) == 40

    # Every scrape, whichever worker its connection reaches, counts both workers' requests.
    scraped = set()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
        for _ in range(6):
            async with http.get(f"http://127.0.0.1:{settings.router_port}/_berth/metrics") as response:
                assert response.status == 200
                text = await response.text()
            [total] = [s.value for f in text_string_to_metric_families(text) for s in f.samples
                       if s.name == "berth_router_requests_total" and s.labels["deployment"] == "iris"]  # fmt: skip
            scraped.add(total)
    assert scraped == {sum(r.requests for r in everything)}

    workers.send_signal(signal.SIGTERM)
    assert workers.wait(15) == 0
    assert not [p for p in psutil.process_iter(["pid"]) if str(p.info["pid"]) in pids and _running(p)]


async def test_a_worker_that_dies_stops_the_router_so_its_supervisor_restarts_it(
    workers: subprocess.Popen[bytes],
) -> None:
    children = await eventually(lambda: len(_children(workers)) == 2 and _children(workers), what="two workers")
    children[0].kill()
    assert workers.wait(15) != 0
    assert not _running(children[1])


async def _all_ok(http: aiohttp.ClientSession, url: str, count: int) -> bool:
    try:
        return all([(await get(http, url))[0] == 200 for _ in range(count)])
    except aiohttp.ClientConnectionError:  # no worker listening yet
        return False


def _quiet_after(reports: list[RequestMetricsReported], requests: int) -> bool:
    """All `requests` reported, and every reporter that served some has reported a quiet window since."""
    if sum(r.requests for r in reports) < requests:
        return False
    last = {r.reporter: r for r in reports}
    return all(report.requests == 0 for report in last.values())


def _running(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


async def test_workers_go_with_a_parent_killed_outright(workers: subprocess.Popen[bytes]) -> None:
    children = await eventually(lambda: len(_children(workers)) == 2 and _children(workers), what="two workers")
    workers.kill()  # as `berth up` does to a router still running after its grace
    workers.wait(10)
    await eventually(lambda: not any(_running(child) for child in children), what="the workers gone with it")
