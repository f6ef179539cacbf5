"""SQLiteBackend: pgflow on one SQLite file, safe for several processes sharing it.

Every transaction pgflow opens is `BEGIN IMMEDIATE` (it takes the write lock up front, so two
claimers never both read the same available job), the file runs in WAL mode with
`synchronous=NORMAL`, and a busy timeout makes other processes wait instead of failing.
Within one process a lock per file serialises writers, so threads never spin in SQLite's
busy handler. "sqlite://" is a private in-memory database shared by all threads. The same
writer lock serializes the shaped claims of flow control (`pgflow.Queue`).

Wake-ups: listeners get in-process hints (inserts, staging, snoozes and rescues by backends
opened on the same file in this process). Jobs inserted by other processes are found by the
worker's polling, which is the safety net on every backend.
"""

from __future__ import annotations

import contextlib
import os
import threading
import weakref
from collections.abc import Iterable, Iterator
from typing import Any

from sqlalchemy import URL, Connection, Engine, create_engine, event
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.pool import StaticPool

from pgflow.backend import JobListener
from pgflow.errors import BackendError
from pgflow.serialization import DEFAULT_MAX_PAYLOAD_BYTES
from pgflow_backends.sql.base import SQLBackend
from pgflow_backends.sql.errors import translate
from pgflow_backends.sql.urls import mask, parse

__all__ = ["SQLiteBackend"]

_BUSY_TIMEOUT_MS = 30_000
_ANNOUNCE = "pgflow_announce"
#: Execution option: the connection runs single-statement writes, no explicit transaction.
_SINGLE_STATEMENT = "pgflow_single_statement"


class _Hub:
    """The in-process listeners of one database file, and the lock its writers share."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.condition = threading.Condition(threading.Lock())
        self.listeners: weakref.WeakSet[SQLiteListener] = weakref.WeakSet()
        self.backends = 0  # open backends on this file; the hub is dropped at zero

    def announce(self, queues: Iterable[str]) -> None:
        queues = set(queues)
        if not queues:
            return
        with self.condition:
            for listener in list(self.listeners):
                listener.pending |= queues
            self.condition.notify_all()


_hubs: dict[str, _Hub] = {}
_hubs_lock = threading.Lock()


def _hub_for(key: str | None) -> _Hub:
    """The hub of a database file (one per file per process); a private one for memory.
    Each call counts one more backend on it, until `_release_hub`."""
    if key is None:
        return _Hub()
    with _hubs_lock:
        hub = _hubs.get(key)
        if hub is None:
            hub = _hubs[key] = _Hub()
        hub.backends += 1
        return hub


def _release_hub(key: str | None) -> None:
    """A backend on the file closed (or was collected): forget the hub after the last."""
    if key is None:
        return
    with _hubs_lock:
        hub = _hubs.get(key)
        if hub is not None:
            hub.backends -= 1
            if hub.backends <= 0:
                del _hubs[key]


class SQLiteListener:
    """Queues announced in this process since the last wait; see the module docstring."""

    def __init__(self, hub: _Hub) -> None:
        self._hub = hub
        self.pending: set[str] = set()
        self.closed = False
        with hub.condition:
            hub.listeners.add(self)

    def wait(self, timeout: float) -> set[str]:
        """Block up to `timeout` seconds for a hint; return and forget the queues announced."""
        condition = self._hub.condition
        with condition:
            condition.wait_for(lambda: self.pending or self.closed, timeout=max(timeout, 0.0))
            queues, self.pending = self.pending, set()
        return queues

    def close(self) -> None:
        with self._hub.condition:
            self.closed = True
            self._hub.listeners.discard(self)
            self._hub.condition.notify_all()


def _database_key(url: URL) -> str | None:
    """A per-process identity for the file; None for in-memory databases."""
    database = url.database
    if not database or database == ":memory:" or url.query.get("mode") == "memory":
        return None
    return os.path.realpath(database)


def _configure(engine: Engine, *, in_memory: bool) -> None:
    """WAL, busy timeout and BEGIN IMMEDIATE for every transaction, on pgflow's own engine.

    pysqlite would otherwise emit its own deferred BEGIN only before DML; the documented
    recipe is to switch that off on connect and emit BEGIN from the "begin" event.
    """

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
            if not in_memory:
                cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA synchronous = NORMAL")
            cursor.execute("PRAGMA foreign_keys = ON")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        if connection.get_execution_options().get(_SINGLE_STATEMENT):
            return  # SQLite wraps the one statement in its own implicit transaction
        # Straight to the driver: this runs for every transaction, and the statement needs
        # none of SQLAlchemy's execution machinery (events, caching, result handling).
        connection.connection.driver_connection.execute("BEGIN IMMEDIATE")  # type: ignore[union-attr]


class SQLiteBackend(SQLBackend):
    """pgflow's tables in an SQLite database: "sqlite:///path/to/file.db" or "sqlite://".

    Pass an existing SQLAlchemy Engine to share an application's pool; pgflow then leaves the
    engine's configuration alone and starts its own transactions with BEGIN IMMEDIATE.
    """

    def __init__(
        self,
        url_or_engine: str | URL | Engine = "sqlite://",
        *,
        max_payload_bytes: int | None = DEFAULT_MAX_PAYLOAD_BYTES,
    ) -> None:
        if isinstance(url_or_engine, Engine):
            engine, owns = url_or_engine, False
            if engine.dialect.name != "sqlite":
                raise BackendError(
                    f"SQLiteBackend needs an SQLite engine, not {engine.dialect.name} "
                    f"({mask(engine.url)})"
                )
        else:
            url = parse(url_or_engine)
            if url.get_backend_name() != "sqlite":
                raise BackendError(f"SQLiteBackend needs an sqlite:// URL, not {mask(url)}")
            in_memory = _database_key(url) is None
            options: dict[str, Any] = {
                "connect_args": {"check_same_thread": False, "timeout": _BUSY_TIMEOUT_MS / 1000}
            }
            if in_memory:
                options["poolclass"] = StaticPool
            engine, owns = create_engine(url, **options), True
            _configure(engine, in_memory=in_memory)
        super().__init__(
            engine, url=mask(engine.url), owns_engine=owns, max_payload_bytes=max_payload_bytes
        )
        self._owns_config = owns
        self._in_memory = _database_key(engine.url) is None
        self._single_engine = engine.execution_options(**{_SINGLE_STATEMENT: True})
        key = _database_key(engine.url)
        self._hub = _hub_for(key)
        # Runs once: at close, or when a backend never closed is collected.
        self._release_hub = weakref.finalize(self, _release_hub, key)
        try:
            self.ping()
        except BaseException:
            self.close()
            raise

    @classmethod
    def from_url(
        cls, url: str, *, max_payload_bytes: int | None = DEFAULT_MAX_PAYLOAD_BYTES
    ) -> SQLiteBackend:
        """Open `url` (the registry's entry point)."""
        return cls(url, max_payload_bytes=max_payload_bytes)

    def _guard(self) -> contextlib.AbstractContextManager[object]:
        return self._hub.lock

    def migrate(self) -> None:
        """Upgrade the schema with foreign keys off: SQLite rebuilds a table to alter it, and
        dropping the old pgflow_runs with them on would cascade to every run's steps."""
        from pgflow.migrations import upgrade  # Alembic loads only where migrations run

        self._check_open()
        with self._translated(), self._hub.lock, self.engine.connect() as connection:
            # The pragma is a no-op inside a transaction: set it on the driver before the
            # upgrade begins one, and put the connection's setting back after it.
            dbapi: Any = connection.connection.driver_connection
            if dbapi.in_transaction:
                dbapi.rollback()
            enabled = dbapi.execute("PRAGMA foreign_keys").fetchone()[0]
            dbapi.execute("PRAGMA foreign_keys = OFF")
            try:
                upgrade(connection)
            finally:
                if not dbapi.in_transaction:
                    dbapi.execute(f"PRAGMA foreign_keys = {'ON' if enabled else 'OFF'}")

    def _run_write(self) -> contextlib.AbstractContextManager[Connection]:
        """Run and step writes are single statements (start_run's read-back aside, which
        needs no lock): on pgflow's own engine they skip BEGIN IMMEDIATE and COMMIT, and
        SQLite makes each statement its own transaction."""
        if not self._owns_config:
            return self._tx()
        return self._single_statements()

    def _read(self) -> contextlib.AbstractContextManager[Connection]:
        """Reads are single SELECTs: on pgflow's own file engine they take neither the write
        lock nor the process lock (WAL lets readers run beside the writer); an in-memory
        database has one shared connection, so its reads still queue for it."""
        if not self._owns_config:
            return self._tx()
        return self._single_statements(lock=self._in_memory)

    @contextlib.contextmanager
    def _single_statements(self, *, lock: bool = True) -> Iterator[Connection]:
        self._check_open()
        try:
            guard = self._hub.lock if lock else contextlib.nullcontext()
            with guard, self._single_engine.connect() as connection:
                yield connection
                connection.commit()
        except (DBAPIError, PoolTimeout) as exc:
            raise translate(exc, self.url) from exc

    def _on_begin(self, connection: Connection) -> None:
        connection.info.pop(_ANNOUNCE, None)
        if not self._owns_config:
            _begin_immediate(connection)

    def _announce(self, connection: Connection, queues: set[str], *, own: bool) -> None:
        if own:
            connection.info.setdefault(_ANNOUNCE, set()).update(queues)
            return
        hub = self._hub
        event.listen(connection, "commit", lambda _conn: hub.announce(queues), once=True)

    def _after_commit(self, info: dict[Any, Any]) -> None:
        queues = info.pop(_ANNOUNCE, None)
        if queues:
            self._hub.announce(queues)

    def close(self) -> None:
        """Release connections, then this backend's share of the file's hub."""
        try:
            super().close()
        finally:
            self._release_hub()

    def listener(self) -> JobListener:
        """In-process hints only (see the module docstring); polling covers other processes."""
        self._check_open()
        return SQLiteListener(self._hub)


def _begin_immediate(connection: Connection) -> None:
    """Take SQLite's write lock now, on an engine pgflow did not configure."""
    dbapi = connection.connection.driver_connection
    if dbapi is not None and not getattr(dbapi, "in_transaction", True):
        connection.exec_driver_sql("BEGIN IMMEDIATE")
