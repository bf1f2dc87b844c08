"""Replica lifecycle events, derived by comparing what the runtime runs with what the bus was told.

Level-triggered like the rest of the scheduler: whatever the runtime's change hook reported, or
missed, the next comparison publishes what is missing. Event ids are deterministic (a replica's
process incarnation, its restart count, the probes it is announced with), so a redelivered or repeated
comparison - a scheduler restarted after a crash - publishes nothing JetStream has not de-duplicated.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from libs.events import (
    DeploymentRef,
    ReplicaEvent,
    ReplicaExited,
    ReplicaStarted,
    ReplicaStopped,
    utcnow,
)
from libs.runtime.base import Replica
from libs.spec import HealthChecks

LOG_TAIL_LINES = 20

_ID_NAMESPACE = uuid.UUID("8f1c1f59-3b4e-4f5e-9f55-6f2c4b1e7a10")

LogTail = Callable[[str], Awaitable[list[str]]]


def event_id(*parts: object) -> str:
    return uuid.uuid5(_ID_NAMESPACE, "/".join(str(p) for p in parts)).hex


@dataclass(frozen=True)
class Serving:
    """What a replica serves: announced in its ReplicaStarted."""

    ref: DeploymentRef
    spec_id: str
    primary_port: int
    health_checks: HealthChecks
    revision_id: str = ""


class Ledger:
    """The last lifecycle event the bus holds for each live replica of one deployment."""

    def __init__(self) -> None:
        self._last: dict[str, ReplicaEvent] = {}
        self._started: dict[str, ReplicaStarted] = {}  # by replica id: what it was announced with

    def record(self, event: ReplicaEvent) -> None:
        if isinstance(event, ReplicaStopped):
            self._last.pop(event.replica_id, None)  # gone for good; a reused id starts afresh
            self._started.pop(event.replica_id, None)
            return
        self._last[event.replica_id] = event
        if isinstance(event, ReplicaStarted):
            self._started[event.replica_id] = event

    def last(self, replica_id: str) -> ReplicaEvent | None:
        return self._last.get(replica_id)

    def started(self, replica_id: str) -> ReplicaStarted | None:
        return self._started.get(replica_id)

    def replicas(self) -> dict[str, ReplicaEvent]:
        return dict(self._last)

    def __len__(self) -> int:
        return len(self._last) + len(self._started)


def started_event(replica: Replica, serving: Serving) -> ReplicaStarted:
    """Its id names the process and how it is probed, not the spec version: a new version that only
    scales keeps the announcement (and the health-monitor's state), a change of probes renews it."""
    incarnation = f"{replica.pid}@{replica.started_at.isoformat() if replica.started_at else ''}"
    probes = serving.health_checks.model_dump_json() + str(serving.primary_port)
    return ReplicaStarted(
        event_id=event_id("started", replica.replica_id, replica.restart_count, incarnation, probes),
        **serving.ref.model_dump(include={"deployment_id", "project", "slug"}),
        replica_id=replica.replica_id,
        spec_id=serving.spec_id,
        revision_id=replica.revision_id or serving.revision_id,
        host=replica.host,
        ports=replica.ports,
        primary_port=serving.primary_port,
        restart_count=replica.restart_count,
        health_checks=serving.health_checks,
    )


def stopped_event(last: ReplicaEvent, reason: str) -> ReplicaStopped:
    return ReplicaStopped(
        event_id=event_id("stopped", last.event_id),
        **last.model_dump(include={"deployment_id", "project", "slug", "replica_id", "spec_id", "revision_id"}),
        reason=reason,
    )


async def lifecycle_events(
    replica: Replica, last: ReplicaEvent | None, serving: Serving, log_tail: LogTail, stop_reason: str
) -> list[ReplicaEvent]:
    """What to publish so that the bus knows the replica's current state (empty when it does)."""
    if replica.state == "stopping":
        # The router drops it now, while it drains, rather than after it is gone.
        return [stopped_event(last, stop_reason)] if last is not None else []
    if replica.state == "starting":
        return []  # no process (or no address) yet: announced once it runs
    if replica.state == "running":
        if last is not None and last.event_id == started_event(replica, serving).event_id:
            return []
        events: list[ReplicaEvent] = []
        if isinstance(last, ReplicaStarted) and last.restart_count < replica.restart_count:
            # It exited and was restarted between two looks: the exit is still news.
            events.append(await _exited(replica, last, last.restart_count, None, serving, log_tail))
        # Made last: consumers order a replica's events by occurred_at.
        return [*events, started_event(replica, serving)]
    if isinstance(last, ReplicaExited) and last.restart_count == replica.restart_count:
        return []
    delay = None
    if replica.state == "backoff" and replica.next_restart_at is not None:
        delay = max(0.0, (replica.next_restart_at - utcnow()).total_seconds())
    return [await _exited(replica, last, replica.restart_count, delay, serving, log_tail)]


async def _exited(
    replica: Replica,
    last: ReplicaEvent | None,
    restart_count: int,
    delay: float | None,
    serving: Serving,
    log_tail: LogTail,
) -> ReplicaExited:
    return ReplicaExited(
        event_id=event_id("exited", replica.replica_id, restart_count, last.event_id if last else ""),
        **serving.ref.model_dump(include={"deployment_id", "project", "slug"}),
        replica_id=replica.replica_id,
        spec_id=last.spec_id if last else serving.spec_id,
        revision_id=replica.revision_id or serving.revision_id,
        exit_code=replica.last_exit_code,
        restart_count=restart_count,
        next_restart_in_seconds=delay,
        log_tail=await log_tail(replica.replica_id),
    )
