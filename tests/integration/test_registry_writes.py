"""The registry's write path under concurrency: many writers at once are all accepted (SQLite: one
writer connection, in order; PostgreSQL: a pool), reads go on while a write transaction is open, and
the outbox relay publishes a batch with each deployment's events in commit order, exactly once
across a crash between publishing and marking. Real SQLite / PostgreSQL, real nats-server."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import sqlalchemy as sa
from nats.js import JetStreamContext

from libs.bus import all_events, ensure_streams
from libs.events import SpecApplied
from libs.spec import DeploymentSpec
from libs.store import OutboxRow, Store, migrate, open_store
from services.spec_registry.outbox import OutboxRelay
from services.spec_registry.repository import Repository
from tests.conftest import SQL_BACKENDS

WRITERS = 8
UPDATES = 15


def spec(name: str, n: int = 0) -> DeploymentSpec:
    return DeploymentSpec.model_validate(
        {"name": name, "image": f"python:3.11.{n}", "resources": {"ports": [8000]}}
    )


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    migrate(database_url)
    opened = open_store(database_url)
    Repository(opened).bootstrap("digest")  # project `default`
    yield opened
    opened.dispose()


@pytest.fixture
def repo(store: Store) -> Repository:
    return Repository(store)


@pytest.fixture
async def streams(js: JetStreamContext) -> JetStreamContext:
    """berth's streams, on the test's own nats-server."""
    await ensure_streams(js)
    return js


def apply_updates(repo: Repository, name: str) -> list[int]:
    """Create `name`, then update it UPDATES times, each on the version the last one made."""
    stored = repo.create_deployment("default", spec(name))
    versions = [stored.row.spec_version]
    for n in range(1, UPDATES + 1):
        stored = repo.update_deployment("default", name, spec(name, n), [stored.row.spec_id])
        versions.append(stored.row.spec_version)
    return versions


@pytest.mark.parametrize("database_url", SQL_BACKENDS, indirect=True)
def test_concurrent_writers_are_all_accepted(repo: Repository) -> None:
    """Eight writers at once, none refused ("database is locked", a stale version): every update is
    a version of its deployment, and each history is complete."""
    names = [f"writer-{n}" for n in range(WRITERS)]
    with ThreadPoolExecutor(WRITERS) as pool:
        results = list(pool.map(lambda name: apply_updates(repo, name), names))
    assert results == [list(range(1, UPDATES + 2))] * WRITERS
    for name in names:
        history = repo.history("default", name, limit=100)
        assert [v.version for v in history] == list(range(UPDATES + 1, 0, -1))
        assert history[0].spec["image"] == f"python:3.11.{UPDATES}"
    assert repo.outbox_lag() == WRITERS * (UPDATES + 1)


@pytest.mark.parametrize("database_url", SQL_BACKENDS, indirect=True)
def test_reads_do_not_wait_for_an_open_write(store: Store, repo: Repository) -> None:
    """While a write transaction holds the writer (on SQLite: the only one), the API's reads answer."""
    repo.create_deployment("default", spec("reader"))
    holding, release = threading.Event(), threading.Event()

    def hold_the_writer() -> None:
        with store.writer.begin() as connection:
            connection.execute(sa.text("UPDATE deployments SET environment = environment"))
            holding.set()
            release.wait(30)

    with ThreadPoolExecutor(2) as pool:
        held = pool.submit(hold_the_writer)
        assert holding.wait(30)
        try:
            read = pool.submit(repo.get_deployment, "default", "reader")
            assert read.result(timeout=30).row.name == "reader"
            assert repo.pending_events(10) and repo.outbox_lag() == 1
        finally:
            release.set()
        held.result()


def test_sqlite_readers_cannot_write(store: Store) -> None:
    """A read connection never takes the write lock: a write on it fails instead."""
    with pytest.raises(sa.exc.OperationalError, match="readonly"), store.reader.begin() as connection:
        connection.execute(sa.text("DELETE FROM outbox"))


async def spec_versions_on_the_bus(js: JetStreamContext) -> dict[str, list[int]]:
    """Each deployment's SpecApplied versions in stream order."""
    found: dict[str, list[int]] = {}
    for event in await all_events(js, "berth.spec.v1.*"):
        if isinstance(event, SpecApplied):
            found.setdefault(event.name, []).append(event.spec_version)
    return found


@pytest.mark.parametrize("database_url", SQL_BACKENDS, indirect=True)
async def test_relay_publishes_a_batch_in_order_per_deployment_and_once_across_a_crash(
    repo: Repository, store: Store, streams: JetStreamContext
) -> None:
    names = [f"relayed-{n}" for n in range(4)]
    with ThreadPoolExecutor(len(names)) as pool:  # interleaved commits of four deployments
        list(pool.map(lambda name: apply_updates(repo, name), names))
    relay = OutboxRelay(repo, streams, batch=1000)

    assert await relay.relay_batch() == len(names) * (UPDATES + 1)
    expected = {name: list(range(1, UPDATES + 2)) for name in names}
    assert await spec_versions_on_the_bus(streams) == expected
    assert repo.outbox_lag() == 0

    # A crash after the acks and before the mark leaves the rows pending: the next relay publishes
    # them again, and JetStream drops every copy by its event id.
    with store.writer.begin() as connection:
        connection.execute(sa.update(OutboxRow.__table__).values(published_at=None))  # type: ignore[attr-defined]
    assert await OutboxRelay(repo, streams, batch=7).relay_batch() == 7
    while await relay.relay_batch():
        pass
    assert await spec_versions_on_the_bus(streams) == expected
    assert (await streams.stream_info("BERTH_SPECS")).state.messages == len(names) * (UPDATES + 1)
    assert repo.outbox_lag() == 0


@pytest.mark.parametrize("database_url", SQL_BACKENDS, indirect=True)
async def test_relay_keeps_commit_order_across_handed_and_unhanded_events(store: Store, streams: JetStreamContext) -> None:
    """Events handed to the relay in memory by its own registry's writes and events it was not handed
    (another registry's, on the same database) interleave on the same deployments: each deployment's
    events still go out once each, in commit order, also when a pass runs half-way through."""
    relaying, other = Repository(store), Repository(store)
    relay = OutboxRelay(relaying, streams, batch=5)
    relaying.on_commit = relay.hand_over
    names = [f"mixed-{n}" for n in range(3)]
    stored = {name: relaying.create_deployment("default", spec(name)) for name in names}
    for n in range(1, UPDATES + 1):
        writer = other if n % 3 == 0 else relaying
        for name in names:
            stored[name] = writer.update_deployment("default", name, spec(name, n), [stored[name].row.spec_id])
        if n % 4 == 0:
            await relay.relay_batch()
    while await relay.relay_batch():
        pass
    assert await spec_versions_on_the_bus(streams) == {name: list(range(1, UPDATES + 2)) for name in names}
    assert (await streams.stream_info("BERTH_SPECS")).state.messages == len(names) * (UPDATES + 1)
    assert relaying.outbox_lag() == 0


@pytest.mark.parametrize("database_url", SQL_BACKENDS, indirect=True)
def test_writes_run_inline_only_on_sqlite_with_the_writer_free(store: Store, database_url: str) -> None:
    """The API runs a SQLite write on the event loop only when the one writer connection is free: when a
    worker thread holds it, the write goes to a thread too, so the loop never waits. PostgreSQL never."""
    repo = Repository(store)
    on_sqlite = database_url.startswith("sqlite")
    assert repo.writes_inline() is on_sqlite
    with store.writer.connect():
        assert repo.writes_inline() is False
    assert repo.writes_inline() is on_sqlite
