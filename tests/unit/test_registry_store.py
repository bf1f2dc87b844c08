"""The registry's SQL store: migrations, timestamps, the status read model's ordering rule, outbox pruning."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from nats.aio.client import Client as NatsClient
from sqlmodel import SQLModel, col, select

from libs.events import DeploymentStatusChanged, FetchProgress, IntegrationStatus
from libs.spec import load_spec
from libs.store import OutboxRow, create_engine, migrate, utcnow
from services.spec_registry.outbox import OutboxRelay
from services.spec_registry.repository import Repository
from tests.conftest import SQL_BACKENDS


@pytest.fixture
def url(database_url: str) -> str:
    return database_url


@pytest.fixture
def repo(tmp_path: Path) -> Iterator[Repository]:
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    migrate(url)
    engine = create_engine(url)
    repo = Repository(engine)
    repo.bootstrap("digest")  # project `default`
    yield repo
    engine.dispose()


@pytest.mark.parametrize("database_url", SQL_BACKENDS, indirect=True)
def test_migrations_reach_the_models_and_can_run_again(url: str) -> None:
    migrate(url)
    migrate(url)  # every start runs it; a second run changes nothing

    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            assert compare_metadata(context, SQLModel.metadata) == []
            assert context.get_current_revision() is not None
    finally:
        engine.dispose()


def test_timestamps_come_back_in_utc(repo: Repository) -> None:
    stored = repo.create_deployment("default", load_spec("name: a\nimage: b\nresources: {ports: [80]}"))
    again = repo.get_deployment("default", stored.row.id)
    assert again.row.created_at.tzinfo == UTC and again.row.created_at == stored.row.created_at


def status(deployment_id: str, phase: str, at: datetime) -> DeploymentStatusChanged:
    return DeploymentStatusChanged(
        deployment_id=deployment_id, project="default", slug="a", spec_id=None, phase=phase,  # type: ignore[arg-type]
        desired_replicas=1, ready_replicas=0, occurred_at=at,
    )  # fmt: skip


def test_status_keeps_the_newest_event_and_ignores_unknown_deployments(repo: Repository) -> None:
    stored = repo.create_deployment("default", load_spec("name: a\nimage: b\nresources: {ports: [80]}"))
    now = datetime.now(UTC)

    assert repo.save_status(status(stored.row.id, "Ready", now))
    assert not repo.save_status(status(stored.row.id, "Provisioning", now - timedelta(seconds=1)))
    assert not repo.save_status(status("deleted-meanwhile", "Ready", now))

    saved = repo.get_deployment("default", stored.row.id).status
    assert saved is not None and saved["phase"] == "Ready"


async def test_published_events_are_pruned_after_a_day_and_pending_ones_never(repo: Repository) -> None:
    spec = "name: {}\nimage: b\nresources: {{ports: [80]}}"
    for name in ("old", "recent", "pending"):
        repo.create_deployment("default", load_spec(spec.format(name)))
    old, recent, pending = repo.pending_events(10)
    repo.mark_published([old.id, recent.id])  # type: ignore[list-item]
    two_days_ago = utcnow() - timedelta(days=2)
    with repo._write() as session:
        session.execute(sa.update(OutboxRow).where(col(OutboxRow.id) == old.id).values(published_at=two_days_ago))

    assert await OutboxRelay(repo, NatsClient().jetstream()).prune() == 1

    with repo._read() as session:
        left = {row.msg_id for row in session.exec(select(OutboxRow)).all()}
    assert left == {recent.msg_id, pending.msg_id}
    assert [row.msg_id for row in repo.pending_events(10)] == [pending.msg_id]


def test_status_keeps_the_integrations_and_a_fetch_under_way(repo: Repository) -> None:
    """`berth deployments get` shows what the scheduler reported about the integrations."""
    stored = repo.create_deployment("default", load_spec("name: a\nimage: b\nresources: {ports: [80]}"))
    fetching = status(stored.row.id, "Provisioning", datetime.now(UTC)).model_copy(update={
        "fetching": FetchProgress(integration="weights", fetched_files=2, fetched_bytes=512),
        "integrations": [IntegrationStatus(name="weights", type="s3", mount="/models/weights", identity="e7ag")],
    })  # fmt: skip
    assert repo.save_status(fetching)
    saved = repo.get_deployment("default", stored.row.id).status
    assert saved is not None
    assert saved["fetching"] == {"integration": "weights", "fetched_files": 2, "fetched_bytes": 512}
    assert [i["identity"] for i in saved["integrations"]] == ["e7ag"]
