"""Fresh backends for a benchmark: memory, a temp SQLite file, or a throw-away PG database."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

from benchmarks.harness import RunContext, require
from benchmarks.postgres import temporary_database

Kind = Literal["memory", "sqlite", "postgres"]

_CLASSES: dict[Kind, tuple[str, str]] = {
    "memory": ("pgflow_backends.memory", "InMemoryBackend"),
    "sqlite": ("pgflow_backends.sqlite", "SQLiteBackend"),
    "postgres": ("pgflow_backends.postgres", "PostgresBackend"),
}


@dataclass(frozen=True)
class Opened:
    """A migrated backend and the URL other processes can open the same storage with."""

    backend: Any
    url: str


@contextmanager
def _storage_url(kind: Kind, ctx: RunContext) -> Iterator[str]:
    if kind == "postgres":
        with temporary_database(ctx.postgres_admin_url) as url:
            yield url
    elif kind == "sqlite":
        yield f"sqlite:///{ctx.workdir / f'bench-{secrets.token_hex(4)}.db'}"
    else:
        yield "memory://"


@contextmanager
def open_backend(kind: Kind, ctx: RunContext) -> Iterator[Opened]:
    """Yield a new, empty, migrated backend of `kind`; close (and drop) it afterwards."""
    backend_class = require(*_CLASSES[kind])
    with _storage_url(kind, ctx) as url:
        backend = backend_class() if kind == "memory" else backend_class(url)
        try:
            backend.migrate()
            yield Opened(backend, url)
        finally:
            backend.close()
