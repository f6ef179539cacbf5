"""Waiting for flow runs to finish on PostgreSQL without polling.

The transaction that finishes a distributed run sends NOTIFY pgflow_runs with the run's id
(delivered at commit). One LISTEN connection per backend, on a daemon thread, wakes the
waiters of that id; every waiter re-reads the run after waking, and at least once a second
anyway, so a notification lost to a broken connection costs at most that second.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine

from pgflow.errors import BackendError
from pgflow.records import RunRecord, RunState

__all__ = ["RUN_CHANNEL", "RunWaits"]

logger = logging.getLogger("pgflow.backend")

RUN_CHANNEL = "pgflow_runs"
#: The longest a waiter sleeps before re-reading its run, notification or not.
RECHECK_EVERY = 1.0


class RunWaits:
    """The waiters of one backend, by workflow id, and the thread that wakes them."""

    def __init__(self, engine: Engine, url: str) -> None:
        self._engine = engine
        self._url = url
        self._lock = threading.Lock()
        self._waiters: dict[str, set[threading.Event]] = {}
        self._listening = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False

    def wait(
        self, workflow_id: str, read: Callable[[], RunRecord | None], timeout: float | None
    ) -> RunRecord | None:
        """Block until `read()` returns a finished (or unknown) run, or `timeout` passed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        run = read()
        if (
            run is None
            or run.state is not RunState.RUNNING
            or (timeout is not None and timeout <= 0)
        ):
            return run
        event = threading.Event()
        with self._lock:
            self._waiters.setdefault(workflow_id, set()).add(event)
        try:
            self._start()
            while True:
                run = read()  # after LISTEN is active: a finish from now on wakes us
                if run is None or run.state is not RunState.RUNNING:
                    return run
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return run
                event.wait(RECHECK_EVERY if left is None else min(left, RECHECK_EVERY))
                event.clear()
        finally:
            with self._lock:
                waiting = self._waiters.get(workflow_id)
                if waiting is not None:
                    waiting.discard(event)
                    if not waiting:
                        del self._waiters[workflow_id]

    def _start(self) -> None:
        """Start the listening thread once; wait (briefly) until it is LISTENing."""
        with self._lock:
            if self._closed:
                raise BackendError(f"{self._url}: the backend is closed")
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._listen, name="pgflow-run-waits", daemon=True
                )
                self._thread.start()
        self._listening.wait(5.0)  # if it cannot connect, waiters fall back to re-reading

    def _listen(self) -> None:
        pause = 0.1
        while not self._closed:
            conn: Any = None
            try:
                raw = self._engine.raw_connection()
                conn = raw.driver_connection
                raw.detach()
                if conn.info.transaction_status != 0:
                    conn.rollback()
                conn.autocommit = True
                conn.execute(f"LISTEN {RUN_CHANNEL}")
                self._listening.set()
                self._wake_all()  # anything finished while we were not listening
                pause = 0.1
                while not self._closed:
                    for note in conn.notifies(timeout=RECHECK_EVERY):
                        self._wake(note.payload)
            except Exception as exc:  # a broken connection: log, back off, listen again
                if self._closed:
                    break
                logger.warning(
                    "run notification connection to %s failed (%s); reconnecting",
                    self._url,
                    type(exc).__name__,
                    extra={"url": self._url},
                )
                time.sleep(pause)
                pause = min(pause * 2, 5.0)
            finally:
                self._listening.clear()
                if conn is not None:
                    try:
                        conn.close()
                    except Exception:
                        logger.debug("closing the run notification connection failed")

    def _wake(self, workflow_id: str) -> None:
        with self._lock:
            events = list(self._waiters.get(workflow_id, ()))
        for event in events:
            event.set()

    def _wake_all(self) -> None:
        with self._lock:
            events = [event for waiting in self._waiters.values() for event in waiting]
        for event in events:
            event.set()

    def close(self) -> None:
        """Stop listening (the thread notices within RECHECK_EVERY) and wake every waiter."""
        with self._lock:
            self._closed = True
        self._wake_all()
