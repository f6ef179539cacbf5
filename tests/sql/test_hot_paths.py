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

from .test_sql_behaviour import _kill_other_connections

WORKER = "tests.sql.Noop"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def sql_backend(request: pytest.FixtureRequest) -> SQLBackend:
    name = "sqlite_backend" if request.param == "sqlite" else "pg_backend"
    backend: SQLBackend = request.getfixturevalue(name)
    return backend


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
    _kill_other_connections(pg_backend)
    try:
        run()  # the pooled connection was used a moment ago: not pinged, so this may fail
    except BackendError as exc:
        assert "unreachable or failed" in str(exc)
    run()  # the broken connection was discarded: a fresh one works
    assert pg_backend.get_job(job.id) is not None
