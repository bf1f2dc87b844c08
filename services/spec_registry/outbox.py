"""The outbox relay: publishes committed events to JetStream in commit order, then marks them.

Each event carries the trace context its row kept (the API request that committed it): the row's
W3C headers (`traceparent`, ...) go out as the message's headers, so the consumers' spans continue
that request's trace. The relay publishes with nats-py's JetStream client directly rather than through
FastStream: its per-message middleware (an OpenTelemetry publish span, serialisation, logging) was
the largest cost of an update after the store (docs/benchmarks.md); no span of the relay's own is
recorded, the consumers' spans are children of the request's.

It wakes as soon as a change commits (`notify`) and also every `poll_seconds` while it may have missed
rows: after a failed pass, and on a PostgreSQL shared with other registries (their commits do not
notify this one). The only relay of a database, all caught up, waits for `notify` and polls every
IDLE_POLL_SECONDS only as a safety net (a row an operator released by hand, docs/operations.md): an
idle registry then wakes for nothing (docs/benchmarks.md). Events left by a crash are published by the
first pass after the restart. A crash between publishing and marking makes the next run
publish the event again; JetStream drops the copy because the `Nats-Msg-Id` (the event id) repeats
within the stream's duplicate window.

Published rows are kept for a day (to see what was sent, and when), then deleted: the specs themselves
are in the spec versions, and the events in the streams.

One row must not stop the others: a row that cannot be published at all (larger than the bus carries,
refused by JetStream, no longer decodable), or that fails again and again while the bus is fine, is
*set aside*, with its reason, and the rows after it flow. Set-aside rows are counted in the metrics and
in /healthz, and kept until an operator deals with them (docs/operations.md). Failures that come from
the bus being away are never held against a row: every row would fail alike, and retrying is right.

Among several registries sharing a PostgreSQL database only the one holding the relay lock relays
(relay_lock.py); the others stand by and try to take it at every poll.

A write hands the events it committed to the relay in memory (`hand_over`, the repository's
`on_commit`): the relay then reads only the pending ids from the outbox (the table still decides what is
pending and in which order) and publishes those events as they were built, without reading the rows
back and decoding their JSON. Rows it was not handed (left by a crash, written by another registry,
or committed while the hand-off buffer was full) are read whole, as before. A registry standing by
drops what it was handed.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from datetime import timedelta

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext

from libs.bus import publish_raw
from libs.events import Event, decode_event
from libs.logging import get_logger
from libs.store import OutboxRow, utcnow
from services.spec_registry.faults import crash_point
from services.spec_registry.metrics import (
    EVENTS_PUBLISHED,
    EVENTS_SET_ASIDE,
    OUTBOX_LAG,
    OUTBOX_RELAY,
    OUTBOX_SET_ASIDE,
)
from services.spec_registry.relay_lock import RelayLock
from services.spec_registry.repository import Committed, Repository

log = get_logger("spec_registry")

PUBLISHED_RETENTION = timedelta(days=1)  # far beyond the duplicate window: a pruned event is never resent
PRUNE_EVERY_SECONDS = 600.0
IDLE_POLL_SECONDS = 30.0
# Failures of one row in a row, with the bus up, before it is set aside: about a minute of polls.
MAX_ATTEMPTS = 60
# The bus is away or busy: every row would fail alike, so these never count against a row.
BUS_TROUBLE = (
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.ConnectionDrainingError,
    nats.errors.StaleConnectionError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.NoRespondersError,
    nats.js.errors.NoStreamResponseError,
    nats.js.errors.ServiceUnavailableError,
    TimeoutError,
)
# Events handed over and not yet published, at most (the bus away for long): later ones are read back.
HANDED_MAX = 10_000
Pending = OutboxRow | Committed


class Unpublishable(Exception):
    """This row can never be published; the message is the reason kept with it."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind


class OutboxRelay:
    def __init__(
        self,
        repo: Repository,
        js: JetStreamContext,
        poll_seconds: float = 1.0,
        batch: int = 100,
        lock: RelayLock | None = None,
    ) -> None:
        self._repo = repo
        self._lock = lock  # None: this relay is the only one (SQLite, tests)
        self._relaying: bool | None = None
        self._js = js
        self._poll_seconds = poll_seconds
        self._batch = batch
        self._wake = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._next_prune = 0.0
        self._failing: dict[int, int] = {}  # row id -> failures in a row (the first row of a stopped chain)
        # Row id -> the event as committed (`hand_over`, from the writers' threads; hence the lock).
        self._handed: dict[int, Committed] = {}
        self._handed_lock = threading.Lock()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="outbox-relay")

    async def stop(self) -> None:
        """Finish the pass under way, then stop. A flag rather than a cancellation: libraries that
        await with `asyncio.wait_for` may swallow a cancel on Python 3.11, and the relay would go on."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            await self._task

    def hand_over(self, committed: list[Committed]) -> None:
        """Committed events (the repository's `on_commit`, in the writer's thread): publish these
        without reading them back. `notify` wakes the relay."""
        with self._handed_lock:
            if len(self._handed) < HANDED_MAX:
                self._handed.update((event.id, event) for event in committed)

    def notify(self) -> None:
        """Something was committed: publish it now rather than at the next poll."""
        self._wake.set()

    async def _run(self) -> None:
        with contextlib.suppress(Exception):  # the database may be away; the gauge waits for the next one
            OUTBOX_SET_ASIDE.set(await asyncio.to_thread(self._repo.set_aside_count))
        alone = self._lock is None or not self._lock.shared
        while not self._stopping:
            self._wake.clear()  # before reading, so a commit during the pass triggers another one
            caught_up = False
            try:
                if await self._holds_lock():
                    while await self.relay_batch() == self._batch and not self._stopping:
                        pass
                    if time.monotonic() >= self._next_prune:
                        await self.prune()
                    caught_up = alone
            except Exception:  # the bus or the database is away; the next pass retries
                log.warning("outbox relay pass failed", exc_info=True)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(IDLE_POLL_SECONDS if caught_up else self._poll_seconds):
                    await self._wake.wait()
        if self._lock is not None:
            await asyncio.to_thread(self._lock.close)  # another registry takes over at its next poll

    async def _holds_lock(self) -> bool:
        # Unshared (SQLite): always held, and asked without a worker-thread hand-off at every pass.
        relaying = True if self._lock is None or not self._lock.shared else await asyncio.to_thread(self._lock.hold)
        if not relaying:
            self._forget(lambda _: True)  # the lock holder reads them from the table
        if relaying != self._relaying:
            self._relaying = relaying
            OUTBOX_RELAY.state("relaying" if relaying else "standby")
            log.info("outbox relay: " + ("this registry relays" if relaying else "another registry relays; standing by"))
        return relaying

    async def relay_batch(self) -> int:
        """Publish up to `batch` pending events and mark those published (one write for the batch,
        also when some failed), set aside those that cannot be. How many were read.

        The events of one deployment are published one after the other, in commit order, each after
        the previous one's ack: the stream keeps them in that order even when one fails (the rest of
        that deployment waits for the next pass). The events of different deployments go out
        concurrently, their acks awaited together, so a batch costs about one round trip per event
        of its busiest deployment rather than one per event."""
        with self._handed_lock:
            handed_before = max(self._handed, default=0)
        found = await asyncio.to_thread(self._repo.pending_outbox, self._batch, self._handed)
        rows = [self._handed[item] if isinstance(item, int) else item for item in found]
        full = len(rows) == self._batch
        OUTBOX_LAG.set(await asyncio.to_thread(self._repo.outbox_lag) if full else len(rows))
        # Handed events no longer pending were published from the table (their hand-off came late):
        # below the first pending id, or, the read being complete, any handed before it began.
        first = rows[0].id if rows else None
        pending = {row.id for row in rows}
        if full and first is not None:
            self._forget(lambda id_: id_ < first)
        else:
            self._forget(lambda id_: id_ <= handed_before and id_ not in pending)
        chains: dict[str, list[Pending]] = {}
        for row in rows:
            chains.setdefault(_ordering_key(row), []).append(row)
        published: list[int] = []
        try:
            failures = await asyncio.gather(*(self._publish_chain(chain, published) for chain in chains.values()))
        finally:
            if published:
                done = set(published)
                self._forget(done.__contains__)
                # Inline on SQLite as the API's writes are (registry.py): a mark in a worker thread would
                # hold the one writer connection and send the updates meanwhile to threads too.
                if self._repo.writes_inline():
                    self._repo.mark_published(published)
                else:
                    await asyncio.to_thread(self._repo.mark_published, published)
                EVENTS_PUBLISHED.inc(len(published))
                OUTBOX_LAG.dec(len(published))
        for failure in failures:
            if failure is not None:
                raise failure  # the pass failed: logged, and the next pass retries from the first unpublished
        return len(rows)

    def _forget(self, done: Callable[[int], bool]) -> None:
        """Drop the handed events `done` says need no publishing any more."""
        with self._handed_lock:
            for id_ in [id_ for id_ in self._handed if done(id_)]:
                del self._handed[id_]

    async def _publish_chain(self, chain: list[Pending], published: list[int]) -> Exception | None:
        """Publish one deployment's events in order, appending the ids acknowledged to `published`;
        stop at the first that fails (returned) so none of its later events overtakes it."""
        for row in chain:
            assert row.id is not None, "a stored row has its id"
            try:
                await self._publish(row)
            except Unpublishable as exc:
                await self._set_aside(row, exc)
                continue
            except Exception as exc:
                return exc
            crash_point("crash_after_publish")
            published.append(row.id)
        return None

    async def _publish(self, row: Pending) -> None:
        """Publish one row; Unpublishable when it never can be, the error itself when it may pass."""
        assert row.id is not None
        if isinstance(row, Committed):
            event: Event = row.event
        else:
            try:
                event = decode_event(row.payload)
            except Exception as exc:  # a row written by another version of berth, or edited by hand
                raise Unpublishable("undecodable", "not an event this version of berth can read") from exc
        try:
            await publish_raw(self._js, event, row.headers)
        except nats.errors.MaxPayloadError as exc:
            raise Unpublishable("too-large", "larger than the bus carries (nats-server max_payload)") from exc
        except nats.js.errors.BadRequestError as exc:
            raise Unpublishable("refused", f"refused by JetStream: {exc.description or 'bad request'}") from exc
        except BUS_TROUBLE:
            raise
        except Exception as exc:
            count = self._failing.get(row.id, 0) + 1
            self._failing[row.id] = count
            if count >= MAX_ATTEMPTS:
                raise Unpublishable("failing", f"failed {count} times in a row ({type(exc).__name__})") from exc
            raise
        self._failing.pop(row.id, None)

    async def _set_aside(self, row: Pending, problem: Unpublishable) -> None:
        assert row.id is not None
        self._failing.pop(row.id, None)
        self._forget(lambda id_: id_ == row.id)
        await asyncio.to_thread(self._repo.set_aside, row.id, str(problem))
        EVENTS_SET_ASIDE.labels(problem.kind).inc()
        OUTBOX_SET_ASIDE.inc()
        OUTBOX_LAG.dec()
        log.error(
            "outbox event set aside: the events after it go on",
            event_id=row.msg_id,
            subject=row.subject,
            reason=str(problem),
        )

    async def prune(self) -> int:
        """Delete the events published more than PUBLISHED_RETENTION ago; how many."""
        self._next_prune = time.monotonic() + PRUNE_EVERY_SECONDS
        pruned = await asyncio.to_thread(self._repo.prune_published, utcnow() - PUBLISHED_RETENTION)
        if pruned:
            log.info("outbox pruned", events=pruned)
        return pruned


def _ordering_key(row: Pending) -> str:
    """Events about one deployment keep their order on the bus; those of others need not wait."""
    if isinstance(row, Committed):
        deployment = getattr(row.event, "deployment_id", None)
    else:
        deployment = row.payload.get("deployment_id") if isinstance(row.payload, dict) else None
    return deployment if isinstance(deployment, str) else row.subject
