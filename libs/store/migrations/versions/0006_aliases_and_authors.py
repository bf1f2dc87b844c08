"""Aliases of deployments (named pointers at spec versions), and which token created each spec version.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "aliases",
        sa.Column("deployment_id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("spec_version", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["deployment_id"], ["deployments.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("deployment_id", "name"),
    )
    with op.batch_alter_table("spec_versions") as batch:
        batch.add_column(sa.Column("created_by", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("spec_versions") as batch:
        batch.drop_column("created_by")
    op.drop_table("aliases")
