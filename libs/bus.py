"""The bus: every JetStream stream, subject and durable consumer of berth, declared in one place.

Services build their broker with `make_broker`, declare subscribers with the `JStream` objects and
durable names below, and publish events with `publish` (which sets `Nats-Msg-Id` for de-duplication
and carries OpenTelemetry context in the headers through FastStream's telemetry middleware).
`latest_per_subject` reads the newest message of every subject of a stream: how a service rebuilds
its in-memory slice on start.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import nats
from faststream.nats import JStream, NatsBroker
from faststream.nats.opentelemetry import NatsTelemetryMiddleware
from faststream.security import BaseSecurity
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy, StreamConfig

from libs.events import Event, decode_event
from libs.logging import LibraryLogger

DUPLICATE_WINDOW_SECONDS = 120.0

SPECS = JStream(
    "BERTH_SPECS",
    subjects=["berth.spec.v1.>"],
    duplicate_window=DUPLICATE_WINDOW_SECONDS,
    description="Desired state: SpecApplied and DeploymentDeleted, by deployment id; aliases at <id>.alias.<alias>.",
)
REPLICAS = JStream(
    "BERTH_REPLICAS",
    subjects=["berth.replica.v1.>"],
    duplicate_window=DUPLICATE_WINDOW_SECONDS,
    description="Replica lifecycle: started, exited, stopped, by deployment and replica id.",
)
HEALTH = JStream(
    "BERTH_HEALTH",
    subjects=["berth.health.v1.>"],
    duplicate_window=DUPLICATE_WINDOW_SECONDS,
    max_msgs_per_subject=16,
    description="Replica health (started, ready, live), by deployment and replica id.",
)
CONTROL = JStream(
    "BERTH_CONTROL",
    subjects=["berth.control.v1.>"],
    duplicate_window=DUPLICATE_WINDOW_SECONDS,
    max_age=24 * 3600,
    description="Requests between services, e.g. restart a replica.",
)
STATUS = JStream(
    "BERTH_STATUS",
    subjects=["berth.status.v1.>"],
    duplicate_window=DUPLICATE_WINDOW_SECONDS,
    max_msgs_per_subject=4,
    description="Observed deployment status; the registry's read model.",
)
METRICS = JStream(
    "BERTH_METRICS",
    subjects=["berth.metrics.v1.>"],
    max_age=3600,
    description="Request metrics from the router, replica usage from the scheduler, summaries from the metrics service.",
)
SCALE = JStream(
    "BERTH_SCALE",
    subjects=["berth.scale.v1.>"],
    duplicate_window=DUPLICATE_WINDOW_SECONDS,
    max_msgs_per_subject=1,
    description="Scale decisions that are not spec versions (user, autoscaler), newest per deployment and source.",
)
TRAFFIC = JStream(
    "BERTH_TRAFFIC",
    subjects=["berth.traffic.v1.>"],
    duplicate_window=DUPLICATE_WINDOW_SECONDS,
    max_msgs_per_subject=1,
    description="The scheduler's traffic assignment, newest per deployment: what the router applies.",
)
INTEGRATIONS = JStream(
    "BERTH_INTEGRATIONS",
    subjects=["berth.integrations.v1.>"],
    duplicate_window=DUPLICATE_WINDOW_SECONDS,
    max_msgs_per_subject=1,
    description="Integrations of each revision: ready (with content identities) or failed, newest per revision.",
)
ALERTS = JStream(
    "BERTH_ALERTS",
    subjects=["berth.alerts.v1.>"],
    duplicate_window=DUPLICATE_WINDOW_SECONDS,
    max_msgs_per_subject=1,
    description="Alert transitions (AlertChanged), newest per deployment and rule: each alert's current state.",
)
WEBHOOKS = JStream(
    "BERTH_WEBHOOKS",
    subjects=["berth.webhooks.v1.>"],
    duplicate_window=DUPLICATE_WINDOW_SECONDS,
    max_msgs_per_subject=1,
    description="Each project's webhooks (WebhooksChanged), newest per project; secret references only.",
)
DEAD = JStream(
    "BERTH_DEAD",
    subjects=["berth.dead.v1.>"],
    max_age=7 * 24 * 3600,
    description="Dead letters: messages a service could not handle after its retries, with the reason.",
)
ALL_STREAMS: tuple[JStream, ...] = (
    SPECS, REPLICAS, HEALTH, CONTROL, STATUS, METRICS, SCALE, TRAFFIC, INTEGRATIONS, ALERTS, WEBHOOKS, DEAD,
)
# `ensure_streams` sets the streams up; FastStream must not try it again as each subscriber starts:
# a service other than the spec-registry may not create or update streams (libs/busauth.py).
for _stream in ALL_STREAMS:
    _stream.declare = False

# Subject filters.
SPEC_EVENTS = "berth.spec.v1.*"
ALIAS_EVENTS = "berth.spec.v1.*.alias.*"  # in BERTH_SPECS, apart from the spec events
PROMOTE_EVENTS = "berth.spec.v1.*.promote"
REPLICA_EVENTS = "berth.replica.v1.*.*"
HEALTH_EVENTS = "berth.health.v1.*.*"
RESTART_REQUESTS = "berth.control.v1.restart.*.*"
RETRY_REQUESTS = "berth.control.v1.retry.*"
STATUS_EVENTS = "berth.status.v1.*"
REQUEST_METRICS = "berth.metrics.v1.requests.*"
USAGE_METRICS = "berth.metrics.v1.usage.*"  # ReplicaUsageReported, from the scheduler
METRICS_SUMMARIES = "berth.metrics.v1.summary.*"  # DeploymentMetricsSummarized, from the metrics service
SCALE_EVENTS = "berth.scale.v1.*.*"
TRAFFIC_EVENTS = "berth.traffic.v1.*"
INTEGRATIONS_EVENTS = "berth.integrations.v1.*.*"
ALERT_EVENTS = "berth.alerts.v1.*.*"
WEBHOOK_EVENTS = "berth.webhooks.v1.*"
DEAD_LETTERS = "berth.dead.v1.{service}.{durable}"  # where a service's consumer sets aside poison messages
# Request/reply (core NATS, no stream): the registry asks the scheduler for replica logs.
# Payload {"deployment_id", "replica_id", "tail", "since"}; reply {"lines": [{"replica_id", "offset", "line"}], "next"}.
LOGS_RPC = "berth.rpc.v1.logs"
# The registry asks the metrics service for a deployment's history (docs/api.md, GET .../metrics).
# Payload {"deployment_id", "window", "step", "version"} (seconds, seconds, int|null); reply the answer,
# or {"error", "field", "rule"} for a query the history cannot answer as asked.
METRICS_RPC = "berth.rpc.v1.metrics"

# Durable consumer names: one per (service, subject filter). Renaming one replays its stream.
DURABLE_SCHEDULER_SPECS = "scheduler-specs"
DURABLE_SCHEDULER_HEALTH = "scheduler-health"
DURABLE_SCHEDULER_RESTARTS = "scheduler-restarts"
DURABLE_SCHEDULER_SCALE = "scheduler-scale"
DURABLE_SCHEDULER_ALIASES = "scheduler-aliases"
DURABLE_SCHEDULER_PROMOTIONS = "scheduler-promotions"
DURABLE_HEALTH_REPLICAS = "health-monitor-replicas"
DURABLE_REGISTRY_STATUS = "registry-status"
DURABLE_SCHEDULER_INTEGRATIONS = "scheduler-integrations"
DURABLE_INTEGRATIONS_SPECS = "integrations-specs"
DURABLE_INTEGRATIONS_RETRIES = "integrations-retries"
DURABLE_ALERTING_DELIVERIES = "alerting-webhooks"  # acked only once every webhook of the project answered 2xx
DURABLE_METRICS_REQUESTS = "metrics-requests"
DURABLE_METRICS_USAGE = "metrics-usage"
DURABLE_METRICS_STATUS = "metrics-status"
DURABLE_REGISTRY_METRICS = "registry-metrics"
DURABLE_INTEGRATIONS_ALIASES = "integrations-aliases"

SECRETS_BUCKET = "berth_secrets"

MSG_ID_HEADER = "Nats-Msg-Id"


def inbox_prefix(service: str) -> str:
    """The reply subjects of one service, `_INBOX_<service>.…`: its NATS user may subscribe to these
    only, so that no service reads the replies another one gets (libs/busauth.py)."""
    return f"_INBOX_{service}"


class _ServiceBroker(NatsBroker):
    """A NatsBroker whose pull subscribers, too, take their replies on the service's inbox prefix:
    FastStream gives them the shared `_INBOX.` unless told otherwise, which the service may not read."""

    def __init__(self, *args: Any, inbox_prefix: str, **kwargs: Any) -> None:
        super().__init__(*args, inbox_prefix=inbox_prefix, **kwargs)
        self._pull_inbox_prefix = f"{inbox_prefix}.".encode()

    def subscriber(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        kwargs.setdefault("inbox_prefix", self._pull_inbox_prefix)
        return super().subscriber(*args, **kwargs)


def make_broker(url: str, service: str, security: BaseSecurity | None = None, **kwargs: Any) -> NatsBroker:
    """A NatsBroker for one service, with trace context carried in message headers; `security` is
    the service's NATS credentials (`Settings.nats_security()`), None where the server asks none.

    FastStream's own lines go through structlog (JSON like every other line), and its line per
    handled message at DEBUG: at INFO it would write two lines for every event."""
    return _ServiceBroker(
        url,
        name=f"berth-{service}",
        security=security,
        inbox_prefix=inbox_prefix(service),
        middlewares=[NatsTelemetryMiddleware()],
        max_reconnect_attempts=-1,
        logger=LibraryLogger("faststream"),
        log_level=logging.DEBUG,
        **kwargs,
    )


async def ensure_streams(js: JetStreamContext) -> None:
    """Create or update every stream berth uses; idempotent, safe to call from each service.

    A stream that is already as declared is left alone (only looked at): with per-service permissions
    only the spec-registry may create or update streams, and `berth up` sets them up before it starts
    any service."""
    for stream in ALL_STREAMS:
        config = StreamConfig(
            name=stream.name,
            subjects=list(stream.subjects),
            duplicate_window=stream.config.duplicate_window,
            max_age=stream.config.max_age,
            max_msgs_per_subject=stream.config.max_msgs_per_subject,
            description=stream.config.description,
        )
        try:
            current = (await js.stream_info(stream.name)).config
        except nats.js.errors.NotFoundError:
            await js.add_stream(config)
            continue
        if _differs(current, config):
            await js.update_stream(config)


def _differs(current: StreamConfig, wanted: StreamConfig) -> bool:
    """Whether a field berth declares differs; one left unset (None, 0) is the server's default."""
    fields = ("subjects", "duplicate_window", "max_age", "max_msgs_per_subject", "description")
    return any(getattr(wanted, f) not in (None, 0) and getattr(current, f) != getattr(wanted, f) for f in fields)


def event_headers(event: Event, extra: dict[str, str] | None = None) -> dict[str, str]:
    return {MSG_ID_HEADER: event.event_id, **(extra or {})}


async def publish(broker: NatsBroker, event: Event, headers: dict[str, str] | None = None) -> None:
    """Publish an event to JetStream, waiting for the stream's ack; de-duplicated by event id."""
    await broker.publish(
        event.model_dump(mode="json"),
        subject=event.subject(),
        headers=event_headers(event, headers),
        stream=_stream_of(event.subject()),
    )


async def publish_raw(js: JetStreamContext, event: Event, headers: Mapping[str, str] | None = None) -> None:
    """`publish` without FastStream's per-message middleware, for the hot path of the registry's
    relay: the same JSON body, stream, `Nats-Msg-Id` de-duplication and content type, with the
    `headers` (the trace context an outbox row kept) passed through as they are."""
    subject = event.subject()
    await js.publish(
        subject,
        event.model_dump_json().encode(),
        stream=_stream_of(subject),
        headers={**(headers or {}), "content-type": "application/json", MSG_ID_HEADER: event.event_id},
    )


def _stream_of(subject: str) -> str:
    for stream in ALL_STREAMS:
        prefix = list(stream.subjects)[0].removesuffix(">")
        if subject.startswith(prefix):
            return stream.name
    raise ValueError(f"no stream holds subject {subject!r}")


async def latest_per_subject(
    js: JetStreamContext, subject_filter: str, timeout: float = 2.0
) -> list[Event]:
    """The newest event of every subject matching the filter, oldest first (a state snapshot)."""
    return await _read_stream(js, subject_filter, DeliverPolicy.LAST_PER_SUBJECT, timeout)


async def all_events(js: JetStreamContext, subject_filter: str, timeout: float = 2.0) -> list[Event]:
    """Every event the stream still holds for the filter, oldest first (e.g. each spec version)."""
    return await _read_stream(js, subject_filter, DeliverPolicy.ALL, timeout)


async def _read_stream(
    js: JetStreamContext, subject_filter: str, deliver_policy: DeliverPolicy, timeout: float
) -> list[Event]:
    sub = await js.pull_subscribe(
        subject_filter,
        stream=_stream_of(subject_filter),
        config=ConsumerConfig(deliver_policy=deliver_policy, inactive_threshold=30),
    )
    events: list[Event] = []
    try:
        while True:
            pending = (await sub.consumer_info()).num_pending or 0
            if pending == 0:  # everything delivered (acks may still be in flight)
                break
            try:  # ask for no more than is pending: a larger batch waits out the whole timeout
                messages = await sub.fetch(batch=min(256, pending), timeout=timeout)
            except TimeoutError:
                break
            for message in messages:
                events.append(decode_event(message.data))
                await message.ack()
    finally:
        await sub.unsubscribe()
    return events
