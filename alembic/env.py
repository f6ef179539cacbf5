"""Alembic environment for pgflow's own tables, with its own version table.

`pgflow.migrations.upgrade()` passes a connection in `config.attributes["connection"]` (and
holds the migration lock around it). Run from a checkout, `alembic upgrade head` reads the
URL from alembic.ini's `sqlalchemy.url` or from PGFLOW_URL.
"""

from __future__ import annotations

import os
from typing import Any

from alembic import context
from sqlalchemy import Connection, create_engine

from pgflow.schema import metadata

VERSION_TABLE = "pgflow_alembic_version"

config = context.config


def include_object(
    obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any
) -> bool:
    """Look only at pgflow's tables, so autogenerate never touches the application's."""
    if type_ == "table":
        return bool(name) and str(name).startswith("pgflow_") and name != VERSION_TABLE
    return True


def run_on(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        version_table=VERSION_TABLE,
        include_object=include_object,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        run_on(connection)
        return
    url = os.environ.get("PGFLOW_URL") or config.get_main_option("sqlalchemy.url")
    if not url:
        raise SystemExit("set PGFLOW_URL or sqlalchemy.url in alembic.ini")
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            run_on(conn)
    finally:
        engine.dispose()


if context.is_offline_mode():
    context.configure(
        url=os.environ.get("PGFLOW_URL") or config.get_main_option("sqlalchemy.url"),
        target_metadata=metadata,
        version_table=VERSION_TABLE,
        literal_binds=True,
    )
    with context.begin_transaction():
        context.run_migrations()
else:
    run_online()
