"""The spec-registry's SQL store: tables, engine creation, Alembic migrations (`migrate(url)`)."""

from libs.store.engine import create_engine, migrate, reader
from libs.store.tables import (
    AliasRow,
    DeploymentRow,
    DeploymentStatusRow,
    OutboxRow,
    ProjectRow,
    SecretNameRow,
    SpecVersionRow,
    TokenRow,
    WebhookRow,
    utcnow,
)

__all__ = [
    "AliasRow",
    "DeploymentRow",
    "DeploymentStatusRow",
    "OutboxRow",
    "ProjectRow",
    "SecretNameRow",
    "SpecVersionRow",
    "TokenRow",
    "WebhookRow",
    "create_engine",
    "migrate",
    "reader",
    "utcnow",
]
