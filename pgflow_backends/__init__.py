"""Storage adapters for pgflow: in-memory, SQLite and PostgreSQL.

The backend classes load on first attribute access (PEP 562), so importing this package never
imports psycopg or any driver that the chosen backend does not need.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pgflow_backends.memory import InMemoryBackend
    from pgflow_backends.postgres import PostgresBackend
    from pgflow_backends.sqlite import SQLiteBackend

# name -> module that defines it
_LAZY = {
    "InMemoryBackend": "pgflow_backends.memory",
    "SQLiteBackend": "pgflow_backends.sqlite",
    "PostgresBackend": "pgflow_backends.postgres",
}


def __getattr__(name: str) -> Any:
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'pgflow_backends' has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


__all__ = ["InMemoryBackend", "PostgresBackend", "SQLiteBackend"]
