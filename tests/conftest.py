"""Shared fixtures: a fresh backend of each kind, and URLs of fresh SQLite/PostgreSQL databases.

PostgreSQL tests need the local server (127.0.0.1:5432, user postgres, trust auth). Outside CI
they are skipped with a reason when it is down; with CI=true they must run, so the session
tries to start the local cluster and fails loudly if it still cannot connect.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

PG_HOST = "127.0.0.1"
PG_PORT = 5432
PG_ADMIN_URL = f"postgresql://postgres@{PG_HOST}:{PG_PORT}/postgres"


def _pg_reachable() -> str | None:
    """None when the server accepts a connection, else why not."""
    try:
        import psycopg
    except ImportError as exc:
        return f"psycopg is not installed ({exc}); pip install -e '.[dev]'"
    try:
        with psycopg.connect(PG_ADMIN_URL, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        return f"PostgreSQL at {PG_HOST}:{PG_PORT} is not reachable: {exc}"
    return None


def _start_local_cluster() -> None:
    """Start the Debian-packaged cluster (CI only); errors surface through the re-check."""
    versions = sorted(os.listdir("/etc/postgresql")) if os.path.isdir("/etc/postgresql") else []
    for version in versions:
        subprocess.run(
            ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "start"],
            check=False,
            capture_output=True,
            timeout=60,
        )


@pytest.fixture(scope="session")
def postgres_server() -> str:
    """The admin URL of a reachable PostgreSQL server; skips (or, under CI, fails) otherwise."""
    problem = _pg_reachable()
    if problem is None:
        return PG_ADMIN_URL
    if os.environ.get("CI") != "true":
        pytest.skip(f"{problem} (set CI=true to make this a failure)")
    _start_local_cluster()
    deadline = time.monotonic() + 20
    while problem is not None and time.monotonic() < deadline:
        time.sleep(0.5)
        problem = _pg_reachable()
    if problem is not None:
        pytest.fail(f"CI=true but PostgreSQL could not be started: {problem}", pytrace=False)
    return PG_ADMIN_URL


@pytest.fixture
def postgres_url(postgres_server: str) -> Iterator[str]:
    """The URL of a fresh, empty database (pgflow_test_<random>), dropped after the test."""
    import psycopg
    from psycopg import sql

    name = f"pgflow_test_{secrets.token_hex(6)}"
    with psycopg.connect(postgres_server, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield f"postgresql://postgres@{PG_HOST}:{PG_PORT}/{name}"
    finally:
        with psycopg.connect(postgres_server, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@pytest.fixture(scope="session")
def shared_postgres_url(postgres_server: str) -> Iterator[str]:
    """One migrated database for the whole session; `backend` empties it before each test.

    Creating and migrating a database per test cost about a second each; TRUNCATE costs
    milliseconds and gives the same clean slate (identities restart too).
    """
    import psycopg
    from psycopg import sql

    from pgflow_backends.postgres import PostgresBackend

    name = f"pgflow_test_shared_{secrets.token_hex(4)}"
    with psycopg.connect(postgres_server, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = f"postgresql://postgres@{PG_HOST}:{PG_PORT}/{name}"
    try:
        migrating = PostgresBackend(url)
        migrating.migrate()
        migrating.close()
        yield url
    finally:
        with psycopg.connect(postgres_server, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def _empty_pgflow_tables(url: str) -> None:
    """Remove every row of every pgflow_ table (but the migration version) in one statement."""
    import psycopg
    from psycopg import sql

    from pgflow.schema import metadata

    tables = [sql.Identifier(name) for name in sorted(metadata.tables)]
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("TRUNCATE {} RESTART IDENTITY CASCADE").format(sql.SQL(", ").join(tables))
        )


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """The URL of a database file in this test's temporary directory."""
    return f"sqlite:///{tmp_path}/pgflow.db"


@pytest.fixture(
    params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)],
)
def backend(request: pytest.FixtureRequest) -> Iterator[Any]:
    """A fresh, migrated backend of each kind; closed after the test."""
    kind = request.param
    if kind == "memory":
        from pgflow_backends.memory import InMemoryBackend

        opened: Any = InMemoryBackend()
    elif kind == "sqlite":
        from pgflow_backends.sqlite import SQLiteBackend

        opened = SQLiteBackend(request.getfixturevalue("sqlite_url"))
    else:
        from pgflow_backends.postgres import PostgresBackend

        url = request.getfixturevalue("shared_postgres_url")
        _empty_pgflow_tables(url)
        opened = PostgresBackend(url)
    try:
        opened.migrate()
        yield opened
    finally:
        opened.close()


@pytest.fixture
def backend_kind(backend: Any, request: pytest.FixtureRequest) -> str:
    """ "memory", "sqlite" or "postgres": for the few tests that differ by kind."""
    kind: str = request.node.callspec.params["backend"]
    return kind
