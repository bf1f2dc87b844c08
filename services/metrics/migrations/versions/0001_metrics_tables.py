"""The metrics history's tables, as `metadata.create_all` made them before this chain existed (a
database made so is stamped at this revision rather than created again: see `migrate`).

Revision ID: metrics_0001
Revises:
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "metrics_0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None

# Twelve latency buckets (LATENCY_BUCKETS_SECONDS when this revision was written; frozen here: a
# change of the bounds is a revision of its own).
BUCKETS = 12


def _counter(name: str) -> sa.Column:
    return sa.Column(name, sa.Integer(), nullable=False)


def _sum(name: str) -> sa.Column:
    return sa.Column(name, sa.Float(), nullable=False)


def upgrade() -> None:
    op.create_table(
        "metrics_samples",
        sa.Column("deployment_id", sa.String(length=64), nullable=False),
        sa.Column("replica_id", sa.String(length=64), nullable=False),
        sa.Column("revision_id", sa.String(length=64), nullable=False),
        _counter("resolution"),
        _counter("ts"),
        _counter("requests"),
        _counter("errors"),
        _counter("client_errors"),
        _counter("upstream_failures"),
        *(_counter(f"b{i}") for i in range(BUCKETS)),
        _sum("in_flight_sum"),
        _counter("in_flight_n"),
        _sum("cpu_sum"),
        _counter("cpu_n"),
        _sum("memory_sum"),
        _counter("memory_n"),
        _sum("gpu_sum"),
        _counter("gpu_n"),
        _sum("desired_sum"),
        _sum("ready_sum"),
        _counter("replicas_n"),
        _counter("restarts"),
    )
    op.create_index("ix_metrics_age", "metrics_samples", ["resolution", "ts"])
    op.create_index("ix_metrics_series", "metrics_samples", ["deployment_id", "resolution", "ts"])
    op.create_table(
        "metrics_versions",
        sa.Column("deployment_id", sa.String(length=64), nullable=False),
        sa.Column("spec_version", sa.Integer(), nullable=False),
        sa.Column("revision_id", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("deployment_id", "spec_version"),
    )


def downgrade() -> None:
    op.drop_table("metrics_versions")
    op.drop_index("ix_metrics_series", table_name="metrics_samples")
    op.drop_index("ix_metrics_age", table_name="metrics_samples")
    op.drop_table("metrics_samples")
