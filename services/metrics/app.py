"""Wiring of the metrics service with the service kit.

Inputs are durable consumers (a restart resumes where it stopped, so what was published while it
was down is folded in when it comes back, as long as BERTH_METRICS still holds it: one hour):
the router's request reports and the scheduler's usage readings (BERTH_METRICS), status events
(BERTH_STATUS: replica counts, restarts). Traffic assignments (which revision runs which spec
version) are state, read with `watch_latest`. Timers write closed slots, publish summaries,
downsample and expire. Queries come as `berth.rpc.v1.metrics` requests from the registry.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from libs.bus import (
    DURABLE_METRICS_REQUESTS,
    DURABLE_METRICS_STATUS,
    DURABLE_METRICS_USAGE,
    METRICS,
    METRICS_RPC,
    REQUEST_METRICS,
    STATUS,
    STATUS_EVENTS,
    TRAFFIC_EVENTS,
    USAGE_METRICS,
)
from libs.config import Settings
from libs.events import DeploymentStatusChanged, ReplicaUsageReported, RequestMetricsReported
from libs.kit import Service
from libs.logging import get_logger
from services.metrics.history import History, QueryError, Retention
from services.metrics.store import Store, database_url, open_store

log = get_logger("metrics")

QUEUE_GROUP = "metrics"


class MetricsQuery(BaseModel):
    deployment_id: str
    window: int = Field(default=3600, ge=1)
    step: int = Field(default=60, ge=1)
    version: int | None = Field(default=None, ge=1)


@dataclass
class MetricsHandle:
    service: Service
    history: History

    async def stop(self) -> None:
        await self.service.stop()


def retention_of(settings: Settings) -> Retention:
    return Retention(
        resolution_seconds=settings.metrics_resolution_seconds,
        raw_seconds=settings.metrics_raw_retention_seconds,
        downsampled_step_seconds=settings.metrics_downsampled_step_seconds,
        downsampled_seconds=settings.metrics_downsampled_retention_seconds,
    )


async def answer(history: History, body: Any) -> dict[str, Any]:
    try:
        query = MetricsQuery.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        return {"error": "bad request", "field": ".".join(map(str, first["loc"])), "rule": first["msg"]}
    try:  # in a worker thread: a day's query must not hold up the consumers
        return await asyncio.to_thread(history.series, query.deployment_id, query.window, query.step, query.version)
    except QueryError as exc:
        return {"error": "bad request", "field": exc.field, "rule": exc.rule}


async def start_metrics(settings: Settings) -> MetricsHandle:
    engine = await asyncio.to_thread(open_store, database_url(settings.metrics_database_url, settings.database_url, settings.data_dir))
    history = History(Store(engine), retention_of(settings))
    service = Service("metrics", settings)
    service.on_stop(lambda: asyncio.to_thread(engine.dispose))
    await service.connect()
    consumers = (
        (REQUEST_METRICS, METRICS, DURABLE_METRICS_REQUESTS, RequestMetricsReported),
        (USAGE_METRICS, METRICS, DURABLE_METRICS_USAGE, ReplicaUsageReported),
        (STATUS_EVENTS, STATUS, DURABLE_METRICS_STATUS, DeploymentStatusChanged),
    )
    for subject, stream, durable, event in consumers:
        service.subscribe(subject, stream=stream, durable=durable, events=(event,), handler=history.on_event)
    await service.watch_latest(TRAFFIC_EVENTS, history.on_event)

    @service.broker.subscriber(METRICS_RPC, queue=QUEUE_GROUP)
    async def on_query(body: dict[str, Any]) -> dict[str, Any]:
        return await answer(history, body)

    async def flush() -> None:
        history.flush()

    async def summarize() -> None:
        for event in history.summaries():
            await service.publish(event)

    async def maintain() -> None:
        await asyncio.to_thread(history.downsample)
        await asyncio.to_thread(history.expire)
        history.forget_idle()

    async def flush_all() -> None:  # at stop, after the consumers: nothing acknowledged is left behind
        history.flush(everything=True)

    service.every(settings.metrics_resolution_seconds, flush, name="flush")
    service.every(settings.metrics_summary_interval_seconds, summarize, name="summarize")
    service.every(60.0, maintain, name="downsample-and-expire", at_start=True)
    service.on_stop(flush_all)
    await service.start(ops_port=settings.metrics_ops_port)
    log.info("metrics started")
    return MetricsHandle(service, history)


async def main(settings: Settings, stop: asyncio.Event) -> None:
    handle = await start_metrics(settings)
    try:
        await stop.wait()
    finally:
        await handle.stop()
