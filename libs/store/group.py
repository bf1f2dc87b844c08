"""Group commit: the writes submitted together are run in one transaction.

The jobs submitted during one turn of the event loop (the requests that reached their write in the
same turn: concurrent clients' requests arrive together) go to the writer thread in one hand-off; so
do those that came while it was busy. One thread owns the writes given to it. It takes every job
waiting (up to `max_batch`), opens one transaction, runs each job in a savepoint of its own, commits once, then answers every job at once on
the event loop. A job that raises rolls back its own savepoint only: the others commit. A job is
answered only after the commit that holds it, so an answered write is durable exactly as with a
transaction of its own; when the commit fails every job of the batch fails with it.

Why: a spec update costs a worker-thread hand-off, a pool checkout, a BEGIN and a COMMIT of its own
otherwise; at 8 concurrent clients those were about a third of the registry's CPU per update
(docs/benchmarks.md, "Group commit").
"""

from __future__ import annotations

import asyncio
import contextvars
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import sqlalchemy as sa

T = TypeVar("T")
# Jobs per transaction at most: bounds how long the first of a batch waits for the last.
MAX_BATCH = 64


@dataclass
class _Job(Generic[T]):
    work: Callable[[sa.Connection], T]
    future: asyncio.Future[T]
    context: contextvars.Context  # the caller's: its trace context goes into the outbox rows it writes
    result: Any = None
    error: BaseException | None = None


class GroupCommit:
    """`run(work)` runs `work(connection)` in the next group transaction on `engine`, in a savepoint,
    and returns its result after the commit. `after_commit` is called in the writer thread after each
    commit, before anyone is answered (the registry's test-only crash hook)."""

    def __init__(
        self, engine: sa.Engine, after_commit: Callable[[], None] = lambda: None, max_batch: int = MAX_BATCH
    ) -> None:
        self._engine = engine
        self._after_commit = after_commit
        self._max_batch = max_batch
        self._jobs: queue.SimpleQueue[list[_Job[Any]] | None] = queue.SimpleQueue()
        self._gathered: list[_Job[Any]] = []  # this turn's jobs (touched on the event loop only)
        self._thread = threading.Thread(target=self._serve, name="group-commit", daemon=True)
        self._thread.start()

    async def run(self, work: Callable[[sa.Connection], T]) -> T:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        if not self._gathered:  # the first of this turn: hand them over once the turn's others are in
            loop.call_soon(self._hand_over)
        self._gathered.append(_Job(work, future, contextvars.copy_context()))
        return await future

    def _hand_over(self) -> None:
        self._jobs.put(self._gathered)
        self._gathered = []

    def close(self) -> None:
        """Finish the jobs already submitted, then stop the thread."""
        self._jobs.put(None)
        self._thread.join()

    def _serve(self) -> None:
        while True:
            first = self._jobs.get()
            if first is None:
                return
            waiting, stop = list(first), False
            while len(waiting) < self._max_batch:
                try:
                    more = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                    break
                waiting.extend(more)
            for start in range(0, len(waiting), self._max_batch):
                self._commit(waiting[start : start + self._max_batch])
            if stop:
                return

    def _commit(self, batch: list[_Job[Any]]) -> None:
        try:
            with self._engine.begin() as connection:
                for job in batch:
                    try:
                        with connection.begin_nested():
                            job.result = job.context.run(job.work, connection)
                    except Exception as exc:  # this job's own failure: its savepoint is rolled back
                        job.error = exc
            self._after_commit()
        except Exception as exc:  # the transaction failed: nothing of the batch was stored
            for job in batch:
                job.error = job.error or exc
        # One hand-off to the event loop for the whole batch (one per job cost as much as the job).
        loops: dict[asyncio.AbstractEventLoop, list[_Job[Any]]] = {}
        for job in batch:
            loops.setdefault(job.future.get_loop(), []).append(job)
        for loop, jobs in loops.items():
            try:
                loop.call_soon_threadsafe(_answer, jobs)
            except RuntimeError:  # that loop is closed: nobody waits for these any more
                pass


def _answer(jobs: list[_Job[Any]]) -> None:
    for job in jobs:
        if job.future.done():  # the caller gave up (cancelled); the write stands or fell regardless
            continue
        if job.error is not None:
            job.future.set_exception(job.error)
        else:
            job.future.set_result(job.result)
