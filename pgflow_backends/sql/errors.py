"""Turn driver errors into pgflow.BackendError messages that say what to do.

Messages name the URL with its password masked and quote only the driver's own message, never
the SQL parameters (they may hold job arguments).
"""

from __future__ import annotations

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from pgflow.errors import BackendError

__all__ = ["translate"]

_MISSING_TABLE = ("no such table", "does not exist", "undefinedtable")


def translate(exc: DBAPIError | PoolTimeout, url: str) -> BackendError:
    """A BackendError for `exc`, naming `url` (already masked)."""
    if isinstance(exc, PoolTimeout):
        return BackendError(
            f"no free connection to {url}: every pooled connection stayed busy ({exc}); "
            "give the engine a larger pool or run fewer concurrent operations"
        )
    reason = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else str(exc)
    lowered = reason.lower()
    if "pgflow_" in lowered and any(marker in lowered for marker in _MISSING_TABLE):
        return BackendError(
            f"schema not migrated in {url} ({reason}): run `pgflow migrate --url {url}` "
            "or app.migrate()"
        )
    if isinstance(exc, (OperationalError, InterfaceError)) or exc.connection_invalidated:
        if url.startswith("sqlite"):
            hint = "check that the file's directory exists and is writable"
        else:
            hint = "check that it is running and that the URL, user and password are right"
        return BackendError(f"database {url} is unreachable or failed ({reason}); {hint}")
    return BackendError(f"database error on {url}: {reason}")
