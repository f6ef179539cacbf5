"""Fixtures for the SQL backend tests: opened, migrated SQLite and PostgreSQL backends."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pgflow_backends.postgres import PostgresBackend
from pgflow_backends.sql.base import SQLBackend
from pgflow_backends.sqlite import SQLiteBackend


@pytest.fixture
def sqlite_backend(sqlite_url: str) -> Iterator[SQLiteBackend]:
    backend = SQLiteBackend(sqlite_url)
    backend.migrate()
    try:
        yield backend
    finally:
        backend.close()


@pytest.fixture
def pg_backend(postgres_url: str) -> Iterator[PostgresBackend]:
    backend = PostgresBackend(postgres_url)
    backend.migrate()
    try:
        yield backend
    finally:
        backend.close()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def sql_url(request: pytest.FixtureRequest) -> str:
    """The URL of a fresh SQLite file or PostgreSQL database (not migrated)."""
    name = "sqlite_url" if request.param == "sqlite" else "postgres_url"
    url: str = request.getfixturevalue(name)
    return url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def sql_backend(request: pytest.FixtureRequest) -> SQLBackend:
    """A migrated SQLite and PostgreSQL backend in turn."""
    name = "sqlite_backend" if request.param == "sqlite" else "pg_backend"
    backend: SQLBackend = request.getfixturevalue(name)
    return backend
