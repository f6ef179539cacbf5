"""Held driver connections: a busy runtime thread keeps one pooled connection across
statements, survives it breaking, and never holds more than half the pool."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from pgflow.errors import BackendError
from pgflow.records import NewJob
from pgflow_backends.postgres import PostgresBackend
from pgflow_backends.sql import driver

from .helpers import kill_other_connections

WORKER = "tests.sql.Noop"
pytestmark = pytest.mark.postgres


def _backend_pid(backend: PostgresBackend) -> int:
    with backend._driver() as conn:
        pid: int = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        return pid


def test_statements_in_a_hold_share_one_connection_and_return_it_after(
    pg_backend: PostgresBackend,
) -> None:
    pool: Any = pg_backend.engine.pool
    before = pool.checkedout()
    with pg_backend.hold_connection():
        first = _backend_pid(pg_backend)
        job = pg_backend.insert_jobs([NewJob(worker=WORKER, queue="held")])[0]
        (claimed,) = pg_backend.claim_jobs("held", "node-a", 5)
        assert pg_backend.complete_jobs([claimed.ref]) == [job.id]
        assert _backend_pid(pg_backend) == first
        assert pool.checkedout() == before + 1
        with pg_backend.hold_connection():  # nested: the same connection
            assert _backend_pid(pg_backend) == first
    assert pool.checkedout() == before
    # Back in the pool in transactional mode, as SQLAlchemy expects it.
    with pg_backend.engine.connect() as conn:
        assert conn.connection.driver_connection.autocommit is False  # type: ignore[union-attr]


def test_a_held_connection_that_breaks_is_replaced_at_the_next_statement(
    pg_backend: PostgresBackend,
) -> None:
    with pg_backend.hold_connection():
        first = _backend_pid(pg_backend)
        kill_other_connections(pg_backend)
        with pytest.raises(BackendError, match="unreachable or failed"):
            pg_backend.claim_jobs("held", "node-a", 1)
        second = _backend_pid(pg_backend)
        assert second != first
        assert pg_backend.insert_jobs([NewJob(worker=WORKER, queue="held")])


def test_a_held_connection_is_pinged_after_a_quiet_spell(
    pg_backend: PostgresBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After HELD_IDLE_SECONDS unused, the connection is pinged like an idle pooled one:
    a server-side kill meanwhile costs no error."""
    monkeypatch.setattr(driver, "HELD_IDLE_SECONDS", 0.0)
    with pg_backend.hold_connection():
        first = _backend_pid(pg_backend)
        kill_other_connections(pg_backend)
        assert _backend_pid(pg_backend) != first


def test_at_most_half_the_pool_is_held(postgres_url: str) -> None:
    backend = PostgresBackend(postgres_url)
    backend.migrate()
    try:
        pool: Any = backend.engine.pool
        holdable = pool.size() // 2
        entered = threading.Barrier(holdable + 3)
        release = threading.Event()
        pids: list[int] = []

        def hold() -> None:
            with backend.hold_connection():
                pids.append(_backend_pid(backend))
                entered.wait(10)
                release.wait(10)

        threads = [threading.Thread(target=hold) for _ in range(holdable + 2)]
        for thread in threads:
            thread.start()
        entered.wait(10)
        # Held ones stay checked out; the others returned theirs after each statement.
        assert pool.checkedout() == holdable
        release.set()
        for thread in threads:
            thread.join(10)
        assert pool.checkedout() == 0 and len(pids) == holdable + 2
    finally:
        backend.close()
