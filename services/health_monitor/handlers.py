"""Bus subscriber of the health-monitor: replica lifecycle events, on a durable consumer.

The consumer is created delivering the last event per replica, then every new one; after a monitor
restart it resumes where it left off. The kit acks a message once the monitor applied it and
redelivers it after a failure (the bus refused a publish), which the monitor applies idempotently.
"""

from __future__ import annotations

from nats.js.api import DeliverPolicy

from libs.bus import DURABLE_HEALTH_REPLICAS, REPLICA_EVENTS, REPLICAS
from libs.events import ReplicaExited, ReplicaStarted, ReplicaStopped
from libs.kit import Service
from services.health_monitor.monitor import HealthMonitor


def subscribe(service: Service, monitor: HealthMonitor) -> None:
    service.subscribe(
        REPLICA_EVENTS,
        stream=REPLICAS,
        durable=DURABLE_HEALTH_REPLICAS,
        events=(ReplicaStarted, ReplicaExited, ReplicaStopped),
        handler=monitor.apply,
        deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
    )
