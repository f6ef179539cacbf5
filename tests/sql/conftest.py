"""Fixtures for the SQL backend tests: opened, migrated SQLite and PostgreSQL backends."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pgflow_backends.postgres import PostgresBackend
from pgflow_backends.sqlite import SQLiteBackend

HERE = Path(__file__).resolve().parent


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


def run_helpers(script: str, args_list: list[list[str]], timeout: float = 60) -> list[str]:
    """Start one process per argument list at once; return their stdouts (fail on error)."""
    procs = [
        subprocess.Popen(
            [sys.executable, str(HERE / script), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for args in args_list
    ]
    outputs: list[str] = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=timeout)
            assert proc.returncode == 0, f"{script} failed ({proc.returncode}): {err}"
            outputs.append(out)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return outputs
