"""The fast paths of inserting, claiming and completing: they must return exactly what the
general paths return, and leave pooled connections as they found them."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import text

from pgflow.errors import BackendError
from pgflow.records import Job, JobState, NewJob
from pgflow_backends.postgres import PostgresBackend
from pgflow_backends.sql.base import SQLBackend
from pgflow_backends.sql.rows import stored_copy

from .helpers import kill_other_connections, no_idle_ping

WORKER = "tests.sql.Noop"


def test_a_trusted_job_equals_the_validated_one() -> None:
    now = datetime.now(UTC)
    values = {
        "id": 7,
        "queue": "q",
        "worker": WORKER,
        "args": {"a": 1},
        "state": JobState.EXECUTING,
        "priority": 2,
        "attempt": 1,
        "max_attempts": 3,
        "scheduled_at": now,
        "inserted_at": now,
        "attempted_at": now,
        "reserved_by": "node-a",
        "errors": ({"attempt": 0},),
        "unique_key": "k",
    }
    trusted = Job.trusted(**values)  # type: ignore[arg-type]
    assert trusted == Job(**values)  # type: ignore[arg-type]
    assert trusted.meta == {} and trusted.conflict is False and trusted.completed_at is None
    with pytest.raises(AttributeError):
        trusted.id = 8  # type: ignore[misc]


def test_stored_copy_is_what_json_gives_back() -> None:
    flat = {"s": "x", "i": 1, "f": 1.5, "b": True, "n": None}
    copied = stored_copy(flat, "unused for flat dicts")
    assert copied == flat and copied is not flat
    # Anything JSON changes is decoded from the stored text instead.
    assert stored_copy({"t": (1, 2)}, '{"t":[1,2]}') == {"t": [1, 2]}
    assert stored_copy({1: "a"}, '{"1":"a"}') == {"1": "a"}  # type: ignore[dict-item]
    assert stored_copy({"d": {"x": 1}}, '{"d":{"x":1}}') == {"d": {"x": 1}}


def test_inserted_jobs_read_back_equal(sql_backend: SQLBackend) -> None:
    batch = [
        NewJob(worker=WORKER, args={"i": 1}),
        NewJob(worker=WORKER, args={"t": (1, 2), 3: "x"}, meta={"m": [1]}),  # type: ignore[dict-item]
        NewJob(worker=WORKER, args={}, schedule_in=3600.0, priority=3),
    ]
    stored = sql_backend.insert_jobs(batch)
    assert stored[1].args == {"t": [1, 2], "3": "x"} and stored[1].meta == {"m": [1]}
    assert [job.state for job in stored] == [
        JobState.AVAILABLE,
        JobState.AVAILABLE,
        JobState.SCHEDULED,
    ]
    for job in stored:
        assert sql_backend.get_job(job.id) == job


@pytest.mark.parametrize(
    "job",
    [
        NewJob(worker=WORKER, args={"i": 1}, priority=-2, max_attempts=7),
        NewJob(worker=WORKER, args={"t": (1, 2)}, meta={"m": [1]}),  # decoded back from JSON
        NewJob(worker=WORKER, schedule_in=3600.0),
        NewJob(worker=WORKER, scheduled_at=datetime(2000, 1, 1, tzinfo=UTC)),  # due: available
        NewJob(worker=WORKER, scheduled_at=datetime(2999, 1, 1, tzinfo=UTC)),
    ],
    ids=["plain", "json", "schedule_in", "past", "future"],
)
def test_a_single_insert_reads_back_equal(sql_backend: SQLBackend, job: NewJob) -> None:
    """One job takes its own statement on PostgreSQL; it must store what a batch would."""
    (stored,) = sql_backend.insert_jobs([job])
    (batched, _) = sql_backend.insert_jobs([job, job])
    assert sql_backend.get_job(stored.id) == stored
    assert stored.state == batched.state
    assert stored.args == batched.args and stored.meta == batched.meta
    assert (stored.priority, stored.max_attempts) == (job.priority, job.max_attempts)
    if job.scheduled_at is not None:
        assert stored.scheduled_at == job.scheduled_at


@pytest.mark.postgres
def test_the_driver_path_leaves_pooled_connections_transactional(
    pg_backend: PostgresBackend,
) -> None:
    """After autocommit statements on a pooled connection, a caller's transaction that
    rolls back still leaves nothing behind."""
    job = pg_backend.insert_jobs([NewJob(worker=WORKER, queue="tx")])[0]
    (claimed,) = pg_backend.claim_jobs("tx", "node-a", 10)
    assert pg_backend.complete_jobs([claimed.ref]) == [job.id]
    with pg_backend.engine.connect() as conn:
        pg_backend.insert_jobs([NewJob(worker=WORKER, queue="tx")], connection=conn)
        conn.execute(text("UPDATE pgflow_jobs SET priority = 9 WHERE id = :id"), {"id": job.id})
        conn.rollback()
    assert [j.id for j in pg_backend.list_jobs(queue="tx")] == [job.id]
    stored = pg_backend.get_job(job.id)
    assert stored is not None and stored.priority == 0


@pytest.mark.postgres
@pytest.mark.parametrize("operation", ["insert", "claim", "complete"])
def test_a_connection_killed_under_the_driver_path_is_a_backend_error_then_recovers(
    pg_backend: PostgresBackend, operation: str
) -> None:
    def run() -> object:
        if operation == "insert":
            return pg_backend.insert_jobs([NewJob(worker=WORKER, queue="k")])
        if operation == "claim":
            return pg_backend.claim_jobs("k", "node-a", 1)
        return pg_backend.complete_jobs([job.ref])

    job = pg_backend.insert_jobs([NewJob(worker=WORKER, queue="k")])[0]
    assert pg_backend.engine.pool.checkedin() == 1  # type: ignore[attr-defined]
    kill_other_connections(pg_backend)
    with no_idle_ping(), pytest.raises(BackendError, match="unreachable or failed"):
        run()  # the pooled connection was used a moment ago: not pinged, so this fails
    run()  # the broken connection was discarded: a fresh one works
    assert pg_backend.get_job(job.id) is not None


def _lose_the_claim(backend: PostgresBackend, job_id: int) -> None:
    """What a crash before the claim's WAL flush leaves: the job as it was before the claim."""
    with backend.engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE pgflow_jobs SET state = 'available', attempt = attempt - 1, "
                "attempted_at = NULL, reserved_by = NULL WHERE id = :id"
            ),
            {"id": job_id},
        )


@pytest.mark.postgres
def test_the_runner_of_a_lost_claim_cannot_write_over_the_next_claim(
    pg_backend: PostgresBackend,
) -> None:
    """Claims commit without waiting for the WAL flush: after a lost claim the next one
    reuses its attempt number, and only the claim time tells the two apart."""
    job = pg_backend.insert_jobs([NewJob(worker=WORKER, queue="lost")])[0]
    (lost,) = pg_backend.claim_jobs("lost", "node-a", 1)
    _lose_the_claim(pg_backend, job.id)
    (again,) = pg_backend.claim_jobs("lost", "node-b", 1)
    assert again.attempt == lost.attempt and again.attempted_at != lost.attempted_at
    assert lost.ref == again.ref  # equal as values: the claim time is an extra check only

    error = {"kind": "Boom", "message": "zombie"}
    assert pg_backend.complete_jobs([lost.ref]) == []
    assert pg_backend.fail_job(lost.ref, error, retry_in=0.0) is None
    assert pg_backend.snooze_job(lost.ref, 0.0) is False
    current = pg_backend.get_job(job.id)
    assert current is not None and current.state is JobState.EXECUTING
    assert current.reserved_by == "node-b" and current.errors == ()

    assert pg_backend.complete_jobs([again.ref]) == [job.id]


@pytest.mark.postgres
def test_refs_without_a_claim_time_are_fenced_by_attempt_alone(
    pg_backend: PostgresBackend,
) -> None:
    from pgflow.records import JobRef

    job = pg_backend.insert_jobs([NewJob(worker=WORKER, queue="plain")])[0]
    (claimed,) = pg_backend.claim_jobs("plain", "node-a", 1)
    assert claimed.ref.claimed_at == claimed.attempted_at is not None
    assert pg_backend.complete_jobs([JobRef(job.id, claimed.attempt)]) == [job.id]


def test_fenced_writes_on_sqlite_ignore_the_claim_time(sqlite_backend: SQLBackend) -> None:
    """SQLite claims are durable once returned: the attempt alone fences (and its stored
    times are floats, so exact time equality would be fragile)."""
    from pgflow.records import JobRef

    job = sqlite_backend.insert_jobs([NewJob(worker=WORKER, queue="s")])[0]
    (claimed,) = sqlite_backend.claim_jobs("s", "node-a", 1)
    skewed = JobRef(job.id, claimed.attempt, datetime(2000, 1, 1, tzinfo=UTC))
    assert sqlite_backend.snooze_job(skewed, 0.0) is True


@pytest.mark.postgres
def test_an_application_engine_keeps_its_own_autocommit_setting(
    pg_backend: PostgresBackend,
) -> None:
    from sqlalchemy import create_engine

    engine = create_engine(pg_backend.engine.url, isolation_level="AUTOCOMMIT", pool_size=1)
    try:
        backend = PostgresBackend(engine)
        job = backend.insert_jobs([NewJob(worker=WORKER, queue="app")])[0]
        (claimed,) = backend.claim_jobs("app", "node-a", 1)
        assert backend.complete_jobs([claimed.ref]) == [job.id]
        raw = engine.raw_connection()
        try:
            assert raw.driver_connection.autocommit is True  # type: ignore[union-attr]
        finally:
            raw.close()
        backend.close()  # the application's engine is left open
        with engine.connect() as conn:
            assert conn.execute(text("SELECT 1")).scalar() == 1
    finally:
        engine.dispose()
