"""Automatic rollbacks in history: when and why the scheduler rolled a spec version back by itself.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("spec_versions") as batch:
        batch.add_column(sa.Column("rolled_back_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("rolled_back_reason", sa.String(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("spec_versions") as batch:
        batch.drop_column("rolled_back_reason")
        batch.drop_column("rolled_back_at")
