"""Bus subscribers of the scheduler. Each durable consumer acks a message once its work is done; a
failure naks it for redelivery, which the reconciler absorbs (it is idempotent).

- spec events (SPECS, durable scheduler-specs): take the new desired state, reconcile the deployment.
- health (HEALTH, durable scheduler-health): readiness moves rollouts on and changes the status.
- restart requests (CONTROL, durable scheduler-restarts): restart the replica through the runtime.
- logs RPC (core NATS request/reply, queue group: several schedulers would share it).
"""

from __future__ import annotations

from typing import Any

from faststream import AckPolicy
from faststream.nats import NatsBroker
from nats.js.api import DeliverPolicy
from pydantic import ValidationError

from libs.bus import (
    CONTROL,
    DURABLE_SCHEDULER_HEALTH,
    DURABLE_SCHEDULER_RESTARTS,
    DURABLE_SCHEDULER_SPECS,
    HEALTH,
    HEALTH_EVENTS,
    LOGS_RPC,
    RESTART_REQUESTS,
    SPEC_EVENTS,
    SPECS,
)
from libs.events import (
    DeploymentDeleted,
    Event,
    ReplicaHealthChanged,
    ReplicaRestartRequested,
    SpecApplied,
    decode_event,
)
from libs.logging import bind, get_logger
from libs.runtime.base import Runtime
from services.scheduler import logs
from services.scheduler.reconcile import Reconciler

LOGS_QUEUE_GROUP = "scheduler"
# Spec events of different deployments are handled side by side (a replacement waits for old
# replicas to drain); the reconciler serialises those of one deployment.
SPEC_WORKERS = 8

log = get_logger(__name__)


def _decode(body: dict[str, Any]) -> Event | None:
    try:
        return decode_event(body)
    except (KeyError, ValidationError):
        log.warning("undecodable event dropped", kind=body.get("kind"))
        return None


def register_handlers(broker: NatsBroker, reconciler: Reconciler, runtime: Runtime) -> None:
    # Push consumers, though FastStream warns they do not scale out: one scheduler owns the runtime's
    # replicas (a second would fight it), and push delivery keeps apply -> process start near 10 ms.
    @broker.subscriber(
        SPEC_EVENTS,
        stream=SPECS,
        durable=DURABLE_SCHEDULER_SPECS,
        deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,  # when first created; the snapshot has the rest
        ack_policy=AckPolicy.NACK_ON_ERROR,
        max_workers=SPEC_WORKERS,
    )
    async def on_spec_event(body: dict[str, Any]) -> None:
        event = _decode(body)
        if not isinstance(event, SpecApplied | DeploymentDeleted):
            return
        bind(deployment_id=event.deployment_id, spec_id=getattr(event, "spec_id", None))
        reconciler.spec_event(event)
        await reconciler.reconcile(event.deployment_id)  # also for an old version: level-triggered

    @broker.subscriber(
        HEALTH_EVENTS,
        stream=HEALTH,
        durable=DURABLE_SCHEDULER_HEALTH,
        deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
        ack_policy=AckPolicy.NACK_ON_ERROR,
    )
    async def on_health_changed(body: dict[str, Any]) -> None:
        event = _decode(body)
        if isinstance(event, ReplicaHealthChanged) and reconciler.health_changed(event):
            reconciler.kick(event.deployment_id)

    @broker.subscriber(
        RESTART_REQUESTS,
        stream=CONTROL,
        durable=DURABLE_SCHEDULER_RESTARTS,
        deliver_policy=DeliverPolicy.NEW,  # when first created: yesterday's requests are about processes long gone
        ack_policy=AckPolicy.NACK_ON_ERROR,
    )
    async def on_restart_requested(body: dict[str, Any]) -> None:
        event = _decode(body)
        if isinstance(event, ReplicaRestartRequested):
            bind(deployment_id=event.deployment_id, replica_id=event.replica_id)
            await reconciler.restart(event)

    @broker.subscriber(LOGS_RPC, queue=LOGS_QUEUE_GROUP)
    async def on_logs_requested(body: dict[str, Any]) -> dict[str, Any]:
        return await logs.reply(runtime, body)
