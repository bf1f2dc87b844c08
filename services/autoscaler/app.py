"""Wiring of the autoscaler with the service kit. It reads state that is replaced, not accumulated,
so every input is a `watch_latest` (newest per subject, then each new one): specs, its own last
decisions (SCALE), the router's request reports and the scheduler's usage reports (METRICS). Decisions
run every `autoscaler_interval_seconds` (the HPA's sync period, 15 s by default)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from libs.bus import REQUEST_METRICS, SPEC_EVENTS, USAGE_METRICS
from libs.config import Settings
from libs.kit import Service
from libs.logging import get_logger
from services.autoscaler.decider import Decider

log = get_logger(__name__)

OWN_DECISIONS = "berth.scale.v1.*.autoscaler"


@dataclass
class AutoscalerHandle:
    service: Service
    decider: Decider

    async def stop(self) -> None:
        await self.service.stop()


async def start_autoscaler(settings: Settings) -> AutoscalerHandle:
    service = Service("autoscaler", settings)
    await service.connect()
    decider = Decider(service.publish, settings.autoscaler_metrics_window_seconds)
    for subject in (SPEC_EVENTS, OWN_DECISIONS, REQUEST_METRICS, USAGE_METRICS):
        await service.watch_latest(subject, decider.on_event)
    service.every(settings.autoscaler_interval_seconds, decider.decide_all, name="decide")
    await service.start(ops_port=settings.autoscaler_ops_port)
    log.info("autoscaler started")
    return AutoscalerHandle(service, decider)


async def main(settings: Settings, stop: asyncio.Event) -> None:
    handle = await start_autoscaler(settings)
    try:
        await stop.wait()
    finally:
        await handle.stop()
