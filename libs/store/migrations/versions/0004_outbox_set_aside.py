"""Outbox rows that cannot be published are set aside (`set_aside_at`, `set_aside_reason`) so the
rows after them flow.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("outbox") as batch:
        batch.add_column(sa.Column("set_aside_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("set_aside_reason", sa.String(length=500), nullable=True))
        batch.create_index("ix_outbox_set_aside_at", ["set_aside_at"])


def downgrade() -> None:
    with op.batch_alter_table("outbox") as batch:
        batch.drop_index("ix_outbox_set_aside_at")
        batch.drop_column("set_aside_reason")
        batch.drop_column("set_aside_at")
