"""Wiring of the health-monitor: bus, HTTP session for probes, rebuild, subscriber, ops endpoint."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from functools import partial

import aiohttp
from aiohttp import web
from faststream.nats import NatsBroker

from libs.bus import ensure_streams, make_broker, publish
from libs.config import Settings
from libs.telemetry import serve_ops
from libs.tasks import cancel_and_wait
from services.health_monitor.handlers import register_handlers
from services.health_monitor.monitor import HealthMonitor
from services.health_monitor.reconcile import rebuild_from_bus, resync_forever
from services.health_monitor.watch import HEARTBEAT_SECONDS



@dataclass
class HealthMonitorHandle:
    monitor: HealthMonitor
    ops_port: int
    _broker: NatsBroker
    _session: aiohttp.ClientSession
    _ops: web.AppRunner
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def stop(self) -> None:
        await cancel_and_wait(self._tasks)
        await self.monitor.close()  # first: no probe publishes on a connection that is closing
        await self._broker.stop()
        await self._session.close()
        await self._ops.cleanup()


async def start_health_monitor(
    settings: Settings, heartbeat_seconds: float = HEARTBEAT_SECONDS
) -> HealthMonitorHandle:
    broker = make_broker(settings.resolved_nats_url, "health-monitor", settings.nats_security())
    connection = await broker.connect()
    js = connection.jetstream()
    await ensure_streams(js)
    # A fresh connection per probe, as the kubelet does: a replica that stops accepting fails.
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True, limit=0))
    monitor = HealthMonitor(session, partial(publish, broker), heartbeat_seconds)
    await rebuild_from_bus(js, monitor)
    register_handlers(broker, monitor)
    await broker.start()
    resync = asyncio.create_task(resync_forever(js, monitor, settings.reconcile_interval_seconds))
    ops = await serve_ops(settings.ops_host, settings.health_monitor_ops_port, lambda: connection.is_connected)
    ops_port = ops.addresses[0][1]
    return HealthMonitorHandle(monitor, ops_port, broker, session, ops, [resync])


async def main(settings: Settings, stop: asyncio.Event) -> None:
    handle = await start_health_monitor(settings)
    try:
        await stop.wait()
    finally:
        await handle.stop()
