"""Several registries against one PostgreSQL: only one relays the outbox at a time (an advisory lock);
when it is killed, another takes over; every event reaches the bus exactly once. Real registry
processes, real nats-server, real PostgreSQL (skipped when none is reachable)."""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from nats.js import JetStreamContext

from libs.bus import all_events
from libs.events import SpecApplied
from tests.helpers import eventually
from tests.servers.registry import RegistryProcess

pytestmark = pytest.mark.postgres


def spec(name: str) -> dict:
    return {"name": name, "image": "python:3.11", "resources": {"ports": [8000]}}


@pytest.fixture
def registries(tmp_path: Path, nats_url: str, database_url: str) -> Iterator[list[RegistryProcess]]:
    started = []
    for _ in range(2):
        process = RegistryProcess(tmp_path, nats_url)  # one data dir: the admin token both accept
        process.env["BERTH_DATABASE_URL"] = database_url
        started.append(process)
    try:
        yield started
    finally:
        for process in started:
            process.stop()


async def metric(registry: RegistryProcess, pattern: str) -> str | None:
    async with registry.client() as api:
        found = re.search(pattern, (await api.get("/metrics")).text, re.MULTILINE)
    return found.group(1) if found else None


async def role(registry: RegistryProcess) -> str | None:
    return await metric(registry, r'^berth_registry_outbox_relay\{berth_registry_outbox_relay="(\w+)"\} 1\.0$')


async def published(registry: RegistryProcess) -> float:
    return float(await metric(registry, r"^berth_registry_events_published_total ([\d.]+)$") or 0)


async def spec_events(js: JetStreamContext) -> list[SpecApplied]:
    return [e for e in await all_events(js, "berth.spec.v1.*") if isinstance(e, SpecApplied)]


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
async def test_one_registry_relays_and_another_takes_over_when_it_dies(
    registries: list[RegistryProcess], js: JetStreamContext
) -> None:
    first, second = registries
    first.start()
    # A registry process takes seconds to start on a loaded machine (imports, migrations checked).
    await eventually(lambda: _is(first, "relaying"), timeout=60, what="the first registry relaying")
    second.start()
    await eventually(lambda: _is(second, "standby"), timeout=60, what="the second registry standing by")

    names = [f"model-{i}" for i in range(6)]
    for i, name in enumerate(names[:4]):  # through both APIs: the outbox is shared
        async with (first if i % 2 else second).client() as api:
            assert (await api.post("/v1/deployments", json=spec(name))).status_code == 201
    await eventually(lambda: _count(js, 4), what="4 events on the bus")
    assert await published(first) == 4 and await published(second) == 0
    assert await role(second) == "standby"

    assert first.process is not None
    killed = time.monotonic()
    os.kill(first.process.pid, signal.SIGKILL)  # its session ends, and the lock with it
    first.process.wait(10)
    await eventually(lambda: _is(second, "relaying"), what="the second registry relaying")
    took = time.monotonic() - killed
    print(f"relay takeover after a kill -9: {took:.2f} s")
    assert took < 5  # the standby tries at every poll (1 s)
    async with second.client() as api:
        for name in names[4:]:
            assert (await api.post("/v1/deployments", json=spec(name))).status_code == 201
    await eventually(lambda: _count(js, 6), what="6 events on the bus")
    assert await published(second) == 2

    events = await spec_events(js)
    assert sorted(e.slug for e in events) == sorted(names)
    assert len({e.event_id for e in events}) == len(events) == 6  # none published twice
    info = await js.stream_info("BERTH_SPECS")
    assert info.state.messages == 6


async def _count(js: JetStreamContext, expected: int) -> bool:
    return len(await spec_events(js)) == expected


async def _is(registry: RegistryProcess, wanted: str) -> str | None:
    current = await role(registry)
    return current if current == wanted else None
