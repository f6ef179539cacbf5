"""What is specific to the SQL backends: caller transactions, hostile input, the database's
clock, indexes used by the claim query, and wake-ups."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from sqlalchemy import text

from pgflow.errors import DefinitionError, SerializationError
from pgflow.records import Job, JobState, NewJob, UniqueSpec
from pgflow_backends.postgres import PostgresBackend
from pgflow_backends.sql.base import SQLBackend
from pgflow_backends.sqlite import SQLiteBackend

from .helpers import kill_other_connections, no_idle_ping

WORKER = "tests.sql.Noop"
HOSTILE = "x'; DROP TABLE pgflow_jobs; --"


def test_an_insert_in_a_rolled_back_caller_transaction_leaves_no_job(
    sql_backend: SQLBackend,
) -> None:
    with sql_backend.engine.connect() as conn:
        conn.begin()
        (job,) = sql_backend.insert_jobs([NewJob(worker=WORKER)], connection=conn)
        assert job.id > 0 and job.state is JobState.AVAILABLE
        conn.rollback()
    assert sql_backend.get_job(job.id) is None
    assert sql_backend.list_jobs() == []


def test_an_insert_in_a_committed_caller_transaction_lands_with_the_callers_rows(
    sql_backend: SQLBackend,
) -> None:
    with sql_backend.engine.begin() as conn:
        conn.execute(text("CREATE TABLE orders (id INTEGER PRIMARY KEY)"))
        conn.execute(text("INSERT INTO orders VALUES (1)"))
        (job,) = sql_backend.insert_jobs([NewJob(worker=WORKER)], connection=conn)
    assert sql_backend.get_job(job.id) == job


def test_a_listener_hears_a_caller_insert_only_once_it_commits(sql_backend: SQLBackend) -> None:
    listener = sql_backend.listener()
    try:
        with sql_backend.engine.connect() as conn:
            conn.begin()
            sql_backend.insert_jobs([NewJob(worker=WORKER, queue="txq")], connection=conn)
            assert listener.wait(0.2) == set()  # not visible yet, so not announced
            conn.commit()
        assert listener.wait(5.0) == {"txq"}
    finally:
        listener.close()


def test_a_hostile_queue_name_is_refused_and_the_table_survives(sql_backend: SQLBackend) -> None:
    with pytest.raises(DefinitionError, match="invalid queue name"):
        sql_backend.insert_jobs([NewJob(worker=WORKER, queue=HOSTILE)])
    assert sql_backend.claim_jobs(HOSTILE, "node-a", 5) == []  # bound, so it matches nothing
    sql_backend.insert_jobs([NewJob(worker=WORKER)])
    assert len(sql_backend.list_jobs()) == 1


def test_args_that_are_not_json_write_nothing(sql_backend: SQLBackend) -> None:
    batch = [NewJob(worker=WORKER), NewJob(worker=WORKER, args={"when": object()})]
    with pytest.raises(SerializationError, match=r"args\['when'\]"):
        sql_backend.insert_jobs(batch)
    assert sql_backend.list_jobs() == []


def test_times_come_from_the_database_clock(sql_backend: SQLBackend) -> None:
    with sql_backend.engine.connect() as conn:
        db_now = conn.execute(sql_backend._s.now).scalar_one()
    (job,) = sql_backend.insert_jobs([NewJob(worker=WORKER)])
    assert job.inserted_at == job.scheduled_at
    assert abs((job.inserted_at - db_now).total_seconds()) < 60
    (later,) = sql_backend.insert_jobs([NewJob(worker=WORKER, schedule_in=3600)])
    assert later.state is JobState.SCHEDULED
    assert 3599 < (later.scheduled_at - later.inserted_at).total_seconds() < 3601


def test_sqlite_in_memory_is_shared_by_threads() -> None:
    backend = SQLiteBackend("sqlite://")
    backend.migrate()
    try:
        errors: list[BaseException] = []

        def insert() -> None:
            try:
                backend.insert_jobs([NewJob(worker=WORKER) for _ in range(20)])
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=insert) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert errors == []
        assert len(backend.list_jobs(limit=1000)) == 80
    finally:
        backend.close()


@pytest.mark.postgres
def test_the_claim_query_uses_the_partial_claim_index(pg_backend: PostgresBackend) -> None:
    pg_backend.insert_jobs(
        [NewJob(worker=WORKER, queue=f"q{n % 20}", priority=n % 3) for n in range(4000)]
    )
    for _ in range(30):
        claimed = pg_backend.claim_jobs("q1", "node-a", 100)
        pg_backend.complete_jobs([job.ref for job in claimed])
    with pg_backend.engine.begin() as conn:
        conn.execute(text("ANALYZE pgflow_jobs"))
        compiled = pg_backend._s.claim.compile(dialect=conn.dialect)
        params: dict[str, Any] = dict(
            compiled.params, p_queue="q2", p_instance="node-a", p_limit=10
        )
        plan = conn.exec_driver_sql(f"EXPLAIN {compiled.string}", params).scalars().all()
        conn.rollback()
    print("\n".join(plan))  # the plan, for the record (pytest -s shows it)
    assert any("pgflow_jobs_claim_idx" in line for line in plan), "\n".join(plan)


@pytest.mark.postgres
def test_the_postgres_listener_reconnects_after_its_connection_is_killed(
    pg_backend: PostgresBackend,
) -> None:
    listener = pg_backend.listener()
    try:
        with pg_backend.engine.begin() as conn:
            conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND query LIKE 'LISTEN%'"
                )
            )
        deadline = time.monotonic() + 20
        heard: set[str] = set()
        while not heard and time.monotonic() < deadline:
            pg_backend.insert_jobs([NewJob(worker=WORKER, queue="again")])
            heard = listener.wait(0.5)
        assert heard == {"again"}
    finally:
        listener.close()


@pytest.mark.parametrize("outcome", ["rollback", "commit"])
def test_a_unique_insert_waits_for_a_rival_and_is_never_lost_to_its_rollback(
    sql_backend: SQLBackend, outcome: str
) -> None:
    unique = UniqueSpec()
    job = NewJob(worker=WORKER, args={"order": 7}, unique=unique)
    results: list[Job] = []
    with sql_backend.engine.connect() as rival:
        rival.begin()
        (held,) = sql_backend.insert_jobs([job], connection=rival)
        racer = threading.Thread(target=lambda: results.extend(sql_backend.insert_jobs([job])))
        racer.start()
        racer.join(0.5)
        assert racer.is_alive(), "the second insert must wait for the rival's transaction"
        if outcome == "commit":
            rival.commit()
        else:
            rival.rollback()
    racer.join(30)
    assert not racer.is_alive()
    (stored,) = results
    if outcome == "commit":
        assert stored.conflict and stored.id == held.id
    else:
        assert not stored.conflict
    assert [j.id for j in sql_backend.list_jobs()] == [stored.id]


def test_job_ids_are_never_reused_after_pruning(sql_backend: SQLBackend) -> None:
    (first,) = sql_backend.insert_jobs([NewJob(worker=WORKER)])
    (claimed,) = sql_backend.claim_jobs("default", "node-a", 1)
    sql_backend.complete_jobs([claimed.ref])
    assert sql_backend.prune_jobs(-60) == 1  # everything finished is "older" than now + 60s
    (second,) = sql_backend.insert_jobs([NewJob(worker=WORKER)])
    assert second.id > first.id


def test_a_listener_on_an_unreachable_server_is_a_backend_error() -> None:
    from sqlalchemy import create_engine

    from pgflow.errors import BackendError
    from pgflow_backends.postgres import PostgresListener

    engine = create_engine("postgresql+psycopg://u:hunter2@127.0.0.1:1/db")
    try:
        with pytest.raises(BackendError, match="cannot LISTEN") as raised:
            PostgresListener(engine, "postgresql+psycopg://u:***@127.0.0.1:1/db")
        assert "hunter2" not in str(raised.value)
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    ("name", "index", "params"),
    [
        ("claim", "pgflow_jobs_claim_idx", {"p_queue": "q2", "p_instance": "a", "p_limit": 10}),
        ("stage", "pgflow_jobs_stage_idx", {"p_limit": 100}),
        ("prune_jobs", "pgflow_jobs_prune_idx", {"p_age": -5.0, "p_limit": 10}),
    ],
)
def test_sqlite_hot_queries_use_their_partial_indexes(
    sqlite_backend: SQLiteBackend, name: str, index: str, params: dict[str, Any]
) -> None:
    """Bound state names would hide the partial indexes from SQLite's planner."""
    sqlite_backend.insert_jobs([NewJob(worker=WORKER, queue=f"q{n % 5}") for n in range(200)])
    statement = getattr(sqlite_backend._s, name)
    with sqlite_backend.engine.connect() as conn:
        compiled = statement.compile(dialect=conn.dialect)
        values = dict(compiled.params, **params)
        args = tuple(values[key] for key in compiled.positiontup or ())
        plan = [row[-1] for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}", args)]
    assert any(index in line for line in plan), plan


@pytest.mark.postgres
def test_pooled_connections_killed_while_idle_are_replaced_transparently(
    pg_backend: PostgresBackend,
) -> None:
    pg_backend.insert_jobs([NewJob(worker=WORKER)])  # the pool now holds a connection
    kill_other_connections(pg_backend)
    time.sleep(1.2)  # idle long enough to be pinged at checkout
    assert len(pg_backend.list_jobs()) == 1


@pytest.mark.postgres
def test_a_connection_killed_in_use_is_a_backend_error_then_recovers(
    pg_backend: PostgresBackend,
) -> None:
    from pgflow.errors import BackendError

    pg_backend.insert_jobs([NewJob(worker=WORKER)])
    assert pg_backend.engine.pool.checkedin() == 1  # type: ignore[attr-defined]
    kill_other_connections(pg_backend)
    with no_idle_ping(), pytest.raises(BackendError, match="unreachable or failed"):
        pg_backend.list_jobs()  # the connection was used a moment ago: not pinged
    assert len(pg_backend.list_jobs()) == 1  # the pool was invalidated: fresh connections


def test_awkward_text_survives_the_bulk_insert(sql_backend: SQLBackend) -> None:
    awkward = {
        "quote": 'say "hi"',
        "backslash": "C:\\temp\\new",
        "braces": "{a,b}",
        "null_word": "NULL",
        "unicode": "naïve ☃ 🎉",
        "nested": [{"k": 'v,"w"'}, None, 1.5, True],
    }
    batch = [NewJob(worker=WORKER, args=awkward, meta={"m": '"\\'}) for _ in range(3)]
    stored = sql_backend.insert_jobs(batch)
    for job in stored:
        assert job.args == awkward and job.meta == {"m": '"\\'}
        again = sql_backend.get_job(job.id)
        assert again is not None and again.args == awkward and again.meta == {"m": '"\\'}
