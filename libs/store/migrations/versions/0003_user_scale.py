"""Deployments keep the user's scale decision (a scale is not a spec version any more).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None

COLUMNS = ("scale_replicas", "scale_spec_version", "scale_spec_replicas")


def upgrade() -> None:
    with op.batch_alter_table("deployments") as batch:
        for name in COLUMNS:
            batch.add_column(sa.Column(name, sa.Integer(), nullable=True))
        batch.add_column(sa.Column("scaled_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("deployments") as batch:
        for name in (*COLUMNS, "scaled_at"):
            batch.drop_column(name)
