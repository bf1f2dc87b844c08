"""Apply -> first request served: from the POST of a new deployment to the first 200 through the router.

    .venv/bin/python bench/bench_apply_to_first_request.py [--deployments 30] [--before DIR] [--runs N]

Starts `berth up` (the embedded default, as a user runs it) on a temporary data dir and free ports,
then creates `--deployments` fresh deployments one at a time, each 1 replica of a tiny stdlib HTTP
server (tests/servers/echo.py), and for each asks its endpoint every 5 ms until one request is answered
200. Twice: without a readiness probe (ready once the port accepts) and with an HTTP readiness probe
of periodSeconds 1. Uses only the REST API and the endpoint, so it measures any version of berth the
same way. One warm-up deployment per variant is left out of the figures.

Beside each deployment without a probe it starts the same command directly (no berth) and times it
until its port accepts, tried every ~1 ms: the app's own start, which berth cannot shorten; the figure
"beyond the app's own start" is each apply -> 200 minus the own start measured next to it. Then where
the time went, per stage, from what berth leaves behind (read after the deployments, so nothing is
added to what is measured): the stream times of SpecApplied, the first ready ReplicaHealthChanged and
the first TrafficAssigned with a replica (read as the scheduler's NATS user), the shim's start in the
runtime's replica.json, and the time the shim stamped on the app's "echo listening" line. Under heavy
load the shim reads that line late, and the next stage can then come out negative.

`--before DIR` runs `berth up` of another checkout too (e.g. `git archive` of main into /tmp), in the
same rounds, alternating; `--runs N` repeats the rounds and prints medians of the rounds' p50 and p99.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import ECHO, report, to_listening  # noqa: E402
from libs.natsd import free_port  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
POLL_SECONDS = 0.005
UP_TIMEOUT_SECONDS = 240.0  # a loaded machine starts it slowly
READINESS = {"readiness": {"path": "/", "periodSeconds": 1}}


@contextlib.asynccontextmanager
async def berth_up(
    work: Path, extra_env: dict[str, str] | None = None, router_connections: int = 100
) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient]]:
    """`berth up` on `work` with free ports, and clients of its API (with the admin token) and its
    router; Ctrl-C to it on the way out."""
    async with berth_up_of(REPO, work, extra_env, router_connections) as (api, router, _env):
        yield api, router


@contextlib.asynccontextmanager
async def berth_up_of(
    tree: Path, work: Path, extra_env: dict[str, str] | None = None, router_connections: int = 100
) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient, dict[str, str]]]:
    """berth_up of the checkout `tree`, also yielding the environment it runs with (its ports)."""
    process, env = _start_berth_up(work, extra_env, tree)
    token = (work / "berth" / "token").read_text().strip()
    limits = httpx.Limits(max_connections=router_connections, max_keepalive_connections=router_connections)
    try:
        async with (
            httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{env['BERTH_API_PORT']}", headers={"Authorization": f"Bearer {token}"}, timeout=30
            ) as api,
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{env['BERTH_ROUTER_PORT']}", timeout=30, limits=limits) as router,
        ):  # fmt: skip
            yield api, router, env
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(120)


def _start_berth_up(
    work: Path, extra_env: dict[str, str] | None, tree: Path = REPO
) -> tuple[subprocess.Popen[bytes], dict[str, str]]:
    names = ("API", "ROUTER", "NATS", "SCHEDULER_OPS", "HEALTH_MONITOR_OPS", "AUTOSCALER_OPS", "INTEGRATIONS_OPS",
             "METRICS_OPS", "ALERTING_OPS")
    ports = {k: free_port() for k in names}
    env = {k: v for k, v in os.environ.items() if not k.startswith("BERTH_")}
    env |= {f"BERTH_{k}_PORT": str(v) for k, v in ports.items()}
    env |= {"BERTH_DATA_DIR": str(work / "berth"), "BERTH_STOP_GRACE_SECONDS": "3", "BERTH_LOG_LEVEL": "WARNING"}
    env |= extra_env or {}
    # `python -m` puts the working directory first on sys.path: `tree`'s berth runs, with this venv.
    with (work / "up.out").open("ab") as log:
        process = subprocess.Popen([sys.executable, "-m", "berth", "up"], env=env, cwd=tree, stdout=log, stderr=log)
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


def fine(samples: list[float]) -> str:
    """p50 and p99 in ms with a decimal: the stages are a few ms each."""
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return f"p50 {cuts[49] * 1000:7.1f} ms   p99 {cuts[98] * 1000:7.1f} ms"


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


@dataclass
class Sample:
    """One deployment: wall-clock times (time.time()) the bench saw, and the seconds apply -> 200."""

    deployment_id: str
    posted: float
    accepted: float
    served: float
    seconds: float


async def apply_and_call(api: httpx.AsyncClient, router: httpx.AsyncClient, name: str, readiness: bool) -> Sample:
    """From sending the create until the endpoint first answered 200."""
    posted, began = time.time(), time.perf_counter()
    created = (await api.post("/v1/deployments", json=spec(name, readiness))).raise_for_status().json()
    accepted = time.time()
    path = f"/{created['project']}/{created['slug']}/"
    deadline = began + 60
    while time.perf_counter() < deadline:
        try:
            if (await router.get(path)).status_code == 200:
                seconds = time.perf_counter() - began
                return Sample(created["deployment_id"], posted, accepted, time.time(), seconds)
        except httpx.TransportError:
            pass
        await asyncio.sleep(POLL_SECONDS)  # polling the endpoint is what is measured
    raise SystemExit(f"{name}: no 200 from {path} within 60 s")


def own_start() -> float:
    """Seconds from spawning the replica's command directly (no berth) until its port accepts, tried
    every ~1 ms: the app's own start, which berth cannot make shorter."""
    return to_listening([], free_port())


# -- where the time goes: the events' stream times and occurred_at, the runtime's files ----------

STAGES = (
    ("POST answered (registry committed)", "posted", "accepted"),
    ("-> SpecApplied in JetStream (relay)", "accepted", "spec_stored"),
    ("-> shim spawned (scheduler, runtime)", "spec_stored", "spawned"),
    ("-> app listening (shim + app start)", "spawned", "listening"),
    ("-> ready published (health-monitor)", "listening", "ready_stored"),
    ("-> TrafficAssigned in JetStream (scheduler)", "ready_stored", "traffic_stored"),
    ("-> first 200 (router, 5 ms polls)", "traffic_stored", "served"),
)


async def stream_messages(nc: Any, stream: str, subject: str) -> list[tuple[dict[str, Any], float]]:
    """Every message of `subject` the stream holds: (its JSON body, when the stream stored it)."""
    js = nc.jetstream()
    sub = await js.pull_subscribe(subject, stream=stream)
    out: list[tuple[dict[str, Any], float]] = []
    try:
        while (await sub.consumer_info()).num_pending:
            for message in await sub.fetch(batch=256, timeout=5):
                out.append((json.loads(message.data), message.metadata.timestamp.timestamp()))
                await message.ack()
    finally:
        await sub.unsubscribe()
    return out


def _at(text: str | None) -> float | None:
    return None if text is None else datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


async def stage_times(work: Path, env: dict[str, str], samples: list[Sample]) -> dict[str, list[float]]:
    """Per stage (STAGES), the seconds each sample spent in it. Read as the scheduler's NATS user (it
    reads every stream concerned); the times of events are the machine's wall clock, as the bench's."""
    import nats

    password = json.loads((work / "berth" / "nats" / "credentials.json").read_text())["scheduler"]
    nc = await nats.connect(
        f"nats://127.0.0.1:{env['BERTH_NATS_PORT']}", user="scheduler", password=password, inbox_prefix=b"_INBOX_scheduler"
    )
    try:
        specs = await stream_messages(nc, "BERTH_SPECS", "berth.spec.v1.*")
        replicas = await stream_messages(nc, "BERTH_REPLICAS", "berth.replica.v1.*.*")
        health = await stream_messages(nc, "BERTH_HEALTH", "berth.health.v1.*.*")
        traffic = await stream_messages(nc, "BERTH_TRAFFIC", "berth.traffic.v1.*")
    finally:
        await nc.close()

    def first(messages: list[tuple[dict[str, Any], float]], deployment_id: str, ok: Any) -> tuple[dict[str, Any], float]:
        return next((m, t) for m, t in messages if m.get("deployment_id") == deployment_id and ok(m))

    spans: dict[str, list[float]] = {label: [] for label, _, _ in STAGES}
    for sample in samples:
        did = sample.deployment_id
        started, _ = first(replicas, did, lambda m: m.get("kind") == "replica.started")
        replica_dir = work / "berth" / "replicas" / started["replica_id"]
        log_lines = (replica_dir / "output.log").read_text().splitlines()
        times = {
            "posted": sample.posted,
            "accepted": sample.accepted,
            "spec_stored": first(specs, did, lambda m: m.get("kind") == "spec.applied")[1],
            "spawned": _at(json.loads((replica_dir / "replica.json").read_text())["started_at"]),
            # The shim stamps each line of the app's output as it reads it; echo.py prints when it listens.
            "listening": _at(next(line.split(" ", 1)[0] for line in log_lines if "echo listening" in line)),
            "ready_stored": first(health, did, lambda m: m.get("ready"))[1],
            "traffic_stored": first(traffic, did, lambda m: any(t.get("replicas") for t in m.get("targets", ())))[1],
            "served": sample.served,
        }
        for label, since, until in STAGES:
            spans[label].append(times[until] - times[since])
    return spans


async def bench(deployments: int, work: Path, tree: Path) -> dict[str, list[float]]:
    """One round on `tree`; returns the samples of the headline figures (seconds) for the medians."""
    results: dict[str, list[Sample]] = {}
    own: list[float] = []
    stages: dict[str, dict[str, list[float]]] = {}
    async with berth_up_of(tree, work) as (api, router, env):
        for label, readiness in (("port accepts (no probe)", False), ("HTTP readiness, period 1 s", True)):
            prefix = "probe" if readiness else "tcp"
            await apply_and_call(api, router, f"{prefix} warm-up", readiness)
            results[label] = []
            for i in range(deployments):
                if not readiness:
                    own.append(own_start())  # interleaved: the same load as the deployment beside it
                results[label].append(await apply_and_call(api, router, f"{prefix} {i}", readiness))
            stages[label] = await stage_times(work, env, results[label])

    rows = [(label, figures(samples)) for label, samples in rows_samples(results, own)]
    report(
        f"apply -> first request served through the router, {deployments} fresh deployments each, one at a time,"
        f" `berth up` of {tree}, {os.cpu_count()} cores, load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}",
        rows,
    )
    for label, spans in stages.items():
        report(f"  where the time goes, {label}:", [(stage, fine(values)) for stage, values in spans.items()])
    headline = dict(rows_samples(results, own))
    return headline | {f"  {stage}": spans for stage, spans in stages["port accepts (no probe)"].items()}


def rows_samples(results: dict[str, list[Sample]], own: list[float]) -> list[tuple[str, list[float]]]:
    tcp = [s.seconds for s in results["port accepts (no probe)"]]
    return [
        *((label, [s.seconds for s in samples]) for label, samples in results.items()),
        ("the app's own start", own),
        ("port accepts, beyond the app's own start", [a - b for a, b in zip(tcp, own, strict=True)]),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--deployments", type=int, default=30)
    parser.add_argument("--before", type=Path, help="another checkout (e.g. main), measured in the same rounds")
    parser.add_argument("--runs", type=int, default=1, help="rounds; with more than one, medians are printed")
    args = parser.parse_args()
    trees = {"before": args.before.resolve(), "after": REPO} if args.before else {"this tree": REPO}
    rounds: dict[str, list[dict[str, list[float]]]] = {name: [] for name in trees}
    for _ in range(args.runs):
        for name, tree in trees.items():  # interleaved: both see the machine's load of the moment
            with tempfile.TemporaryDirectory(prefix="berth-bench-") as work:
                rounds[name].append(asyncio.run(bench(args.deployments, Path(work), tree)))
    if args.runs > 1 or args.before:
        for name, runs in rounds.items():
            report(
                f"{name}: medians over {args.runs} rounds of each round's p50 / p99",
                [(label, median_of(runs, label)) for label in runs[0]],
            )


def median_of(runs: list[dict[str, list[float]]], label: str) -> str:
    cuts = [statistics.quantiles(run[label], n=100, method="inclusive") for run in runs]
    p50 = statistics.median(c[49] for c in cuts) * 1000
    p99 = statistics.median(c[98] for c in cuts) * 1000
    return f"p50 {p50:7.1f} ms   p99 {p99:7.1f} ms"


if __name__ == "__main__":
    main()
