"""Bus subscriber of the health-monitor: replica lifecycle events, on a durable consumer.

The consumer is created delivering the last event per replica, then every new one; after a monitor
restart it resumes where it left off. A message is acked once the monitor applied it; a failure
(the bus refused a publish) naks it for redelivery, which the monitor applies idempotently.
"""

from __future__ import annotations

from typing import Any

from faststream import AckPolicy
from faststream.nats import NatsBroker, PullSub
from nats.js.api import DeliverPolicy
from pydantic import ValidationError

from libs.bus import DURABLE_HEALTH_REPLICAS, REPLICA_EVENTS, REPLICAS
from libs.events import decode_event
from libs.logging import get_logger
from services.health_monitor.monitor import HealthMonitor

log = get_logger(__name__)


def register_handlers(broker: NatsBroker, monitor: HealthMonitor) -> None:
    @broker.subscriber(
        REPLICA_EVENTS,
        stream=REPLICAS,
        durable=DURABLE_HEALTH_REPLICAS,
        pull_sub=PullSub(batch_size=16, timeout=5.0),
        deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
        ack_policy=AckPolicy.NACK_ON_ERROR,
    )
    async def on_replica_event(body: dict[str, Any]) -> None:
        try:
            event = decode_event(body)
        except (KeyError, ValidationError):
            log.warning("undecodable replica event dropped", kind=body.get("kind"))
            return
        await monitor.apply(event)
