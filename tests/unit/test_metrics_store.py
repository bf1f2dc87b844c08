"""The metrics tables' own Alembic chain: it reaches the tables the service uses, runs again without
change, shares a database with the registry's chain without either touching the other's tables or
version, and adopts a database that an earlier berth made with `create_all` without losing its rows."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlmodel import SQLModel

from libs.store import migrate as migrate_registry
from libs.store.engine import MIGRATIONS as REGISTRY_MIGRATIONS
from services.metrics.store import (
    MIGRATIONS,
    RAW,
    VERSION_TABLE,
    SeriesKey,
    Slot,
    Store,
    StoredSlot,
    metadata,
    migrate,
    open_store,
)
from tests.conftest import SQL_BACKENDS

METRICS_HEAD = ScriptDirectory(str(MIGRATIONS)).get_current_head()
REGISTRY_HEAD = ScriptDirectory(str(REGISTRY_MIGRATIONS)).get_current_head()


def revision(connection: sa.Connection, version_table: str) -> str | None:
    return MigrationContext.configure(connection, opts={"version_table": version_table}).get_current_revision()


@pytest.mark.parametrize("database_url", SQL_BACKENDS, indirect=True)
def test_the_chain_reaches_the_tables_and_shares_a_database_with_the_registry(database_url: str) -> None:
    # Production: the metrics history lies in the registry's PostgreSQL (BERTH_DATABASE_URL).
    migrate_registry(database_url)
    migrate(database_url)
    migrate(database_url)  # every start runs it; a second run changes nothing
    migrate_registry(database_url)  # and the registry's chain sees nothing of the metrics tables

    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as connection:
            metrics = MigrationContext.configure(connection, opts={
                "compare_type": True, "version_table": VERSION_TABLE,
                "include_name": lambda name, kind, _: kind != "table" or name.startswith("metrics_")})  # fmt: skip
            assert compare_metadata(metrics, metadata) == []
            registry = MigrationContext.configure(connection, opts={
                "compare_type": True, "include_name": lambda name, kind, _: kind != "table" or name in SQLModel.metadata.tables})  # fmt: skip
            assert compare_metadata(registry, SQLModel.metadata) == []
            assert revision(connection, VERSION_TABLE) == METRICS_HEAD
            assert revision(connection, "alembic_version") == REGISTRY_HEAD  # the registry's own, untouched
    finally:
        engine.dispose()


def test_a_database_made_before_the_chain_is_adopted_with_its_history(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'metrics.db'}"
    before = sa.create_engine(url)
    metadata.create_all(before)  # what the service did before it had migrations
    Store(before).write([StoredSlot(SeriesKey("d1", "r1", "rev1"), 60, Slot(requests=7, cpu_sum=40.0, cpu_n=1))])
    before.dispose()

    engine = open_store(url)
    try:
        kept = Store(engine).read("d1", RAW, 0, 120)
        assert [(s.key.replica_id, s.slot.requests, s.slot.cpu_sum) for s in kept] == [("r1", 7, 40.0)]
        with engine.connect() as connection:
            assert revision(connection, VERSION_TABLE) == METRICS_HEAD
    finally:
        engine.dispose()
