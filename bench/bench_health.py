"""How long after a replica's readiness breaks does the health-monitor take it out of the pool?

Starts a nats-server, the health-monitor and a switchable replica server; for a few
(periodSeconds, failureThreshold) settings it flips readiness to failing at a random phase of the
probe period and measures the time from the fault to the ready=false event. Kubernetes semantics
bound it: (threshold - 1) x period <= t <= threshold x period (plus one probe's latency).

    .venv/bin/python bench/bench_health.py
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import nats
from faststream.nats import NatsBroker
from nats.aio.msg import Msg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.servers lives beside bench/

from libs.bus import ensure_streams, make_broker, publish
from libs.config import Settings
from libs.events import (
    ReplicaHealthChanged,
    ReplicaStarted,
    ReplicaStopped,
    decode_event,
)
from libs.logging import configure_logging
from libs.natsd import free_port, start_nats_server
from libs.spec import HealthChecks, Probe
from services.health_monitor import start_health_monitor
from tests.servers.switchable import SwitchableServer

SETTINGS = [(1, 1), (1, 3), (2, 2)]  # (periodSeconds, failureThreshold)
TRIALS = 5
SPEC_PORT = 8000


class ReadyWatcher:
    """Notes when each replica's ready flag flips, as seen on the bus."""

    def __init__(self) -> None:
        self.ready: dict[str, bool] = {}
        self.changed = asyncio.Condition()

    async def on_message(self, message: Msg) -> None:
        event = decode_event(message.data)
        if isinstance(event, ReplicaHealthChanged):
            async with self.changed:
                self.ready[event.replica_id] = event.ready
                self.changed.notify_all()

    async def wait(self, replica_id: str, ready: bool) -> float:
        async with self.changed:
            await self.changed.wait_for(lambda: self.ready.get(replica_id) is ready)
        return time.monotonic()


def replica(replica_id: str, port: int, period: int, threshold: int) -> ReplicaStarted:
    probe = Probe(path=f"/readiness/{replica_id}", periodSeconds=period, failureThreshold=threshold)
    return ReplicaStarted(
        deployment_id="bench", project="default", slug="bench", spec_id="s1", replica_id=replica_id,
        host="127.0.0.1", ports={SPEC_PORT: port}, primary_port=SPEC_PORT,
        health_checks=HealthChecks(readiness=probe),
    )  # fmt: skip


async def measure(
    broker: NatsBroker, watcher: ReadyWatcher, server: SwitchableServer, period: int, threshold: int
) -> list[float]:
    times = []
    for trial in range(TRIALS):
        started = replica(f"p{period}-t{threshold}-{trial}", server.port, period, threshold)
        await server.switch(readiness="ok")
        await publish(broker, started)
        await asyncio.wait_for(watcher.wait(started.replica_id, True), 10)
        await asyncio.sleep(random.uniform(0, period))  # the fault strikes at a random phase of the period
        fault = time.monotonic()
        await server.switch(readiness="fail")
        unready = await asyncio.wait_for(watcher.wait(started.replica_id, False), 10 + period * threshold)
        times.append(unready - fault)
        ref = started.model_dump(include={"deployment_id", "project", "slug", "spec_id", "replica_id"})
        await publish(broker, ReplicaStopped(**ref, reason="bench"))  # stop probing it
    return times


async def main() -> None:
    configure_logging("bench", "WARNING", json=False)
    began = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        async with contextlib.AsyncExitStack() as cleanup:
            await measure_all(Path(tmp), cleanup)
    print(f"total {time.monotonic() - began:.1f} s")


async def measure_all(tmp: Path, cleanup: contextlib.AsyncExitStack) -> None:
    """Start nats-server, a switchable replica and the monitor (each stopped by `cleanup`), then measure."""
    nats_port = free_port()
    nats_server = start_nats_server(tmp / "js", nats_port)
    cleanup.callback(nats_server.wait, 10)
    cleanup.callback(nats_server.terminate)
    url = f"nats://127.0.0.1:{nats_port}"
    server = SwitchableServer(free_port())
    cleanup.callback(server.stop)
    nc = await nats.connect(url)
    cleanup.push_async_callback(nc.close)
    await ensure_streams(nc.jetstream())
    monitor = await start_health_monitor(Settings(nats_url=url, health_monitor_ops_port=0, _env_file=None))
    cleanup.push_async_callback(monitor.stop)
    broker = make_broker(url, "bench")
    await broker.start()
    cleanup.push_async_callback(broker.stop)
    await server.wait_ready()
    watcher = ReadyWatcher()
    await nc.subscribe("berth.health.v1.>", cb=watcher.on_message)
    print(f"time from readiness fault to ready=false event ({TRIALS} trials each, random fault phase)")
    print(
        f"{'period':>6} {'thresh':>6} {'P*T':>5} {'bound (T-1)P..TP':>17} {'E[t]':>6}"
        f" {'min':>6} {'mean':>6} {'max':>6}  in bound"
    )
    for period, threshold in SETTINGS:
        times = await measure(broker, watcher, server, period, threshold)
        low, high = (threshold - 1) * period, threshold * period
        within = all(low <= t <= high + 0.25 for t in times)  # + one probe's latency on the bus
        expected = (threshold - 0.5) * period  # a fault at a uniformly random phase
        print(
            f"{period:>6} {threshold:>6} {period * threshold:>4}s {f'{low}..{high} s':>17} {expected:>5.1f}s"
            f" {min(times):>6.2f} {statistics.mean(times):>6.2f} {max(times):>6.2f}"
            f"  {'yes' if within else 'NO'}"
        )


if __name__ == "__main__":
    asyncio.run(main())
