"""The spec-registry's SQL store: tables, engine creation, Alembic migrations (`migrate(url)`)."""

from libs.store.engine import Store, create_engine, migrate, open_store, reader
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
    "Store",
    "SpecVersionRow",
    "TokenRow",
    "WebhookRow",
    "create_engine",
    "migrate",
    "open_store",
    "reader",
    "utcnow",
]
