"""The metrics history's tables (SQLAlchemy Core): SQLite under the data directory on the embedded
default, PostgreSQL (or any SQLAlchemy URL) through `BERTH_METRICS_DATABASE_URL` in production.

A row is a *partial aggregate* of one series over one slot: counters (requests, errors, per-bucket
latency counts) and, for gauges, a sum and a number of samples. Rows of the same series and slot add
up, so a report that arrives late (after its slot was written) is simply one more row: every read
sums the rows it finds. Two resolutions: `raw` (`resolution_seconds`, 10 s by default, kept 24 h) and
`downsampled` (`downsampled_step_seconds`, 5 min, kept 30 days), made from raw rows by a timer.

`replica_id` "" is the whole deployment (what the router saw, including requests no replica
answered); other rows are one replica, and carry its revision (what `?version=` selects).

The schema is migrated with Alembic, on a chain of its own (services/metrics/migrations, version
table `alembic_version_metrics`): `open_store` upgrades it to head before the service uses it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Column,
    Connection,
    Engine,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    create_engine,
    delete,
    event,
    func,
    insert,
    inspect,
    literal,
    select,
)

from libs.events import LATENCY_BUCKETS_SECONDS
from libs.store.engine import upgrade

MIGRATIONS = Path(__file__).parent / "migrations"
VERSION_TABLE = "alembic_version_metrics"  # not the registry's `alembic_version`: the chains are apart
TABLE_PREFIX = "metrics_"  # every table of this chain; nothing else is its to create or drop
BEFORE_ALEMBIC = "metrics_0001"  # the schema `metadata.create_all` made before there was a chain

RAW, DOWNSAMPLED = 0, 1
_BUCKETS = len(LATENCY_BUCKETS_SECONDS)

metadata = MetaData()
samples = Table(
    "metrics_samples",
    metadata,
    Column("deployment_id", String(64), nullable=False),
    Column("replica_id", String(64), nullable=False),  # "": the whole deployment
    Column("revision_id", String(64), nullable=False),
    Column("resolution", Integer, nullable=False),  # RAW or DOWNSAMPLED
    Column("ts", Integer, nullable=False),  # unix seconds of the slot's start
    Column("requests", Integer, nullable=False, default=0),
    Column("errors", Integer, nullable=False, default=0),
    Column("client_errors", Integer, nullable=False, default=0),
    Column("upstream_failures", Integer, nullable=False, default=0),
    # Latency counts per LATENCY_BUCKETS_SECONDS bound, a column each: sums over any span are SQL.
    *(Column(f"b{i}", Integer, nullable=False, default=0) for i in range(_BUCKETS)),
    Column("in_flight_sum", Float, nullable=False, default=0.0),
    Column("in_flight_n", Integer, nullable=False, default=0),
    Column("cpu_sum", Float, nullable=False, default=0.0),
    Column("cpu_n", Integer, nullable=False, default=0),
    Column("memory_sum", Float, nullable=False, default=0.0),
    Column("memory_n", Integer, nullable=False, default=0),
    Column("gpu_sum", Float, nullable=False, default=0.0),
    Column("gpu_n", Integer, nullable=False, default=0),
    Column("desired_sum", Float, nullable=False, default=0.0),
    Column("ready_sum", Float, nullable=False, default=0.0),
    Column("replicas_n", Integer, nullable=False, default=0),  # samples of desired/ready
    Column("restarts", Integer, nullable=False, default=0),
    Index("ix_metrics_series", "deployment_id", "resolution", "ts"),
    Index("ix_metrics_age", "resolution", "ts"),  # retention deletes by age across deployments
)
# spec version -> the revision that runs it, from the scheduler's traffic assignments (for ?version=)
versions = Table(
    "metrics_versions",
    metadata,
    Column("deployment_id", String(64), primary_key=True),
    Column("spec_version", Integer, primary_key=True),
    Column("revision_id", String(64), nullable=False),
)


@dataclass
class Slot:
    """Aggregates of one series (a deployment, or one of its replicas) over one slot."""

    requests: int = 0
    errors: int = 0
    client_errors: int = 0
    upstream_failures: int = 0
    buckets: list[int] = field(default_factory=lambda: [0] * _BUCKETS)
    in_flight_sum: float = 0.0
    in_flight_n: int = 0
    cpu_sum: float = 0.0
    cpu_n: int = 0
    memory_sum: float = 0.0
    memory_n: int = 0
    gpu_sum: float = 0.0
    gpu_n: int = 0
    desired_sum: float = 0.0
    ready_sum: float = 0.0
    replicas_n: int = 0
    restarts: int = 0
    # In memory only, while the slot is open: each router reporter's in-flight sum and count, so that
    # in_flight_sum is the sum over reporters of their mean (in_flight_n 1) however many report.
    in_flight_by: dict[str, tuple[float, int]] = field(default_factory=dict, repr=False, compare=False)

    def add(self, other: Slot) -> None:
        for name in _NUMERIC:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.buckets = [a + b for a, b in zip(self.buckets, other.buckets, strict=True)]

    def row(self) -> dict[str, Any]:
        values = {name: getattr(self, name) for name in _NUMERIC}
        values.update(zip(_BUCKET_COLUMNS, self.buckets, strict=True))
        return values

    @classmethod
    def from_row(cls, row: Any) -> Slot:
        mapping = row._mapping
        return cls(**{name: mapping[name] for name in _NUMERIC}, buckets=[mapping[b] for b in _BUCKET_COLUMNS])


_NUMERIC = tuple(f.name for f in fields(Slot) if f.name not in ("buckets", "in_flight_by"))
_BUCKET_COLUMNS = tuple(f"b{i}" for i in range(_BUCKETS))
_SUMMED = (*_NUMERIC, *_BUCKET_COLUMNS)


@dataclass(frozen=True)
class SeriesKey:
    deployment_id: str
    replica_id: str  # "": the whole deployment
    revision_id: str = ""


@dataclass(frozen=True)
class StoredSlot:
    key: SeriesKey
    ts: int
    slot: Slot


def database_url(url: str | None, shared: str | None, data_dir: Path) -> str:
    """Where the history lies: `url` if set; else the production database (`shared`, e.g. the
    PostgreSQL the registry uses: the tables are metrics_*, on a chain of their own); else a SQLite
    file of its own, so that on the embedded default its writes never contend with the registry's."""
    if url or shared:
        return url or shared  # type: ignore[return-value]
    data_dir.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(data_dir / 'metrics.db').resolve()}"


def migrate(url: str) -> None:
    """Upgrade the metrics tables at `url` to the newest revision shipped in this package."""
    upgrade(url, MIGRATIONS, adopt=_made_by_create_all)


def _made_by_create_all(connection: Connection) -> str | None:
    """The first revision, for tables an earlier berth made with create_all (kept as they are)."""
    tables = set(inspect(connection).get_table_names())
    return BEFORE_ALEMBIC if samples.name in tables and VERSION_TABLE not in tables else None


def open_store(url: str) -> Engine:
    """The engine of the metrics tables at `url`, migrated to head first."""
    migrate(url)
    engine = create_engine(url)
    if engine.dialect.name == "sqlite":

        @event.listens_for(engine, "connect")
        def _pragmas(connection: Any, _: Any) -> None:  # WAL: queries read while the timer writes
            cursor = connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()
    return engine


class Store:
    """Writes, reads, downsamples and expires the metrics rows."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def write(self, rows: Iterable[StoredSlot], resolution: int = RAW) -> int:
        values = [
            {"deployment_id": s.key.deployment_id, "replica_id": s.key.replica_id,
             "revision_id": s.key.revision_id, "resolution": resolution, "ts": s.ts, **s.slot.row()}
            for s in rows
        ]  # fmt: skip
        if values:
            with self.engine.begin() as connection:
                connection.execute(insert(samples), values)
        return len(values)

    def read(self, deployment_id: str, resolution: int, start: int, end: int) -> list[StoredSlot]:
        """Rows of a deployment (every series) with start <= ts < end."""
        query = select(samples).where(
            samples.c.deployment_id == deployment_id, samples.c.resolution == resolution,
            samples.c.ts >= start, samples.c.ts < end,
        )  # fmt: skip
        with self.engine.connect() as connection:
            return [
                StoredSlot(SeriesKey(r.deployment_id, r.replica_id, r.revision_id), r.ts, Slot.from_row(r))
                for r in connection.execute(query)
            ]

    def read_steps(self, deployment_id: str, resolution: int, start: int, end: int, step: int) -> list[StoredSlot]:
        """The rows of [start, end) summed in the database per series and step; `ts` is the step's
        index from `start`. A day at 1-minute steps is 1,440 rows a series, whatever the resolution."""
        index = ((samples.c.ts - start) // step).label("ts")
        query = (
            select(samples.c.replica_id, samples.c.revision_id, index,
                   *(func.sum(samples.c[name]).label(name) for name in _SUMMED))
            .where(samples.c.deployment_id == deployment_id, samples.c.resolution == resolution,
                   samples.c.ts >= start, samples.c.ts < end)
            .group_by(samples.c.replica_id, samples.c.revision_id, index)
        )  # fmt: skip
        with self.engine.connect() as connection:
            return [
                StoredSlot(SeriesKey(deployment_id, r.replica_id, r.revision_id), r.ts, Slot.from_row(r))
                for r in connection.execute(query)
            ]

    def downsample(self, start: int, end: int, step: int) -> int:
        """Add downsampled rows for [start, end) (whole steps) from the raw rows, in one statement."""
        bucket = (samples.c.ts - samples.c.ts % step).label("ts")
        rows = (
            select(samples.c.deployment_id, samples.c.replica_id, samples.c.revision_id,
                   literal(DOWNSAMPLED).label("resolution"), bucket,
                   *(func.sum(samples.c[name]).label(name) for name in _SUMMED))
            .where(samples.c.resolution == RAW, samples.c.ts >= start, samples.c.ts < end)
            .group_by(samples.c.deployment_id, samples.c.replica_id, samples.c.revision_id, bucket)
        )  # fmt: skip
        columns = ["deployment_id", "replica_id", "revision_id", "resolution", "ts", *_SUMMED]
        with self.engine.begin() as connection:
            return connection.execute(insert(samples).from_select(columns, rows)).rowcount or 0

    def last_downsampled(self) -> int | None:
        """The start of the newest downsampled step (where the downsampling timer goes on from)."""
        query = select(func.max(samples.c.ts)).where(samples.c.resolution == DOWNSAMPLED)
        with self.engine.connect() as connection:
            return connection.execute(query).scalar()

    def expire(self, resolution: int, before: int) -> int:
        with self.engine.begin() as connection:
            result = connection.execute(
                delete(samples).where(samples.c.resolution == resolution, samples.c.ts < before)
            )
            return result.rowcount or 0

    def forget(self, deployment_id: str) -> None:
        """A deleted deployment's history goes with it."""
        with self.engine.begin() as connection:
            connection.execute(delete(samples).where(samples.c.deployment_id == deployment_id))
            connection.execute(delete(versions).where(versions.c.deployment_id == deployment_id))

    def save_versions(self, deployment_id: str, revisions: dict[int, str]) -> None:
        if not revisions:
            return
        with self.engine.begin() as connection:
            known = {
                row.spec_version: row.revision_id
                for row in connection.execute(select(versions).where(versions.c.deployment_id == deployment_id))
            }
            for version, revision in revisions.items():
                if version not in known:
                    connection.execute(
                        insert(versions).values(deployment_id=deployment_id, spec_version=version, revision_id=revision)
                    )

    def revision_of(self, deployment_id: str, version: int) -> str | None:
        query = select(versions.c.revision_id).where(
            versions.c.deployment_id == deployment_id, versions.c.spec_version == version
        )
        with self.engine.connect() as connection:
            return connection.execute(query).scalar()


def merge(slots: Sequence[Slot]) -> Slot:
    total = Slot()
    for slot in slots:
        total.add(slot)
    return total
