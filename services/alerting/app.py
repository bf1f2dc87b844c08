"""Wiring of the alerting service with the service kit.

On start, before evaluating anything: the newest spec of every deployment (its rules), the newest
AlertChanged of every alert (their states), the project webhooks, and every figure the streams still
hold (BERTH_METRICS keeps an hour; BERTH_STATUS a few statuses per deployment). Watches that deliver
the newest of each subject and then every new message are opened first, so nothing published
meanwhile is missed (a figure read twice is kept once). Then the evaluation runs every
`alerting_interval_seconds`, and a durable consumer of BERTH_ALERTS delivers transitions to webhooks.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import httpx

from libs.bus import (
    ALERT_EVENTS,
    ALERTS,
    DURABLE_ALERTING_DELIVERIES,
    REQUEST_METRICS,
    SPEC_EVENTS,
    STATUS_EVENTS,
    USAGE_METRICS,
    WEBHOOK_EVENTS,
    all_events,
    latest_per_subject,
)
from libs.config import Settings
from libs.events import AlertChanged
from libs.kit import Service
from libs.logging import get_logger
from libs.sealing import Sealer
from libs.secrets import SecretStore
from services.alerting.evaluator import Evaluator
from services.alerting.webhooks import RETRY, Deliveries

log = get_logger(__name__)


@dataclass
class AlertingHandle:
    service: Service
    evaluator: Evaluator
    deliveries: Deliveries

    async def stop(self) -> None:
        await self.service.stop()


async def start_alerting(settings: Settings) -> AlertingHandle:
    service = Service("alerting", settings)
    js = await service.connect()
    evaluator = Evaluator(service.publish)
    client = httpx.AsyncClient(follow_redirects=False)
    service.on_stop(client.aclose)
    deliveries = Deliveries(await SecretStore.open(js, Sealer.from_settings(settings)), client)

    for event in await latest_per_subject(js, SPEC_EVENTS):
        await evaluator.on_event(event)
    for event in await latest_per_subject(js, ALERT_EVENTS):
        await evaluator.on_event(event)
    for event in await latest_per_subject(js, WEBHOOK_EVENTS):
        await deliveries.on_webhooks(event)
    for subject in (SPEC_EVENTS, WEBHOOK_EVENTS, REQUEST_METRICS, USAGE_METRICS, STATUS_EVENTS):
        handler = deliveries.on_webhooks if subject == WEBHOOK_EVENTS else evaluator.on_event
        await service.watch_latest(subject, handler)
    for subject in (REQUEST_METRICS, USAGE_METRICS, STATUS_EVENTS):
        for event in await all_events(js, subject):
            await evaluator.on_event(event)

    service.subscribe(
        ALERT_EVENTS, stream=ALERTS, durable=DURABLE_ALERTING_DELIVERIES, events=(AlertChanged,),
        handler=deliveries.deliver, pull=True, retry=RETRY,
    )  # fmt: skip
    service.every(settings.alerting_interval_seconds, evaluator.evaluate_all, name="evaluate", at_start=True)
    await service.start(ops_port=settings.alerting_ops_port)
    log.info("alerting started", deployments=len(evaluator.deployments))
    return AlertingHandle(service, evaluator, deliveries)


async def main(settings: Settings, stop: asyncio.Event) -> None:
    handle = await start_alerting(settings)
    try:
        await stop.wait()
    finally:
        await handle.stop()
