"""Bus events into the routing table: the snapshot read on start, then the durable subscribers.

Start order (see app.py): subscribers first (a new durable consumer delivers only what is published
from then on), then the snapshot, so nothing published in between is missed; the table's ordering
rules make the overlap harmless.
"""

from __future__ import annotations

from typing import Any

from faststream import AckPolicy
from faststream.nats import JStream, NatsBroker
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy

from libs.bus import (
    DURABLE_ROUTER_HEALTH,
    DURABLE_ROUTER_REPLICAS,
    DURABLE_ROUTER_SPECS,
    HEALTH,
    HEALTH_EVENTS,
    PER_INSTANCE_CONSUMER_TTL_SECONDS,
    REPLICA_EVENTS,
    REPLICAS,
    SPEC_EVENTS,
    SPECS,
    all_events,
    latest_per_subject,
    per_instance_durable,
)
from libs.events import (
    DeploymentDeleted,
    Event,
    ReplicaExited,
    ReplicaHealthChanged,
    ReplicaStopped,
    SpecApplied,
    decode_event,
)
from libs.logging import get_logger
from libs.secrets import SecretStore
from services.router.auth import resolve_auth
from services.router.table import RoutingTable

log = get_logger("router.handlers")


class Feed:
    """Applies events to the table; resolves a spec's basic-auth secret before the spec goes live."""

    def __init__(self, table: RoutingTable) -> None:
        self.table = table
        self.secrets: SecretStore | None = None  # set once the broker is connected

    async def apply(self, event: Event) -> None:
        match event:
            case SpecApplied():
                assert self.secrets is not None
                auth = await resolve_auth(self.secrets, event.project, event.spec.basicAuthKey)
                self.table.apply_spec(event, auth)
            case DeploymentDeleted():
                self.table.apply_deleted(event)
            case ReplicaHealthChanged():
                self.table.apply_health(event)
            case ReplicaExited() | ReplicaStopped():
                self.table.apply_replica_gone(event)
            case _:
                pass  # ReplicaStarted: a replica takes traffic once the health-monitor says it is ready

    async def rebuild(self, js: JetStreamContext) -> None:
        """Load the table from the streams: every spec version (so `/<version>/` paths know old
        versions too), then the newest replica and health event of every replica."""
        specs = [e for e in await all_events(js, SPEC_EVENTS) if isinstance(e, SpecApplied | DeploymentDeleted)]
        newest = {event.deployment_id: event for event in specs}
        for spec in specs:
            if isinstance(spec, SpecApplied) and newest[spec.deployment_id] is not spec:
                self.table.note_version(spec)
        for event in newest.values():
            await self.apply(event)
        replicas = await latest_per_subject(js, REPLICA_EVENTS) + await latest_per_subject(js, HEALTH_EVENTS)
        for replica_event in sorted(replicas, key=lambda e: e.occurred_at):
            await self.apply(replica_event)

    async def refresh_auth(self) -> None:
        """Re-read every basic-auth secret, so that a rotated key takes effect without a new spec."""
        assert self.secrets is not None
        for route in self.table.routes():
            spec = route.spec
            if spec is None or spec.basicAuthKey is None:
                continue
            auth = await resolve_auth(self.secrets, route.project, spec.basicAuthKey)
            if route.spec is spec:  # unless a new spec version arrived meanwhile
                route.auth = auth

    async def on_message(self, body: dict[str, Any]) -> None:
        try:
            event = decode_event(body)
        except (KeyError, ValueError):
            log.warning("undecodable event skipped", kind=body.get("kind"))
            return
        await self.apply(event)


def subscribe(broker: NatsBroker, feed: Feed) -> None:
    """Durable pull consumers for specs, health and replica lifecycle; ack once applied.

    Every router needs every event, so each instance has consumers of its own (named by host);
    JetStream removes them an hour after their instance last pulled."""
    feeds: tuple[tuple[str, JStream, str], ...] = (
        (SPEC_EVENTS, SPECS, DURABLE_ROUTER_SPECS),
        (HEALTH_EVENTS, HEALTH, DURABLE_ROUTER_HEALTH),
        (REPLICA_EVENTS, REPLICAS, DURABLE_ROUTER_REPLICAS),
    )
    for subject, stream, durable in feeds:

        async def handler(body: dict[str, Any]) -> None:
            await feed.on_message(body)

        broker.subscriber(
            subject, stream=stream, durable=per_instance_durable(durable), pull_sub=True,
            deliver_policy=DeliverPolicy.NEW,
            config=ConsumerConfig(inactive_threshold=PER_INSTANCE_CONSUMER_TTL_SECONDS),
            ack_policy=AckPolicy.NACK_ON_ERROR,
        )(handler)
