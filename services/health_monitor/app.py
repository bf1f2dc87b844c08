"""Wiring of the health-monitor: the service kit (bus, subscriber, periodic resync, ops endpoint),
the HTTP session for probes, and the state rebuilt from the bus."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from functools import partial

import aiohttp

from libs.config import Settings
from libs.kit import Service
from libs.logging import get_logger
from services.health_monitor.handlers import subscribe
from services.health_monitor.monitor import HealthMonitor
from services.health_monitor.reconcile import rebuild_from_bus, resync
from services.health_monitor.watch import HEARTBEAT_SECONDS

log = get_logger(__name__)


@dataclass
class HealthMonitorHandle:
    monitor: HealthMonitor
    ops_port: int
    _service: Service

    async def stop(self) -> None:
        await self._service.stop()


async def start_health_monitor(
    settings: Settings, heartbeat_seconds: float = HEARTBEAT_SECONDS
) -> HealthMonitorHandle:
    service = Service("health-monitor", settings)
    js = await service.connect()
    # A fresh connection per probe, as the kubelet does: a replica that stops accepting fails.
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True, limit=0))
    service.on_stop(session.close)
    monitor = HealthMonitor(session, service.publish, heartbeat_seconds)
    service.on_stop(monitor.close)  # runs first: no probe publishes on a connection that is closing
    if settings.runtime == "kubernetes":
        # The kubelet probes and the scheduler publishes health from the Pods' conditions: one owner of
        # health per runtime (docs/architecture.md). The monitor only answers its ops endpoint.
        log.info("idle: on the kubernetes runtime the kubelet probes replicas")
    else:
        await rebuild_from_bus(js, monitor)
        subscribe(service, monitor)
        service.every(settings.reconcile_interval_seconds, partial(resync, js, monitor), name="resync")
    await service.start(ops_port=settings.health_monitor_ops_port)
    assert service.ops_port is not None
    return HealthMonitorHandle(monitor, service.ops_port, service)


async def main(settings: Settings, stop: asyncio.Event) -> None:
    handle = await start_health_monitor(settings)
    try:
        await stop.wait()
    finally:
        await handle.stop()
