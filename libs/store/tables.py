"""The registry's SQL tables (sqlmodel). Only the spec-registry writes them.

Timestamps are stored in UTC; `UTCDateTime` gives them back timezone-aware on SQLite too (which keeps
no zone). JSON columns hold the spec as submitted and event payloads.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from libs.events import utcnow


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        return None if value is None else value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)




def _created_at() -> Any:
    return Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)


class ProjectRow(SQLModel, table=True):
    __tablename__ = "projects"

    name: str = Field(primary_key=True, max_length=63)
    created_at: datetime = _created_at()


class TokenRow(SQLModel, table=True):
    """An API token; only its SHA-256 hex digest is kept."""

    __tablename__ = "tokens"

    id: int | None = Field(default=None, primary_key=True)
    project: str = Field(foreign_key="projects.name", index=True, max_length=63)
    token_hash: str = Field(unique=True, max_length=64)
    is_admin: bool = False
    created_at: datetime = _created_at()


class DeploymentRow(SQLModel, table=True):
    """A deployment and a pointer to its current spec version. Deleting removes the row (and its
    history), so the name can be used again."""

    __tablename__ = "deployments"
    __table_args__ = (
        sa.UniqueConstraint("project", "name", name="uq_deployments_project_name"),
        sa.UniqueConstraint("project", "slug", name="uq_deployments_project_slug"),
    )

    id: str = Field(primary_key=True, max_length=32)
    project: str = Field(foreign_key="projects.name", max_length=63)
    name: str = Field(max_length=200)
    slug: str = Field(max_length=63)
    environment: str = Field(index=True, max_length=32)
    spec_id: str = Field(max_length=32)
    spec_version: int
    created_at: datetime = _created_at()
    updated_at: datetime = _created_at()
    # The user's last `scale` (not a spec version): how many replicas, and the spec version and its
    # `resources.replicas` it was made against. It holds while the current spec keeps that count;
    # NULL when the user never scaled, or a spec with another count superseded the decision.
    scale_replicas: int | None = None
    scale_spec_version: int | None = None
    scale_spec_replicas: int | None = None
    scaled_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class SpecVersionRow(SQLModel, table=True):
    """One accepted spec of a deployment; (deployment_id, version) is unique, which also makes two
    concurrent updates based on the same version fail instead of both succeeding."""

    __tablename__ = "spec_versions"
    __table_args__ = (sa.UniqueConstraint("deployment_id", "version", name="uq_spec_versions_deployment_version"),)

    spec_id: str = Field(primary_key=True, max_length=32)
    deployment_id: str = Field(foreign_key="deployments.id", ondelete="CASCADE", index=True, max_length=32)
    version: int
    spec: dict[str, Any] = Field(sa_type=sa.JSON, nullable=False)
    created_at: datetime = _created_at()
    # The id of the token whose request created the version (NULL: before 0006). Not a foreign key:
    # the history outlives a revoked token.
    created_by: int | None = None
    # Set once when the scheduler rolled this version back by itself (0007): history shows it.
    rolled_back_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    rolled_back_reason: str | None = None


class AliasRow(SQLModel, table=True):
    """A named pointer at one spec version of a deployment (`staging` -> 7); reached at
    `/<project>/<deployment>@<alias>/` (0006)."""

    __tablename__ = "aliases"

    deployment_id: str = Field(primary_key=True, foreign_key="deployments.id", ondelete="CASCADE", max_length=32)
    name: str = Field(primary_key=True, max_length=63)
    spec_version: int
    updated_at: datetime = _created_at()


class DeploymentStatusRow(SQLModel, table=True):
    """Read model: the newest DeploymentStatusChanged of each deployment."""

    __tablename__ = "deployment_status"

    deployment_id: str = Field(primary_key=True, foreign_key="deployments.id", ondelete="CASCADE", max_length=32)
    occurred_at: datetime = Field(sa_type=UTCDateTime, nullable=False)
    status: dict[str, Any] = Field(sa_type=sa.JSON, nullable=False)


class OutboxRow(SQLModel, table=True):
    """An event committed with the change it reports; the relay publishes it and sets published_at.
    `headers` holds the trace context (W3C traceparent, ...) of the request that made the change, so
    the publish, later and maybe after a restart, continues that trace; NULL in rows from before 0002."""

    __tablename__ = "outbox"

    id: int | None = Field(default=None, primary_key=True)
    msg_id: str = Field(unique=True, max_length=64)
    subject: str = Field(max_length=255)
    payload: dict[str, Any] = Field(sa_type=sa.JSON, nullable=False)
    headers: dict[str, str] | None = Field(default=None, sa_type=sa.JSON, nullable=True)
    created_at: datetime = _created_at()
    published_at: datetime | None = Field(default=None, sa_type=UTCDateTime, index=True)
    # Set when the event cannot be published at all (too large for the bus, not an event any more):
    # the relay passes over it so the events after it flow, and health reports it (0003).
    set_aside_at: datetime | None = Field(default=None, sa_type=UTCDateTime, index=True)
    set_aside_reason: str | None = Field(default=None, max_length=500)


class SecretNameRow(SQLModel, table=True):
    """The name of a project secret; its value is in the JetStream KV bucket, never here. The
    registry looks names up here (an indexed read) instead of listing the bucket's keys, which costs
    a JetStream consumer per lookup (0004)."""

    __tablename__ = "secret_names"

    project: str = Field(primary_key=True, foreign_key="projects.name", max_length=63)
    name: str = Field(primary_key=True, max_length=128)
    created_at: datetime = _created_at()


class WebhookRow(SQLModel, table=True):
    """A project's webhook for alert transitions: where to POST them, and a `secret:<name>` reference to
    the key that signs them (the key itself is a sealed project secret, never here) (0008)."""

    __tablename__ = "webhooks"

    project: str = Field(primary_key=True, foreign_key="projects.name", max_length=63)
    url: str = Field(primary_key=True, max_length=2048)
    secret: str = Field(max_length=136)
    created_at: datetime = _created_at()
    updated_at: datetime = _created_at()
