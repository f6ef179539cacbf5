"""Throw-away PostgreSQL databases, so a benchmark never touches data it did not create."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from typing import Any

from benchmarks.harness import Skip

DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
#: Seconds to keep trying to drop a benchmark database before giving up loudly.
DROP_PATIENCE = 60.0


def _connect(admin_url: str) -> Any:
    try:
        import psycopg
    except ImportError as exc:
        raise Skip("psycopg not installed (pip install 'pgflow[postgres]')") from exc
    try:
        return psycopg.connect(admin_url, autocommit=True, connect_timeout=3)
    except psycopg.Error as exc:
        raise Skip(f"PostgreSQL unreachable at {_where(admin_url)} ({_reason(exc)})") from exc


def _reason(exc: Exception) -> str:
    """The server's own words, without psycopg's "connection to server at ... failed:" prefix."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text.rsplit("failed: ", 1)[-1].strip()


def _where(admin_url: str) -> str:
    return admin_url.rsplit("@", 1)[-1].split("/", 1)[0]


@cache
def server_version(admin_url: str) -> str:
    """The server's version string for the header, or why there is none."""
    try:
        with _connect(admin_url) as conn:
            row = conn.execute("SHOW server_version").fetchone()
            return f"PostgreSQL {row[0]}" if row else "unknown"
    except Skip as skip:
        return f"unavailable: {skip}"


@contextmanager
def temporary_database(admin_url: str) -> Iterator[str]:
    """Create `pgflow_bench_<random>`, yield its URL, drop it (forcing connections off)."""
    from psycopg import sql

    name = f"pgflow_bench_{secrets.token_hex(6)}"
    with _connect(admin_url) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield admin_url.rsplit("/", 1)[0] + "/" + name
    finally:
        _drop(admin_url, name)


def _drop(admin_url: str, name: str) -> None:
    """Drop the database, retrying while the server refuses connections (it may be busy)."""
    from psycopg import sql

    statement = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
    deadline = time.monotonic() + DROP_PATIENCE
    while True:
        try:
            with _connect(admin_url) as conn:
                conn.execute(statement)
            return
        except Skip as exc:
            if time.monotonic() > deadline:
                raise RuntimeError(f"could not drop benchmark database {name}: {exc}") from exc
            time.sleep(0.5)
