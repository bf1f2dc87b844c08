"""Wiring of the scheduler: bus, runtime, state rebuilt from the bus, subscribers, periodic
reconcile, ops endpoint; and a clean stop that leaves replicas running (or stops them, for `berth up`)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from functools import partial

from aiohttp import web
from faststream.nats import NatsBroker

from libs.bus import (
    HEALTH_EVENTS,
    REPLICA_EVENTS,
    SPEC_EVENTS,
    STATUS_EVENTS,
    ensure_streams,
    latest_per_subject,
    make_broker,
    publish,
)
from libs.config import Settings
from libs.logging import get_logger
from libs.runtime import Runtime, make_runtime
from libs.secrets import SecretStore
from libs.telemetry import serve_ops
from libs.tasks import cancel_and_wait
from services.scheduler.handlers import register_handlers
from services.scheduler.reconcile import Reconciler


log = get_logger(__name__)


@dataclass
class SchedulerHandle:
    reconciler: Reconciler
    runtime: Runtime
    ops_port: int
    _broker: NatsBroker
    _ops: web.AppRunner
    _periodic: asyncio.Task[None]

    async def stop(self, stop_replicas: bool = False) -> None:
        await cancel_and_wait([self._periodic])
        for subscriber in self._broker.subscribers:  # no new work; the bus stays up to publish
            await subscriber.stop()
        await self.reconciler.shutdown(stop_replicas)
        await self._broker.stop()
        await self._ops.cleanup()


async def start_scheduler(settings: Settings, runtime: Runtime | None = None) -> SchedulerHandle:
    broker = make_broker(settings.resolved_nats_url, "scheduler", settings.nats_security())
    connection = await broker.connect()
    js = connection.jetstream()
    await ensure_streams(js)
    runtime = runtime or make_runtime(settings)
    reconciler = Reconciler(runtime, await SecretStore.open(js), partial(publish, broker))
    reconciler.rebuild(
        specs=await latest_per_subject(js, SPEC_EVENTS),
        replicas=await latest_per_subject(js, REPLICA_EVENTS),
        health=await latest_per_subject(js, HEALTH_EVENTS),
        statuses=await latest_per_subject(js, STATUS_EVENTS),
    )
    runtime.on_replica_event = reconciler.on_replica_event
    await runtime.start()  # adopts the replicas a previous scheduler left running
    register_handlers(broker, reconciler, runtime)
    await broker.start()
    periodic = asyncio.create_task(reconciler.run_periodically(settings.reconcile_interval_seconds))
    ops = await serve_ops(settings.ops_host, settings.scheduler_ops_port, lambda: connection.is_connected)
    log.info("scheduler started", deployments=len(reconciler.deployments()))
    return SchedulerHandle(reconciler, runtime, ops.addresses[0][1], broker, ops, periodic)


async def main(settings: Settings, stop: asyncio.Event) -> None:
    handle = await start_scheduler(settings)
    try:
        await stop.wait()
    finally:
        await handle.stop(stop_replicas=settings.stop_replicas_on_exit)
