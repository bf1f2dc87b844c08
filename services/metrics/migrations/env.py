"""Alembic environment of the metrics history's tables (services/metrics/store.py), a chain of its own
beside the registry's (libs/store/migrations): its version table is `alembic_version_metrics` and it
sees only `metrics_*` tables, so both chains may share one PostgreSQL database without touching each
other. `services.metrics.store.migrate(url)` passes an open connection; the `alembic` command line
(services/metrics/alembic.ini) can use `-x url=...` instead."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import context
from sqlalchemy import Connection

from services.metrics.store import TABLE_PREFIX, VERSION_TABLE, metadata

target_metadata = metadata


def _ours(name: str | None, type_: str, _: Any) -> bool:
    # The registry's tables may live in the same database: autogenerate must not offer to drop them.
    return type_ != "table" or (name or "").startswith(TABLE_PREFIX)


def run_migrations(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        version_table=VERSION_TABLE,
        include_name=_ours,
        render_as_batch=True,  # SQLite can only ALTER tables by copying them
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = context.config.attributes.get("connection")
if connection is not None:
    run_migrations(connection)
else:
    engine = sa.create_engine(context.get_x_argument(as_dictionary=True)["url"])
    with engine.connect() as own_connection:
        run_migrations(own_connection)
    engine.dispose()
