"""The health-monitor's slice: which replica processes it probes, kept in line with their lifecycle.

Level-triggered: the same method applies a live event, a redelivered one, or the state snapshot read
on start and on every resync. A lifecycle event older than the newest one applied for its replica is
stale and ignored. A ReplicaStarted with a higher restart_count is a new process: its health starts
afresh. A later one with the same restart_count re-announces the same process with new probes: what
is known of its health holds until the new probes say otherwise.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from datetime import datetime, timedelta

import aiohttp

from libs.events import (
    Event,
    ReplicaExited,
    ReplicaHealthChanged,
    ReplicaRestartRequested,
    ReplicaStarted,
    ReplicaStopped,
    utcnow,
)
from services.health_monitor.metrics import REPLICAS_WATCHED
from services.health_monitor.state import Flags, ReplicaHealth
from services.health_monitor.watch import HEARTBEAT_SECONDS, Publish, ReplicaWatch


# A replica neither probed nor heard of for this long is forgotten (replica ids are never reused): no
# event older than its last one can still be on its way, and the map follows the replicas that exist.
FORGET_AFTER = timedelta(minutes=10)


class HealthMonitor:
    def __init__(
        self, session: aiohttp.ClientSession, publish: Publish, heartbeat_seconds: float = HEARTBEAT_SECONDS
    ) -> None:
        self._session = session
        self._publish = publish
        self._heartbeat_seconds = heartbeat_seconds
        self._watches: dict[str, ReplicaWatch] = {}
        self._last_applied: dict[str, datetime] = {}  # newest lifecycle event applied, per replica
        # The subscriber and the periodic resync may apply events for the same replica at once.
        self._lock = asyncio.Lock()
        self._closed = False

    def health(self, replica_id: str) -> ReplicaHealth | None:
        watch = self._watches.get(replica_id)
        return watch.health if watch else None

    def is_probing(self, replica_id: str) -> bool:
        watch = self._watches.get(replica_id)
        return watch is not None and watch.probing

    async def apply(self, event: Event) -> None:
        """Apply one replica lifecycle event (other events are not the monitor's business)."""
        if isinstance(event, ReplicaStarted):
            await self.replica_started(event)
        elif isinstance(event, ReplicaExited | ReplicaStopped):
            await self.replica_gone(event)

    async def replica_started(
        self,
        event: ReplicaStarted,
        known: ReplicaHealthChanged | None = None,
        restart_pending: bool = False,
    ) -> None:
        """Probe this process; `known` and `restart_pending` carry what a previous monitor published."""
        async with self._lock:
            if self._closed:  # raised so that the message is redelivered to the next monitor
                raise RuntimeError("the health-monitor is stopping")
            await self._start_watch(event, known, restart_pending)

    async def _start_watch(
        self, event: ReplicaStarted, known: ReplicaHealthChanged | None, restart_pending: bool
    ) -> None:
        current = self._watches.get(event.replica_id)
        newer_process = current is not None and event.restart_count > current.replica.restart_count
        if self._is_stale(event) and not newer_process:
            return
        checks = event.health_checks
        published: Flags | None = None
        if current is not None:
            await current.stop()
        if current is not None and not newer_process:
            # The same process announced again because its probes changed: what is known still holds,
            # so changing a probe does not take every replica out of the pool at once.
            health = ReplicaHealth.resumed(checks, current.health.flags, current.health.last_probe)
            health.restart_requested = current.health.restart_requested
        elif known is not None:
            flags = Flags(known.started, known.ready, known.live)
            health = ReplicaHealth.resumed(checks, flags, known.last_probe)
            health.restart_requested = restart_pending
            published = health.flags
        else:
            health = ReplicaHealth.fresh(checks)
        watch = ReplicaWatch(
            event, health, self._session, self._publish, published, heartbeat_seconds=self._heartbeat_seconds
        )
        self._watches[event.replica_id] = watch
        self._last_applied[event.replica_id] = event.occurred_at
        REPLICAS_WATCHED.set(len(self._watches))
        await watch.start()

    async def replica_gone(self, event: ReplicaExited | ReplicaStopped) -> None:
        """Stop probing the process and publish that it is neither ready nor live."""
        async with self._lock:
            await self._stop_watch(event)

    async def _stop_watch(self, event: ReplicaExited | ReplicaStopped) -> None:
        if self._is_stale(event):
            return
        watch = self._watches.get(event.replica_id)
        if watch is not None:
            await watch.stop()
            await watch.publish_gone(event_id=f"health-{event.event_id}")
            del self._watches[event.replica_id]
            REPLICAS_WATCHED.set(len(self._watches))
        self._last_applied[event.replica_id] = event.occurred_at

    async def rebuild(
        self,
        lifecycle: Iterable[Event],
        health: Iterable[ReplicaHealthChanged],
        restarts: Iterable[ReplicaRestartRequested],
    ) -> None:
        """Apply the latest event of every replica, keeping what the bus already knows of its health.

        A replica that was ready stays ready until its probes say otherwise, and failure counts start
        at 0, so a monitor restart alone never makes a replica unready or restarts it. A restart
        requested after the process started is still pending: that process is not probed again.
        """
        known = {event.replica_id: event for event in health}
        restart_at = {event.replica_id: event.occurred_at for event in restarts}
        for event in lifecycle:
            if isinstance(event, ReplicaStarted):
                previous = known.get(event.replica_id)
                about_this_process = previous is not None and previous.restart_count == event.restart_count
                requested = restart_at.get(event.replica_id)
                await self.replica_started(
                    event,
                    known=previous if about_this_process else None,
                    restart_pending=requested is not None and requested >= event.occurred_at,
                )
            elif isinstance(event, ReplicaExited | ReplicaStopped):
                await self.replica_gone(event)
                await self._retract(known.get(event.replica_id), event)

    async def close(self) -> None:
        """Stop every probe; the replicas keep their published health for the next monitor."""
        async with self._lock:
            self._closed = True
            for watch in self._watches.values():
                await watch.stop()
            self._watches.clear()

    async def _retract(
        self, known: ReplicaHealthChanged | None, gone: ReplicaExited | ReplicaStopped
    ) -> None:
        """The process went while no monitor ran: take back what the bus last heard of its health."""
        if known is None or not (known.started or known.ready or known.live):
            return
        retraction = known.model_copy(
            update={
                "event_id": f"health-{gone.event_id}",
                "occurred_at": utcnow(),
                "started": False,
                "ready": False,
                "live": False,
            }
        )
        await self._publish(retraction)

    def forget_gone(self, now: datetime | None = None) -> int:
        """Forget the replicas that are not probed and whose last event is older than FORGET_AFTER;
        returns how many. Run by the periodic resync."""
        cutoff = (now or utcnow()) - FORGET_AFTER
        gone = [rid for rid, at in self._last_applied.items() if rid not in self._watches and at < cutoff]
        for replica_id in gone:
            del self._last_applied[replica_id]
        return len(gone)

    def _is_stale(self, event: ReplicaStarted | ReplicaExited | ReplicaStopped) -> bool:
        applied = self._last_applied.get(event.replica_id)
        return applied is not None and event.occurred_at <= applied
