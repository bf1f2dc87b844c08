"""The outbox relay: publishes committed events to JetStream in commit order, then marks them.

Each event is published within the trace context its row kept (the API request that committed it),
so the publish span and the `traceparent` it sends belong to that request's trace.

It wakes as soon as a change commits (`notify`) and also every `poll_seconds`, so events left by a
crash are published after the restart. A crash between publishing and marking makes the next run
publish the event again; JetStream drops the copy because the `Nats-Msg-Id` (the event id) repeats
within the stream's duplicate window.

Published rows are kept for a day (to see what was sent, and when), then deleted: the specs themselves
are in the spec versions, and the events in the streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import timedelta

from faststream.nats import NatsBroker

from libs.bus import publish
from libs.events import decode_event
from libs.logging import get_logger
from libs.store import utcnow
from libs.telemetry import continued_trace
from services.spec_registry.faults import crash_point
from services.spec_registry.metrics import EVENTS_PUBLISHED, OUTBOX_LAG
from services.spec_registry.repository import Repository

log = get_logger("spec_registry")

PUBLISHED_RETENTION = timedelta(days=1)  # far beyond the duplicate window: a pruned event is never resent
PRUNE_EVERY_SECONDS = 600.0


class OutboxRelay:
    def __init__(self, repo: Repository, broker: NatsBroker, poll_seconds: float = 1.0, batch: int = 100) -> None:
        self._repo = repo
        self._broker = broker
        self._poll_seconds = poll_seconds
        self._batch = batch
        self._wake = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._next_prune = 0.0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="outbox-relay")

    async def stop(self) -> None:
        """Finish the pass under way, then stop. A flag rather than a cancellation: libraries that
        await with `asyncio.wait_for` may swallow a cancel on Python 3.11, and the relay would go on."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            await self._task

    def notify(self) -> None:
        """Something was committed: publish it now rather than at the next poll."""
        self._wake.set()

    async def _run(self) -> None:
        while not self._stopping:
            self._wake.clear()  # before reading, so a commit during the pass triggers another one
            try:
                while await self.relay_batch() == self._batch and not self._stopping:
                    pass
                if time.monotonic() >= self._next_prune:
                    await self.prune()
            except Exception:  # the bus or the database is away; the next pass retries
                log.warning("outbox relay pass failed", exc_info=True)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._poll_seconds):
                    await self._wake.wait()

    async def relay_batch(self) -> int:
        """Publish up to `batch` pending events in order, each acknowledged by the stream; then mark them."""
        rows = await asyncio.to_thread(self._repo.pending_events, self._batch)
        full = len(rows) == self._batch
        OUTBOX_LAG.set(await asyncio.to_thread(self._repo.outbox_lag) if full else len(rows))
        for row in rows:
            with continued_trace(row.headers):
                await publish(self._broker, decode_event(row.payload))
            crash_point("crash_after_publish")
        if rows:
            await asyncio.to_thread(self._repo.mark_published, [row.id for row in rows if row.id is not None])
            EVENTS_PUBLISHED.inc(len(rows))
            OUTBOX_LAG.dec(len(rows))
        return len(rows)

    async def prune(self) -> int:
        """Delete the events published more than PUBLISHED_RETENTION ago; how many."""
        self._next_prune = time.monotonic() + PRUNE_EVERY_SECONDS
        pruned = await asyncio.to_thread(self._repo.prune_published, utcnow() - PUBLISHED_RETENTION)
        if pruned:
            log.info("outbox pruned", events=pruned)
        return pruned
