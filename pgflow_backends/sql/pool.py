"""Checking pooled connections before use, only when they may have gone stale.

SQLAlchemy's `pool_pre_ping` pings on every checkout: one extra round trip per operation,
which doubled the round trips of each workflow step record. This pings only connections that
sat idle in the pool for `idle_after` seconds; a connection used a moment ago is alive unless
the server restarted in that moment, and then the operation fails with a disconnect error,
SQLAlchemy invalidates the whole pool, the caller gets a BackendError and the next try gets
fresh connections (the runtime retries with backoff).
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import Engine, event
from sqlalchemy.exc import DisconnectionError

__all__ = ["ping_when_idle"]

_IDLE_SINCE = "pgflow_idle_since"


def ping_when_idle(engine: Engine, *, idle_after: float = 1.0) -> None:
    """Install the checkout ping on `engine` (one pgflow created: never an application's)."""

    @event.listens_for(engine, "checkin")
    def _checked_in(_dbapi_connection: Any, record: Any) -> None:
        if record is not None:
            record.info[_IDLE_SINCE] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checked_out(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        idle_since = record.info.get(_IDLE_SINCE)
        if idle_since is not None and time.monotonic() - idle_since < idle_after:
            return
        try:
            dbapi_connection.execute("SELECT 1")
            if not dbapi_connection.autocommit:
                dbapi_connection.rollback()  # leave no transaction open behind the ping
        except Exception as exc:
            # The pool discards this connection and checks out (or opens) another.
            raise DisconnectionError(f"stale pooled connection: {exc}") from exc
