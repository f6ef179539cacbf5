"""SQL expressions that differ by dialect, so one Core statement serves both databases.

Time: every due, stale and age comparison uses `db_now()`, so the workers' clocks never
matter: PostgreSQL uses `now()` (the transaction's time), SQLite `julianday('now')` turned
into epoch seconds, which is how `pgflow.schema.UTCDateTime` stores times there.
JSON: `as_json()` binds text pgflow already encoded; `json_append()` and `cancel_flag()`
work inside the database, so a write about a job never reads its JSON columns back.
Commits: `relaxed_commit()`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, Float, String, bindparam
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import BindParameter, ColumnElement
from sqlalchemy.sql.functions import FunctionElement

from pgflow.schema import UTCDateTime

__all__ = [
    "as_json",
    "cancel_flag",
    "db_now",
    "db_now_plus",
    "generic_plans",
    "json_append",
    "relaxed_commit",
]

_SQLITE_NOW = "((julianday('now') - 2440587.5) * 86400.0)"


class db_now(FunctionElement[datetime]):
    """The database's current time (PostgreSQL: the transaction's `now()`)."""

    type = UTCDateTime()
    inherit_cache = True
    name = "db_now"


class db_now_plus(FunctionElement[datetime]):
    """The database's now plus a number of seconds (negative for the past); NULL stays NULL."""

    type = UTCDateTime()
    inherit_cache = True
    name = "db_now_plus"


class as_json(FunctionElement[Any]):
    """A JSON document bound as text that pgflow already encoded (and validated)."""

    type = String()
    inherit_cache = True
    name = "as_json"


class json_append(FunctionElement[Any]):
    """A JSON array column with one more element, given as encoded JSON text."""

    type = String()
    inherit_cache = True
    name = "json_append"


class cancel_flag(FunctionElement[bool]):
    """True when a job's meta column holds `"cancel_requested": true`."""

    type = Boolean()
    inherit_cache = True
    name = "cancel_flag"


class relaxed_commit(FunctionElement[bool]):
    """A condition that is always true and, on PostgreSQL, makes the statement's transaction
    commit without waiting for the WAL flush: `set_config(..., is_local => true)` is
    `SET LOCAL synchronous_commit = off`, carried by the statement itself so that a
    single-statement (autocommit) write needs no extra round trip.
    """

    type = Boolean()
    inherit_cache = True
    name = "relaxed_commit"


def seconds(name: str) -> BindParameter[float]:
    """A float bind parameter for db_now_plus."""
    return bindparam(name, type_=Float())


def _only_arg(element: FunctionElement[Any]) -> ColumnElement[Any]:
    (arg,) = element.clauses
    return arg


@compiles(db_now, "postgresql")
def _now_pg(element: db_now, compiler: SQLCompiler, **kw: Any) -> str:
    return "now()"


@compiles(db_now, "sqlite")
def _now_sqlite(element: db_now, compiler: SQLCompiler, **kw: Any) -> str:
    return _SQLITE_NOW


@compiles(db_now_plus, "postgresql")
def _plus_pg(element: db_now_plus, compiler: SQLCompiler, **kw: Any) -> str:
    return f"(now() + make_interval(secs => {compiler.process(_only_arg(element), **kw)}))"


@compiles(db_now_plus, "sqlite")
def _plus_sqlite(element: db_now_plus, compiler: SQLCompiler, **kw: Any) -> str:
    return f"({_SQLITE_NOW} + {compiler.process(_only_arg(element), **kw)})"


@compiles(as_json, "postgresql")
def _json_pg(element: as_json, compiler: SQLCompiler, **kw: Any) -> str:
    return f"CAST({compiler.process(_only_arg(element), **kw)} AS JSONB)"


@compiles(as_json, "sqlite")
def _json_sqlite(element: as_json, compiler: SQLCompiler, **kw: Any) -> str:
    return str(compiler.process(_only_arg(element), **kw))


class generic_plans(FunctionElement[bool]):
    """A condition that is always true and, on PostgreSQL, makes the rest of the statement's
    transaction plan prepared statements generically (`SET LOCAL plan_cache_mode`): the
    settle's statements keep their shape from call to call, so planning each one anew (the
    default for their first uses and whenever the estimate moves) only costs time.
    """

    type = Boolean()
    inherit_cache = True
    name = "generic_plans"


@compiles(generic_plans, "postgresql")
def _generic_pg(element: generic_plans, compiler: SQLCompiler, **kw: Any) -> str:
    return "(set_config('plan_cache_mode', 'force_generic_plan', true) IS NOT NULL)"


@compiles(generic_plans, "sqlite")
def _generic_sqlite(element: generic_plans, compiler: SQLCompiler, **kw: Any) -> str:
    return "1"


@compiles(relaxed_commit, "postgresql")
def _relaxed_pg(element: relaxed_commit, compiler: SQLCompiler, **kw: Any) -> str:
    return "(set_config('synchronous_commit', 'off', true) IS NOT NULL)"


@compiles(relaxed_commit, "sqlite")
def _relaxed_sqlite(element: relaxed_commit, compiler: SQLCompiler, **kw: Any) -> str:
    return "1"  # SQLite has no boolean type: SQLAlchemy renders a boolean WHERE as "1 = 1"


@compiles(json_append, "postgresql")
def _append_pg(element: json_append, compiler: SQLCompiler, **kw: Any) -> str:
    array, item = (compiler.process(arg, **kw) for arg in element.clauses)
    return f"({array} || jsonb_build_array(CAST({item} AS JSONB)))"


@compiles(json_append, "sqlite")
def _append_sqlite(element: json_append, compiler: SQLCompiler, **kw: Any) -> str:
    array, item = (compiler.process(arg, **kw) for arg in element.clauses)
    return f"json_insert({array}, '$[#]', json({item}))"


@compiles(cancel_flag, "postgresql")
def _cancel_flag_pg(element: cancel_flag, compiler: SQLCompiler, **kw: Any) -> str:
    meta = compiler.process(_only_arg(element), **kw)
    return f"COALESCE(({meta} -> 'cancel_requested') = 'true'::jsonb, false)"


@compiles(cancel_flag, "sqlite")
def _cancel_flag_sqlite(element: cancel_flag, compiler: SQLCompiler, **kw: Any) -> str:
    meta = compiler.process(_only_arg(element), **kw)
    return f"COALESCE(json_extract({meta}, '$.cancel_requested') = 1, 0)"
