"""Upgrade pgflow's schema to head with Alembic, from a checkout or an installed wheel.

pgflow keeps its own version table (`pgflow_alembic_version`), so an application that manages
its own tables with Alembic keeps its `alembic_version` untouched. Upgrades hold a lock (an
advisory lock on PostgreSQL, an immediate transaction on SQLite), so several processes that
start at once against a fresh database migrate it exactly once.
"""

from __future__ import annotations

import contextlib
import importlib.resources
import logging
from collections.abc import Iterator
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, text

from pgflow.errors import BackendError, SchemaError
from pgflow.schema import VERSION_TABLE

__all__ = [
    "VERSION_TABLE",
    "check_schema",
    "current_revision",
    "head_revision",
    "script_location",
    "upgrade",
]

#: Key of the PostgreSQL advisory lock held while migrating ("pgflow" in ASCII).
_PG_LOCK_KEY = 0x7067666C6F77

logger = logging.getLogger("pgflow.migrations")


def script_location() -> Path:
    """The Alembic script folder: pgflow/_alembic in a wheel, else the checkout's alembic/."""
    packaged = importlib.resources.files("pgflow") / "_alembic"
    if packaged.is_dir() and (packaged / "env.py").is_file():
        return Path(str(packaged))
    checkout = Path(__file__).resolve().parent.parent / "alembic"
    if (checkout / "env.py").is_file():
        return checkout
    raise BackendError(
        "pgflow's migration scripts are missing (neither pgflow/_alembic nor ../alembic "
        "exists): reinstall pgflow"
    )


def _config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(script_location()))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    """The newest revision this pgflow ships."""
    head = ScriptDirectory.from_config(_config()).get_current_head()
    if head is None:
        raise BackendError("pgflow's migration scripts hold no revision: reinstall pgflow")
    return head


@contextlib.contextmanager
def _connection(bind: Engine | Connection) -> Iterator[Connection]:
    if isinstance(bind, Connection):
        yield bind
    else:
        with bind.connect() as connection:
            yield connection


def current_revision(bind: Engine | Connection) -> str | None:
    """The revision recorded in `pgflow_alembic_version`, or None when never migrated."""
    with _connection(bind) as connection:
        context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
        revision = context.get_current_revision()
        if not isinstance(bind, Connection):
            connection.rollback()
        return revision


def _lock(connection: Connection) -> None:
    """Serialise migrations across processes for the rest of the current transaction."""
    name = connection.dialect.name
    if name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
    elif name == "sqlite":
        dbapi = connection.connection.driver_connection
        if dbapi is not None and not getattr(dbapi, "in_transaction", True):
            connection.exec_driver_sql("BEGIN IMMEDIATE")


def upgrade(bind: Engine | Connection, revision: str = "head") -> None:
    """Upgrade pgflow's tables to `revision` (head by default); idempotent and concurrent-safe.

    Given a Connection already in a transaction, the upgrade joins it and the caller commits;
    otherwise pgflow opens, locks and commits its own transaction.
    """
    with _connection(bind) as connection:
        own = not connection.in_transaction()
        if own:
            connection.begin()
        try:
            _lock(connection)
            before = MigrationContext.configure(
                connection, opts={"version_table": VERSION_TABLE}
            ).get_current_revision()
            command.upgrade(_config(connection), revision)
            if own:
                connection.commit()
        except BaseException:
            if own:
                connection.rollback()
            raise
    logger.info(
        "pgflow schema at %s", revision, extra={"from_revision": before, "to_revision": revision}
    )


def check_schema(bind: Engine | Connection, url: str) -> None:
    """Raise SchemaError saying what to do unless the schema is exactly at head.

    `url` is the masked URL to name in the message.
    """
    current = current_revision(bind)
    head = head_revision()
    fix = f"run `pgflow migrate --url {url}` or app.migrate()"
    if current is None:
        raise SchemaError(f"schema not migrated in {url}: {fix}")
    if current == head:
        return
    scripts = ScriptDirectory.from_config(_config())
    try:
        known = scripts.get_revision(current) is not None
    except Exception:
        known = False
    if known:
        raise SchemaError(
            f"schema is older than this pgflow (rev {current}, need {head}) in {url}: {fix}"
        )
    raise SchemaError(
        f"schema is newer than this pgflow (rev {current}, this pgflow knows up to {head}) "
        f"in {url}: upgrade pgflow"
    )
