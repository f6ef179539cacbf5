"""Driver-level psycopg connections from a SQLAlchemy pool, for the hot single statements.

SQLAlchemy's Connection and result machinery cost about 0.12 ms a call, as much as a round
trip, so inserts, claims and completions run on the pooled psycopg connection itself. A
thread that issues such statements all day (a queue's claimer, its acknowledger) can also
hold one connection for a while instead of checking one out and in per statement (another
~40 us a call).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, cast

import psycopg
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from pgflow_backends.sql.errors import translate

__all__ = ["DriverConnections"]

#: A held connection unused for this long is pinged before its next statement, as the pool
#: (ping_when_idle) pings connections that sat idle.
HELD_IDLE_SECONDS = 1.0


class _Held(threading.local):
    """Per thread: whether it holds a connection, and which."""

    active = False
    fairy: Any = None
    previous_autocommit = False
    used_at = 0.0


class DriverConnections:
    """Autocommit psycopg connections out of `engine`'s pool, errors translated for `url`."""

    def __init__(self, engine: Engine, url: str, check_open: Callable[[], None]) -> None:
        self._engine = engine
        self._url = url
        self._check_open = check_open
        self._held = _Held()
        # Held connections stay checked out, so at most half the pool is ever held: the
        # other half still serves inserts, heartbeats and the application.
        size = getattr(engine.pool, "size", None)
        self._holdable = size() // 2 if callable(size) else 0
        self._holders = 0
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        """Keep one connection for this thread's statements until the block ends.

        The connection is taken at the first statement; a broken one is dropped and the next
        statement takes another. Nested calls share the outer block's connection. Once half
        the pool is held, further blocks check out per statement as usual.
        """
        held = self._held
        if held.active:
            yield
            return
        with self._lock:
            granted = self._holders < self._holdable
            self._holders += granted
        if not granted:  # the pool is small or already half held: statement by statement
            yield
            return
        held.active = True
        try:
            yield
        finally:
            held.active = False
            self._release()
            with self._lock:
                self._holders -= 1

    @contextlib.contextmanager
    def connect(self) -> Iterator[Any]:
        """A psycopg connection in autocommit mode; each statement is its own transaction.

        A connection that broke is invalidated (never returned to the pool); one that did
        not goes back in the autocommit mode it came in.
        """
        self._check_open()
        held = self._held
        if held.active:
            if held.fairy is not None and time.monotonic() - held.used_at > HELD_IDLE_SECONDS:
                self._drop_if_dead()
            if held.fairy is None:
                held.fairy, held.previous_autocommit = self._checkout()
            fairy = held.fairy
            try:
                yield fairy.driver_connection
            except BaseException as exc:
                held.fairy = None  # dropped: _fail invalidates or returns it
                self._fail(fairy, held.previous_autocommit, exc)
                raise
            held.used_at = time.monotonic()
            return
        fairy, previous = self._checkout()
        try:
            yield fairy.driver_connection
        except BaseException as exc:
            self._fail(fairy, previous, exc)
            raise
        fairy.driver_connection.autocommit = previous
        fairy.close()

    def _checkout(self) -> tuple[Any, bool]:
        try:
            fairy = self._engine.raw_connection()
        except (DBAPIError, PoolTimeout) as exc:
            raise translate(exc, self._url) from exc
        conn: Any = fairy.driver_connection
        previous = bool(conn.autocommit)  # transactional on pgflow's engines; an app's may vary
        try:
            conn.autocommit = True
        except BaseException:
            fairy.invalidate()
            raise
        return fairy, previous

    def _fail(self, fairy: Any, previous: bool, exc: BaseException) -> None:
        """Release `fairy` after `exc`; a driver error is raised again, translated."""
        conn: Any = fairy.driver_connection
        if not isinstance(exc, psycopg.Error):
            fairy.invalidate()  # interrupted mid-statement: its state is unknown
            fairy.close()
            return
        dialect = self._engine.dialect
        lost = bool(conn.closed) or dialect.is_disconnect(cast(Any, exc), fairy, None)
        if lost:
            fairy.invalidate(exc)
        else:
            conn.autocommit = previous
        fairy.close()
        wrapped = cast(
            DBAPIError,
            DBAPIError.instance(
                None, None, exc, psycopg.Error, connection_invalidated=lost, dialect=dialect
            ),
        )
        raise translate(wrapped, self._url) from exc

    def _drop_if_dead(self) -> None:
        """Ping the held connection after a quiet spell, as the pool pings idle ones; a dead
        one is discarded so the statement gets a fresh connection instead of an error."""
        held = self._held
        try:
            held.fairy.driver_connection.execute("SELECT 1")
        except psycopg.Error as exc:
            fairy, held.fairy = held.fairy, None
            fairy.invalidate(exc)
            fairy.close()

    def _release(self) -> None:
        held = self._held
        fairy, held.fairy = held.fairy, None
        if fairy is None:
            return
        try:
            fairy.driver_connection.autocommit = held.previous_autocommit
        except Exception:
            fairy.invalidate()
        fairy.close()
