"""A steady load through the router for end-to-end tests, and what answers it."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import httpx

from tests.e2e.test_endpoint import predict, status_of
from tests.helpers import eventually


@dataclass
class Load:
    failures: list[str] = field(default_factory=list)
    answered_by: Counter[str] = field(default_factory=Counter)
    timings: list[float] = field(default_factory=list)  # seconds each request took, as the client saw it

    @property
    def answered(self) -> int:
        return sum(self.answered_by.values())

    async def running(self) -> None:
        await eventually(lambda: self.answered >= 20, timeout=20, what="load running")


@asynccontextmanager
async def steady_load(router: httpx.AsyncClient, path: str, clients: int = 4) -> AsyncIterator[Load]:
    """`clients` clients calling `path` in a loop (each waits for its answer) until the block ends."""
    load, stop = Load(), asyncio.Event()

    async def client() -> None:
        while not stop.is_set():
            started = time.perf_counter()
            try:
                response = await predict(router, path)
            except httpx.HTTPError as exc:
                load.failures.append(repr(exc))
                continue
            load.timings.append(time.perf_counter() - started)
            if response.status_code != 200:
                load.failures.append(f"{response.status_code} {response.text[:200]}")
            else:
                load.answered_by[response.headers["X-Berth-Replica"]] += 1

    workers = [asyncio.create_task(client()) for _ in range(clients)]
    try:
        yield load
    finally:
        stop.set()
        await asyncio.gather(*workers)


async def settles_on(load: Load, replicas: set[str], timeout: float = 20) -> None:
    """Wait until a window of 20 answers all come from `replicas`, then check the next 40 do too."""

    async def window() -> bool:
        load.answered_by.clear()
        await eventually(lambda: load.answered >= 20, timeout=10, what="20 answers")
        return set(load.answered_by) <= replicas

    await eventually(window, timeout=timeout, interval=0, what=f"answers only from {sorted(replicas)}")
    load.answered_by.clear()
    await eventually(lambda: load.answered >= 40, timeout=10, what="40 answers")
    assert set(load.answered_by) <= replicas, load.answered_by


async def ready_by_revision(api: httpx.AsyncClient, ref: str) -> dict[str, set[str]]:
    """revision -> its ready replicas, as the deployment's status says."""
    by: dict[str, set[str]] = {}
    for r in (await status_of(api, ref))["replicas"]:
        if r["ready"]:
            by.setdefault(r["revision_id"], set()).add(r["replica_id"])
    return by
