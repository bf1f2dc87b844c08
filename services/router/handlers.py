"""Traffic assignments into the routing table: the watch of BERTH_TRAFFIC and the periodic re-read.

The router reads nothing else from the bus. The watch (an ordered consumer: the newest assignment of
every deployment, then each new one) keeps the table current; the re-read (`resync`, on start and then
every RESYNC_SECONDS) re-compares it with the stream's newest per deployment, in case the watch missed
something while the bus was away. Both go through `apply`, which keeps only higher generations, so
their overlap is harmless.
"""

from __future__ import annotations

from nats.js import JetStreamContext

from libs.bus import TRAFFIC_EVENTS, latest_per_subject
from libs.events import Event, TrafficAssigned
from libs.logging import get_logger
from services.router.auth import AuthSecrets, BasicAuth
from services.router.table import RoutingTable

log = get_logger("router.handlers")

RESYNC_SECONDS = 30.0


class Feed:
    """Applies traffic assignments to the table, with their basic-auth secret read before they go live."""

    def __init__(self, table: RoutingTable, secrets: AuthSecrets, js: JetStreamContext) -> None:
        self.table = table
        self.secrets = secrets
        self._js = js

    async def on_event(self, event: Event) -> None:
        if isinstance(event, TrafficAssigned):
            await self.apply(event)

    async def apply(self, event: TrafficAssigned) -> None:
        if event.generation <= self.table.generation(event.deployment_id):
            return  # cheap early out: most re-read assignments are held already
        auth: BasicAuth | None = None
        if event.basic_auth_key is not None and not event.deleted:
            auth = await self.secrets.hold(event.project, event.basic_auth_key)
        for unused in self.table.apply(event, auth):  # checks the generation again: the read awaited
            self.secrets.release(unused)

    async def resync(self) -> None:
        """Apply the stream's newest assignment of every deployment where it is newer than the table's;
        drop what the stream no longer holds and tombstones past their time."""
        began = self.table.now()
        newest = [e for e in await latest_per_subject(self._js, TRAFFIC_EVENTS) if isinstance(e, TrafficAssigned)]
        for event in newest:
            if event.deleted and self.table.get(event.deployment_id) is None:
                continue  # long gone: nothing to drop, nothing to remember
            await self.apply(event)
        for route in self.table.forget({e.deployment_id for e in newest}, began):
            log.info("route dropped: its deployment has no traffic assignment any more", deployment_id=route.deployment_id)
            if route.auth is not None:
                self.secrets.release(route.auth)
