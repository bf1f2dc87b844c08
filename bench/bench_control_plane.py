"""Control-plane latency: from a published SpecApplied to a replica process, and to a ready replica.

    .venv/bin/python bench/bench_control_plane.py [--existing 200] [--new 30]

Starts its own nats-server, the scheduler and the health-monitor (each its own process, as `berth up`
runs them). It first applies `--existing` deployments that are stopped (`enabled: false`), so that the
scheduler holds that many in its state, then applies `--new` deployments one at a time (1 replica of
`python -m http.server`) and measures, from the moment each SpecApplied is published:
- process started: the runtime spawned the replica's process (the time it recorded right after);
- ReplicaStarted received: the scheduler announced it on the bus;
- ready: the health-monitor's ReplicaHealthChanged(ready=true) (its TCP probe: the port accepts).
Prints p50 / p99 / max of each. Target: p99 to process started <= 100 ms.

    .venv/bin/python bench/bench_control_plane.py --footprint [--runs 3] [--window 20]
    BERTH_UP_PROCESSES=per-service .venv/bin/python bench/bench_control_plane.py --footprint

The footprint of an idle `berth up` (issue 15: <= 200 MiB, <= 0.5 % of a core): starts it on free ports
in a fresh data directory, waits for the API, lets it settle, then reads every process of its tree
(nats-server, the services, the supervisor): RSS and USS (memory only that process holds; RSS counts
shared libraries once per process; PSS shares them out, so its total is what the machine holds), and CPU over `--window` seconds of idling. Prints each process and
the total, the median of `--runs` runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import nats
import psutil
from nats.aio.msg import Msg

from libs.bus import ensure_streams, make_broker, publish
from libs.events import (
    DeploymentRef,
    Event,
    ReplicaHealthChanged,
    ReplicaStarted,
    SpecApplied,
    decode_event,
    new_id,
)
from libs.natsd import free_port, start_nats_server, wait_for_port
from libs.spec import validate_spec

REPO = Path(__file__).resolve().parents[1]
TARGET_P99_MS = 100.0


def spec(name: str, enabled: bool) -> SpecApplied:
    document = {
        "name": name,
        "image": "python:3.11",
        "enabled": enabled,
        "command": [sys.executable, "-m", "http.server", "$PORT", "--bind", "127.0.0.1"],
        "resources": {"ports": [8000], "replicas": 1},
    }
    parsed = validate_spec(document)
    return SpecApplied(
        deployment_id=new_id(), project="bench", slug=parsed.slug, name=name,
        spec_id=new_id(), spec_version=1, spec=parsed,
    )  # fmt: skip


class Waiter:
    """The first event of a kind per deployment, with the perf_counter time it arrived."""

    def __init__(self) -> None:
        self.seen: dict[tuple[str, str], tuple[float, Event]] = {}
        self.changed = asyncio.Event()

    async def on_message(self, message: Msg) -> None:
        event = decode_event(message.data)
        if not isinstance(event, DeploymentRef) or (isinstance(event, ReplicaHealthChanged) and not event.ready):
            return
        self.seen.setdefault((event.deployment_id, event.type), (time.perf_counter(), event))
        self.changed.set()

    async def wait(self, deployment_id: str, kind: str, timeout: float = 30.0) -> tuple[float, Event]:
        deadline = time.monotonic() + timeout
        while (deployment_id, kind) not in self.seen:
            self.changed.clear()
            await asyncio.wait_for(self.changed.wait(), max(0.01, deadline - time.monotonic()))
        return self.seen[(deployment_id, kind)]

    def count(self, kind: str) -> int:
        return sum(1 for (_, k) in self.seen if k == kind)


def start_service(name: str, env: dict[str, str], logs: Path) -> subprocess.Popen[bytes]:
    with (logs / f"{name}.log").open("ab") as log:
        return subprocess.Popen([sys.executable, "-m", f"services.{name}"], env=env, cwd=REPO, stdout=log, stderr=log)


def process_started_at(data_dir: Path, replica_id: str) -> float:
    """When the runtime had the replica's process running (its clock, read right after the spawn).
    psutil's create_time would do, but it is offset by up to a second (boot time is whole seconds)."""
    state = json.loads((data_dir / "replicas" / replica_id / "replica.json").read_text())
    return datetime.fromisoformat(state["started_at"]).timestamp()


def summary(label: str, values_ms: list[float]) -> str:
    ordered = sorted(values_ms)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return (f"{label:<28} p50 {statistics.median(ordered):7.1f} ms   p99 {p99:7.1f} ms   "
            f"max {ordered[-1]:7.1f} ms   (n={len(ordered)})")  # fmt: skip


async def bench(existing: int, new: int, work: Path) -> bool:
    port = free_port()
    nats_server = start_nats_server(work / "jetstream", port)
    url = f"nats://127.0.0.1:{port}"
    data_dir = work / "berth"
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "BERTH_NATS_URL": url,
        "BERTH_DATA_DIR": str(data_dir),
        "BERTH_SCHEDULER_OPS_PORT": str(free_port()),
        "BERTH_HEALTH_MONITOR_OPS_PORT": str(free_port()),
        "BERTH_STOP_REPLICAS_ON_EXIT": "true",
        "BERTH_LOG_LEVEL": "WARNING",
    }
    services: list[subprocess.Popen[bytes]] = []
    nc = await nats.connect(url)
    await ensure_streams(nc.jetstream())
    broker = make_broker(url, "bench")
    await broker.start()
    waiter = Waiter()
    await nc.subscribe("berth.replica.v1.>", cb=waiter.on_message)
    await nc.subscribe("berth.health.v1.>", cb=waiter.on_message)
    await nc.subscribe("berth.status.v1.>", cb=waiter.on_message)
    try:
        for name in ("scheduler", "health_monitor"):
            services.append(start_service(name, env, work))
        wait_for_port("127.0.0.1", int(env["BERTH_SCHEDULER_OPS_PORT"]), timeout=30)
        wait_for_port("127.0.0.1", int(env["BERTH_HEALTH_MONITOR_OPS_PORT"]), timeout=30)

        began = time.perf_counter()
        for i in range(existing):
            await publish(broker, spec(f"stopped-{i}", enabled=False))
        while waiter.count("deployment.status_changed") < existing:
            waiter.changed.clear()
            await asyncio.wait_for(waiter.changed.wait(), 60)
        print(f"{existing} stopped deployments in the scheduler's state in {time.perf_counter() - began:.1f} s")

        to_process, to_event, to_ready = [], [], []
        for i in range(new):
            applied = spec(f"new-{i}", enabled=True)
            published_wall, published = time.time(), time.perf_counter()
            await publish(broker, applied)
            started_at, started = await waiter.wait(applied.deployment_id, "replica.started")
            ready_at, _ = await waiter.wait(applied.deployment_id, "replica.health_changed")
            assert isinstance(started, ReplicaStarted)
            to_process.append(1000 * (process_started_at(data_dir, started.replica_id) - published_wall))
            to_event.append(1000 * (started_at - published))
            to_ready.append(1000 * (ready_at - published))
    finally:
        await broker.stop()
        await nc.drain()
        for service in services:  # the scheduler stops its replicas (BERTH_STOP_REPLICAS_ON_EXIT)
            service.send_signal(signal.SIGTERM)
        for service in services:
            service.wait(60)
        nats_server.terminate()
        nats_server.wait(10)

    print(f"SpecApplied published -> ..., {new} new deployments applied one at a time, {existing} more present")
    print(summary("process started", to_process))
    print(summary("ReplicaStarted received", to_event))
    print(summary("replica ready (TCP probe)", to_ready))
    p99 = sorted(to_process)[min(len(to_process) - 1, round(0.99 * (len(to_process) - 1)))]
    verdict = "meets" if p99 <= TARGET_P99_MS else "MISSES"
    print(f"p99 to process started {p99:.1f} ms {verdict} the {TARGET_P99_MS:.0f} ms target")
    return p99 <= TARGET_P99_MS


MIB = 1024 * 1024
SETTLE_SECONDS = 5.0


def footprint_once(work: Path, window: float) -> dict[str, tuple[float, float, float, float]]:
    """One idle `berth up`: {process: (RSS, USS, PSS MiB, % of a core)}, the supervisor as `supervisor`."""
    ports = ("API", "ROUTER", "NATS", "SCHEDULER_OPS", "HEALTH_MONITOR_OPS", "INTEGRATIONS_OPS",
             "AUTOSCALER_OPS", "ALERTING_OPS", "METRICS_OPS")  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("BERTH_") or k == "BERTH_UP_PROCESSES"}
    env |= {f"BERTH_{k}_PORT": str(free_port()) for k in ports}
    env |= {"BERTH_DATA_DIR": str(work / "berth"), "BERTH_LOG_LEVEL": "WARNING", "PYTHONPATH": str(REPO)}
    with (work / "up.out").open("ab") as out:
        up = subprocess.Popen([sys.executable, "-m", "berth", "up"], env=env, cwd=REPO, stdout=out, stderr=out)
    try:
        deadline = time.monotonic() + 240  # a loaded machine starts it slowly
        while "berth is up" not in (work / "up.out").read_text(errors="replace"):
            if time.monotonic() > deadline or up.poll() is not None:
                raise RuntimeError(f"berth up did not come up: {(work / 'up.out').read_text(errors='replace')}")
            time.sleep(0.2)  # polling a file the child writes; no event to await across processes
        time.sleep(SETTLE_SECONDS)  # startup work (imports, first resyncs) is not idling
        root = psutil.Process(up.pid)
        processes = [root, *root.children(recursive=True)]
        before = {p.pid: sum(p.cpu_times()[:2]) for p in processes}
        time.sleep(window)  # the idle window CPU is measured over
        figures: dict[str, tuple[float, float, float, float]] = {}
        count: dict[str, int] = {}
        for p in processes:
            info = p.memory_full_info()
            cpu = 100 * (sum(p.cpu_times()[:2]) - before[p.pid]) / window
            name = "supervisor" if p.pid == up.pid else _label(p)
            figure = (info.rss / MIB, info.uss / MIB, info.pss / MIB, cpu)
            count[name] = count.get(name, 0) + 1
            summed = figures.get(name, (0.0, 0.0, 0.0, 0.0))
            figures[name] = tuple(a + b for a, b in zip(summed, figure, strict=True))  # type: ignore[assignment]
        # Processes of one label (the router's parent and its workers) are summed on one row.
        return {(f"{name} ({count[name]} processes)" if count[name] > 1 else name): f for name, f in figures.items()}
    finally:
        up.send_signal(signal.SIGINT)
        up.wait(180)


def _label(process: psutil.Process) -> str:
    """nats-server, or the services a Python process runs (`services.x` in its command line)."""
    if process.name() == "nats-server":
        return "nats-server"
    names = [a.removeprefix("services.") for a in process.cmdline() if a.startswith("services.")]
    return "+".join(names) or " ".join(process.cmdline()[-2:])


def footprint(runs: int, window: float) -> None:
    results = []
    for _ in range(runs):
        with tempfile.TemporaryDirectory(prefix="berth-footprint-") as work:
            results.append(footprint_once(Path(work), window))
    mode = os.environ.get("BERTH_UP_PROCESSES", "(default)")
    print(f"idle `berth up` (BERTH_UP_PROCESSES={mode}), median of {runs} runs, CPU over {window:.0f} s")
    print(f"{'process':<70} {'RSS MiB':>8} {'USS MiB':>8} {'PSS MiB':>8} {'CPU %':>6}")
    for name in results[0]:
        rows = [r[name] for r in results if name in r]
        rss, uss, pss, cpu = (statistics.median(v[i] for v in rows) for i in range(4))
        print(f"{name:<70} {rss:8.1f} {uss:8.1f} {pss:8.1f} {cpu:6.2f}")
    totals = [tuple(sum(v[i] for v in r.values()) for i in range(4)) for r in results]
    rss, uss, pss, cpu = (statistics.median(t[i] for t in totals) for i in range(4))
    print(f"{'total':<70} {rss:8.1f} {uss:8.1f} {pss:8.1f} {cpu:6.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--existing", type=int, default=200)
    parser.add_argument("--new", type=int, default=30)
    parser.add_argument("--footprint", action="store_true", help="measure an idle `berth up` instead")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--window", type=float, default=20.0)
    args = parser.parse_args()
    if args.footprint:
        footprint(args.runs, args.window)
        return
    with tempfile.TemporaryDirectory(prefix="berth-bench-") as work:
        ok = asyncio.run(bench(args.existing, args.new, Path(work)))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
