"""Bounded state: the health-monitor forgets replicas that are gone, so its memory follows the
replicas that exist, not every one that ever ran."""

from __future__ import annotations

import gc
import tracemalloc
from datetime import timedelta

import aiohttp
import pytest

from libs.events import Event, ReplicaStarted, ReplicaStopped, utcnow
from libs.natsd import free_port
from services.health_monitor.monitor import FORGET_AFTER, HealthMonitor


async def churn(monitor: HealthMonitor, count: int, offset: int, port: int) -> None:
    for n in range(offset, offset + count):
        ref = {"deployment_id": f"dep-{n}", "project": "p", "slug": "s", "replica_id": f"r-{n}", "spec_id": "x"}
        await monitor.apply(ReplicaStarted(**ref, host="127.0.0.1", ports={8000: port}, primary_port=8000))
        await monitor.apply(ReplicaStopped(**ref, reason="scaled down"))


@pytest.mark.timeout(60)
async def test_a_thousand_replicas_come_and_go_and_nothing_stays() -> None:
    published: list[Event] = []

    async def publish(event: Event) -> None:
        published.append(event)

    port = free_port()  # nothing listens: probes fail fast
    async with aiohttp.ClientSession() as session:
        monitor = HealthMonitor(session, publish)
        await churn(monitor, 100, 0, port)  # warm up allocator caches and imports
        monitor.forget_gone(now=utcnow() + FORGET_AFTER + timedelta(seconds=1))
        published.clear()
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        await churn(monitor, 1000, 100, port)
        assert monitor.forget_gone(now=utcnow()) == 0, "a replica gone just now is still remembered"
        assert monitor.forget_gone(now=utcnow() + FORGET_AFTER + timedelta(seconds=1)) == 1000
        published.clear()
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        assert not monitor._watches and not monitor._last_applied
        assert after - before < 64 * 1024, f"{after - before} bytes left after the churn"
        await monitor.close()
