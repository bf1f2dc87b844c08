"""The spec-registry's SQL store: tables, engine creation, Alembic migrations (`migrate(url)`)."""

from libs.store.engine import create_engine, migrate, reader
from libs.store.tables import (
    DeploymentRow,
    DeploymentStatusRow,
    OutboxRow,
    ProjectRow,
    SecretNameRow,
    SpecVersionRow,
    TokenRow,
    utcnow,
)

__all__ = [
    "DeploymentRow",
    "DeploymentStatusRow",
    "OutboxRow",
    "ProjectRow",
    "SecretNameRow",
    "SpecVersionRow",
    "TokenRow",
    "create_engine",
    "migrate",
    "reader",
    "utcnow",
]
