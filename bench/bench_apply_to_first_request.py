"""Apply -> first request served: from the POST of a new deployment to the first 200 through the router.

    .venv/bin/python bench/bench_apply_to_first_request.py [--deployments 30]

Starts `berth up` (the embedded default, as a user runs it) on a temporary data dir and free ports,
then creates `--deployments` fresh deployments one at a time, each 1 replica of a tiny stdlib HTTP
server (tests/servers/echo.py), and for each asks its endpoint every 5 ms until one request is answered
200. Twice: without a readiness probe (ready once the port accepts) and with an HTTP readiness probe
of periodSeconds 1. Uses only the REST API and the endpoint, so it measures any version of berth the
same way. One warm-up deployment per variant is left out of the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import report  # noqa: E402
from libs.natsd import free_port  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ECHO = str(REPO / "tests" / "servers" / "echo.py")
POLL_SECONDS = 0.005
UP_TIMEOUT_SECONDS = 240.0  # a loaded machine starts it slowly
READINESS = {"readiness": {"path": "/", "periodSeconds": 1}}


@contextlib.asynccontextmanager
async def berth_up(
    work: Path, extra_env: dict[str, str] | None = None, router_connections: int = 100
) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient]]:
    """`berth up` on `work` with free ports, and clients of its API (with the admin token) and its
    router; Ctrl-C to it on the way out."""
    process, env = _start_berth_up(work, extra_env)
    token = (work / "berth" / "token").read_text().strip()
    limits = httpx.Limits(max_connections=router_connections, max_keepalive_connections=router_connections)
    try:
        async with (
            httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{env['BERTH_API_PORT']}", headers={"Authorization": f"Bearer {token}"}, timeout=30
            ) as api,
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{env['BERTH_ROUTER_PORT']}", timeout=30, limits=limits) as router,
        ):  # fmt: skip
            yield api, router
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(120)


def _start_berth_up(work: Path, extra_env: dict[str, str] | None) -> tuple[subprocess.Popen[bytes], dict[str, str]]:
    names = ("API", "ROUTER", "NATS", "SCHEDULER_OPS", "HEALTH_MONITOR_OPS", "AUTOSCALER_OPS", "INTEGRATIONS_OPS",
             "METRICS_OPS", "ALERTING_OPS")
    ports = {k: free_port() for k in names}
    env = {k: v for k, v in os.environ.items() if not k.startswith("BERTH_")}
    env |= {f"BERTH_{k}_PORT": str(v) for k, v in ports.items()}
    env |= {"BERTH_DATA_DIR": str(work / "berth"), "BERTH_STOP_GRACE_SECONDS": "3", "BERTH_LOG_LEVEL": "WARNING"}
    env |= extra_env or {}
    with (work / "up.out").open("ab") as log:
        process = subprocess.Popen([sys.executable, "-m", "berth", "up"], env=env, cwd=REPO, stdout=log, stderr=log)
    deadline = time.monotonic() + UP_TIMEOUT_SECONDS
    while "berth is up" not in (work / "up.out").read_text(errors="replace"):
        if process.poll() is not None or time.monotonic() > deadline:
            process.send_signal(signal.SIGINT)  # not left running behind a failed run
            process.wait(120)
            raise SystemExit(f"berth up did not come up; see {work / 'up.out'}")
        time.sleep(0.1)
    return process, env


def figures(samples: list[float]) -> str:
    """p50, p99 and max in ms; p99 interpolated between samples (never beyond the largest, as the
    exclusive method would put it with 30 samples)."""
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return f"p50 {cuts[49] * 1000:6.0f} ms   p99 {cuts[98] * 1000:6.0f} ms   max {max(samples) * 1000:6.0f} ms"


def spec(name: str, readiness: bool) -> dict[str, Any]:
    document: dict[str, Any] = {
        "name": name,
        "image": "python:3.11-slim",
        "command": [sys.executable, ECHO],
        "resources": {"ports": [8000], "replicas": 1},
    }
    if readiness:
        document["healthChecks"] = READINESS
    return document


async def apply_and_call(api: httpx.AsyncClient, router: httpx.AsyncClient, name: str, readiness: bool) -> float:
    """Seconds from sending the create until the endpoint first answered 200."""
    began = time.perf_counter()
    created = (await api.post("/v1/deployments", json=spec(name, readiness))).raise_for_status().json()
    path = f"/{created['project']}/{created['slug']}/"
    deadline = began + 60
    while time.perf_counter() < deadline:
        try:
            if (await router.get(path)).status_code == 200:
                return time.perf_counter() - began
        except httpx.TransportError:
            pass
        await asyncio.sleep(POLL_SECONDS)  # polling the endpoint is what is measured
    raise SystemExit(f"{name}: no 200 from {path} within 60 s")


async def bench(deployments: int, work: Path) -> None:
    results: dict[str, list[float]] = {}
    async with berth_up(work) as (api, router):
        for label, readiness in (("port accepts (no probe)", False), ("HTTP readiness, period 1 s", True)):
            prefix = "probe" if readiness else "tcp"
            await apply_and_call(api, router, f"{prefix} warm-up", readiness)
            results[label] = [await apply_and_call(api, router, f"{prefix} {i}", readiness) for i in range(deployments)]

    report(
        f"apply -> first request served through the router, {deployments} fresh deployments each, one at a time,"
        f" `berth up`, {os.cpu_count()} cores",
        [(label, figures(samples)) for label, samples in results.items()],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--deployments", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="berth-bench-") as work:
        asyncio.run(bench(args.deployments, Path(work)))


if __name__ == "__main__":
    main()
