"""Engine creation for SQLite (embedded default) or PostgreSQL, and Alembic migrations to head."""

from __future__ import annotations

import threading
from collections.abc import Callable
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.engine import make_url
from sqlalchemy.pool import ConnectionPoolEntry

MIGRATIONS = Path(__file__).parent / "migrations"
READ_ONLY = "berth_read_only"


# PostgreSQL: connections kept open per engine (writes and reads have an engine each), and how many
# more may open at a peak. Well below PostgreSQL's default max_connections (100) for a few registries.
PG_POOL_SIZE = 8
PG_MAX_OVERFLOW = 8
# A pooled PostgreSQL connection idle longer than this is checked (SELECT 1) before it is used.
PING_IDLE_SECONDS = 2.0
# SQLite readers: WAL lets them read a snapshot beside the one writer, each on a connection of its own.
SQLITE_READERS = 4
# A writer waits this long for the single SQLite writer connection (in-process, in order) before failing.
SQLITE_WRITER_WAIT_SECONDS = 60


@dataclass(frozen=True)
class Store:
    """The engines of one database: `writer` takes every write transaction, `reader` the reads, so a
    read never queues behind (or holds up) a write. On SQLite the writer is a single connection: writes
    are serialised in this process, in arrival order, instead of competing for the file lock with
    busy back-off; the readers are query-only connections. On PostgreSQL each has a pool of its own and
    the readers' transactions are READ ONLY."""

    writer: sa.Engine
    reader: sa.Engine

    def dispose(self) -> None:
        self.writer.dispose()
        if self.reader is not self.writer:
            self.reader.dispose()


def open_store(url: str) -> Store:
    """The writer and reader engines for `settings.sqlalchemy_url`."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        writer, read_only = (
            sa.create_engine(url, pool_size=PG_POOL_SIZE, max_overflow=PG_MAX_OVERFLOW) for _ in range(2)
        )
        for engine in (writer, read_only):
            sa.event.listen(engine, "checkin", _checked_in)
            sa.event.listen(engine, "checkout", _ping_when_idle)
        return Store(writer, read_only.execution_options(postgresql_readonly=True))
    if not parsed.database or parsed.database == ":memory:":
        engine = create_engine(url)  # one in-memory database lives on one connection: nothing to split
        return Store(engine, reader(engine))
    writer = create_engine(url, pool_size=1, max_overflow=0, pool_timeout=SQLITE_WRITER_WAIT_SECONDS)
    readers = create_engine(url, pool_size=SQLITE_READERS, max_overflow=SQLITE_READERS)
    sa.event.listen(readers, "connect", _sqlite_query_only)
    return Store(writer, reader(readers))


def _checked_in(_: Any, record: ConnectionPoolEntry) -> None:
    record.info["idle_since"] = time.monotonic()


def _ping_when_idle(dbapi_connection: Any, record: ConnectionPoolEntry, _: Any) -> None:
    """`pool_pre_ping`, but only for a connection idle longer than PING_IDLE_SECONDS: a server restart
    is still noticed before a request uses a dead connection, and a busy pool pays no round trip per
    transaction. Raising DisconnectionError makes the pool retry with a fresh connection."""
    if time.monotonic() - record.info.get("idle_since", 0.0) < PING_IDLE_SECONDS:
        return
    try:
        cursor = dbapi_connection.cursor()
        cursor.execute("SELECT 1")
        cursor.close()
        dbapi_connection.rollback()  # end the transaction the ping began, as the pool hands out none
    except Exception as exc:
        raise sa.exc.DisconnectionError() from exc


def create_engine(url: str, **pool: Any) -> sa.Engine:
    """An engine for `settings.sqlalchemy_url`; SQLite gets WAL and write-serialising transactions.
    `pool`: keyword arguments for the connection pool (sizes, timeout)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return sa.create_engine(url, pool_pre_ping=True, **pool)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, **pool)
    sa.event.listen(engine, "connect", _sqlite_connect)
    sa.event.listen(engine, "begin", _sqlite_begin)
    return engine


def _sqlite_query_only(dbapi_connection: Any, _: Any) -> None:
    # A reader that tried to write would fail at once instead of taking the write lock.
    dbapi_connection.execute("PRAGMA query_only=ON")


def _sqlite_connect(dbapi_connection: Any, _: Any) -> None:
    # Let SQLAlchemy, not the sqlite3 module, decide when transactions begin (see _sqlite_begin).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _sqlite_begin(connection: sa.Connection) -> None:
    # BEGIN IMMEDIATE takes the write lock up front: a read-then-write transaction waits for another
    # writer (busy timeout) instead of failing with "database is locked" when it upgrades its lock.
    # Readers (see `reader`) need no lock: in WAL mode they read a snapshot beside the writer.
    read_only = connection.get_execution_options().get(READ_ONLY, False)
    connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


def reader(engine: sa.Engine) -> sa.Engine:
    """The same engine (and pool) for transactions that only read; on SQLite they take no write lock."""
    return engine.execution_options(**{READ_ONLY: True})


# Alembic's `context` and `op` are module-level proxies: two migrations at once in one process (the
# shared control plane starts the registry and the metrics service together) would trample each other.
ALEMBIC_LOCK = threading.Lock()


def migrate(url: str) -> None:
    """Upgrade the database at `url` to the newest Alembic revision shipped in this package."""
    upgrade(url, MIGRATIONS)


def upgrade(url: str, script_location: Path, adopt: Callable[[sa.Connection], str | None] | None = None) -> None:
    """Upgrade the database at `url` to the head of the Alembic chain at `script_location` (the
    registry's, or the metrics service's, which has a version table of its own). `adopt` may name a
    revision to stamp first: a schema made before its chain existed."""
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            config = Config()
            config.set_main_option("script_location", str(script_location))
            config.attributes["connection"] = connection
            with ALEMBIC_LOCK:
                if adopt is not None and (revision := adopt(connection)) is not None:
                    command.stamp(config, revision)
                command.upgrade(config, "head")
            connection.commit()
    finally:
        engine.dispose()


def run_chain(
    metadata: sa.MetaData, include_name: Callable[[str | None, str, Any], bool], version_table: str = "alembic_version"
) -> None:
    """The body of a migration chain's Alembic env.py: migrate over the connection `upgrade` passes
    in, or over one opened from `-x url=...` (the `alembic` command line)."""
    from alembic import context  # the proxy Alembic sets up while it runs an env.py

    def run(connection: sa.Connection) -> None:
        context.configure(
            connection=connection,
            target_metadata=metadata,
            version_table=version_table,
            include_name=include_name,
            render_as_batch=True,  # SQLite can only ALTER tables by copying them
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()

    connection = context.config.attributes.get("connection")
    if connection is not None:
        run(connection)
        return
    engine = create_engine(context.get_x_argument(as_dictionary=True)["url"])
    try:
        with engine.connect() as own_connection:
            run(own_connection)
    finally:
        engine.dispose()
