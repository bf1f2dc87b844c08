"""Alembic environment of the metrics history's tables (services/metrics/store.py), a chain of its own
beside the registry's (libs/store/migrations): its version table is `alembic_version_metrics` and it
sees only `metrics_*` tables, so both chains may share one PostgreSQL database without touching each
other. `services.metrics.store.migrate(url)` passes an open connection; the `alembic` command line
(services/metrics/alembic.ini) can use `-x url=...` instead."""

from __future__ import annotations

from typing import Any

from libs.store.engine import run_chain
from services.metrics.store import TABLE_PREFIX, VERSION_TABLE, metadata


def _ours(name: str | None, type_: str, _: Any) -> bool:
    # The registry's tables may live in the same database: autogenerate must not offer to drop them.
    return type_ != "table" or (name or "").startswith(TABLE_PREFIX)


run_chain(metadata, _ours, VERSION_TABLE)
