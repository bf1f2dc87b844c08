"""Wiring of the scheduler with the service kit: bus, runtime, state rebuilt from the bus, subscribers,
periodic resync, ops endpoint; and a stop that leaves replicas running (or stops them, for `berth up`)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from prometheus_client import REGISTRY

from libs.bus import (
    ALIAS_EVENTS,
    HEALTH_EVENTS,
    PROMOTE_EVENTS,
    INTEGRATIONS_EVENTS,
    REPLICA_EVENTS,
    SCALE_EVENTS,
    SPEC_EVENTS,
    STATUS_EVENTS,
    TRAFFIC_EVENTS,
    all_events,
    latest_per_subject,
)
from libs.config import Settings
from libs.kit import Service
from libs.logging import get_logger
from libs.runtime import Runtime, make_runtime
from libs.sealing import Sealer
from libs.secrets import SecretStore
from services.scheduler.handlers import register_handlers, watch_request_metrics
from services.scheduler.metrics import DeploymentCollector
from services.scheduler.reconcile import Reconciler
from services.scheduler.usage import UsageReporter

log = get_logger(__name__)


@dataclass
class SchedulerHandle:
    service: Service
    reconciler: Reconciler
    runtime: Runtime

    @property
    def ops_port(self) -> int:
        assert self.service.ops_port is not None
        return self.service.ops_port

    async def stop(self, stop_replicas: bool = False) -> None:
        # No new work first; the bus stays up to publish what stopping the replicas says. Stopping
        # them takes their grace period, longer than the kit bounds a stop callback to.
        await self.service.stop_consuming()
        await self.reconciler.shutdown(stop_replicas)
        await self.service.stop()


async def start_scheduler(settings: Settings, runtime: Runtime | None = None) -> SchedulerHandle:
    service = Service("scheduler", settings)
    js = await service.connect()
    runtime = runtime or make_runtime(settings)
    secrets = await SecretStore.open(js, Sealer.from_settings(settings))
    reconciler = Reconciler(runtime, secrets, service.publish, drain_seconds=settings.traffic_drain_seconds)
    reconciler.rebuild(
        # Every spec version, not only the newest: a revision still running (an update's previous one) is
        # rendered from its own spec when a rollback restores it, never from what the runtime reads back.
        specs=await all_events(js, SPEC_EVENTS),
        scales=await latest_per_subject(js, SCALE_EVENTS),
        replicas=await latest_per_subject(js, REPLICA_EVENTS),
        health=await latest_per_subject(js, HEALTH_EVENTS),
        statuses=await latest_per_subject(js, STATUS_EVENTS),
        assignments=await latest_per_subject(js, TRAFFIC_EVENTS),
        aliases=await latest_per_subject(js, ALIAS_EVENTS),
        promotions=await latest_per_subject(js, PROMOTE_EVENTS),
        integrations=await latest_per_subject(js, INTEGRATIONS_EVENTS),
    )
    runtime.on_replica_event = reconciler.on_replica_event
    await runtime.start()  # adopts the replicas a previous scheduler left running
    register_handlers(service, reconciler, runtime)
    await watch_request_metrics(service, reconciler)
    service.every(settings.reconcile_interval_seconds, reconciler.reconcile_all, name="resync", at_start=True)
    usage = UsageReporter(runtime, reconciler, service.publish, settings.usage_report_interval_seconds)
    service.every(settings.usage_report_interval_seconds, usage.report, name="usage-report")
    collector = DeploymentCollector(reconciler.observed, lambda: usage.latest, settings.metrics_max_deployments)
    REGISTRY.register(collector)

    async def unregister() -> None:  # a scheduler started again in the same process (tests) registers its own
        REGISTRY.unregister(collector)

    service.on_stop(unregister)
    service.on_stop(reconciler.shutdown)  # leaves replicas running unless stop() stopped them already
    await service.start(ops_port=settings.scheduler_ops_port)
    log.info("scheduler started", deployments=len(reconciler.deployments()))
    return SchedulerHandle(service, reconciler, runtime)


async def main(settings: Settings, stop: asyncio.Event) -> None:
    if settings.scheduler_leader_election:
        from services.scheduler.leader import lead

        await lead(settings, stop, run)
    else:
        await run(settings, stop)


async def run(settings: Settings, stop: asyncio.Event) -> None:
    handle = await start_scheduler(settings)
    try:
        await stop.wait()
    finally:
        await handle.stop(stop_replicas=settings.stop_replicas_on_exit)
