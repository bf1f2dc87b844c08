"""Alembic environment of the registry store. `libs.store.migrate(url)` passes an open connection;
the `alembic` command line can use `-x url=...` instead."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection
from sqlmodel import SQLModel

import libs.store.tables  # noqa: F401 - registers the tables on SQLModel.metadata
from libs.store.engine import create_engine

target_metadata = SQLModel.metadata


def run_migrations(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=True,  # SQLite can only ALTER tables by copying them
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = context.config.attributes.get("connection")
if connection is not None:
    run_migrations(connection)
else:
    engine = create_engine(context.get_x_argument(as_dictionary=True)["url"])
    with engine.connect() as own_connection:
        run_migrations(own_connection)
    engine.dispose()
