"""The claim's incarnation fence against concurrent registrations, on the real PostgreSQL.

The claim reads its instance row FOR KEY SHARE. A registration holds that row FOR UPDATE
(its first statement), so a claim of the same id waits for it and then re-checks the row:
once a newer incarnation committed, the older one's claim gets nothing. A heartbeat only
takes FOR NO KEY UPDATE, which does not conflict: claims never wait on heartbeats.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from pgflow.records import InstanceInfo, Job, JobState, NewJob
from pgflow_backends.postgres import PostgresBackend

pytestmark = pytest.mark.postgres

WAIT = 30.0  # seconds: a bound for events that take milliseconds


def register(backend: PostgresBackend, incarnation: str) -> None:
    backend.register_instance(
        InstanceInfo(instance_id="node-a", hostname="test", pid=1, incarnation=incarnation)
    )


class Claim:
    """A claim run in its own thread, so the test can hold a lock it must wait on."""

    def __init__(self, backend: PostgresBackend, incarnation: str) -> None:
        self.result: list[Job] | None = None
        self.error: BaseException | None = None

        def run() -> None:
            try:
                self.result = backend.claim_jobs("q", "node-a", 10, incarnation=incarnation)
            except BaseException as exc:  # reported by the test
                self.error = exc

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def outcome(self) -> list[Job]:
        self.thread.join(WAIT)
        assert not self.thread.is_alive(), "the claim never returned"
        assert self.error is None, self.error
        assert self.result is not None
        return self.result


def await_true(condition: Callable[[], bool]) -> bool:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


@pytest.fixture
def holder(postgres_url: str) -> Iterator[psycopg.Connection[Any]]:
    """A second session, in a transaction the test commits when it chooses."""
    with psycopg.connect(postgres_url) as conn:
        yield conn


def claim_waits_on_a_lock(postgres_url: str) -> bool:
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND wait_event_type = 'Lock' AND query LIKE '%%pgflow_instances%%'"
        ).fetchone()
        return row is not None and row[0] > 0


def test_a_claim_waits_for_a_registration_and_then_claims_nothing(
    pg_backend: PostgresBackend, holder: psycopg.Connection[Any], postgres_url: str
) -> None:
    register(pg_backend, "first")
    (job,) = pg_backend.insert_jobs([NewJob(worker="tests.sql.Noop", queue="q")])
    # What register_instance does first: lock the row, then write the new incarnation.
    holder.execute(
        "SELECT status, incarnation FROM pgflow_instances WHERE instance_id = 'node-a' FOR UPDATE"
    )
    holder.execute(
        "UPDATE pgflow_instances SET incarnation = 'second' WHERE instance_id = 'node-a'"
    )

    claim = Claim(pg_backend, "first")
    assert await_true(lambda: claim_waits_on_a_lock(postgres_url)), "the claim did not wait"
    holder.commit()

    assert claim.outcome() == []
    stored = pg_backend.get_job(job.id)
    assert stored is not None and (stored.state, stored.attempt) == (JobState.AVAILABLE, 0)


def test_a_claim_that_committed_first_is_rescued_by_the_registration(
    pg_backend: PostgresBackend,
) -> None:
    register(pg_backend, "first")
    (job,) = pg_backend.insert_jobs([NewJob(worker="tests.sql.Noop", queue="q")])
    assert [claimed.id for claimed in Claim(pg_backend, "first").outcome()] == [job.id]

    report = pg_backend.register_instance(
        InstanceInfo(instance_id="node-a", hostname="test", pid=2, incarnation="second")
    )

    assert report.rescued == (job.id,)


def test_a_claim_does_not_wait_for_a_heartbeat(pg_backend: PostgresBackend) -> None:
    register(pg_backend, "first")
    (job,) = pg_backend.insert_jobs([NewJob(worker="tests.sql.Noop", queue="q")])
    # What heartbeat() does, its transaction left open.
    sqla = pg_backend.engine.connect()
    try:
        tx = sqla.begin()
        statements: Any = pg_backend._s  # the backend's own statements
        assert sqla.execute(statements.instance_liveness, {"p_instance": "node-a"}).first()
        sqla.execute(statements.heartbeat, {"p_instance": "node-a"})

        claimed = Claim(pg_backend, "first").outcome()  # would hang on a conflicting lock

        tx.commit()
    finally:
        sqla.close()
    assert [c.id for c in claimed] == [job.id]
