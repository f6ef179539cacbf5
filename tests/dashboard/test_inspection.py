"""The dashboard's reads (`backend.inspection()`) mean the same on every backend."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from pgflow.errors import JobStateError
from pgflow.inspection import Inspection, JobFilter, inspection_for, scans_window
from pgflow.records import JobRef, JobState, NewJob


def _insert(backend: Any, count: int, **fields: Any) -> list[int]:
    jobs = [
        NewJob(
            worker=fields.get("worker", "w.A"),
            **{key: value for key, value in fields.items() if key != "worker"},
        )
        for _ in range(count)
    ]
    return [job.id for job in backend.insert_jobs(jobs)]


def test_find_jobs_filters_newest_first_and_pages(backend: Any) -> None:
    seen = inspection_for(backend)
    assert isinstance(seen, Inspection)
    a = _insert(backend, 3, queue="qa", args={"name": "50%_off"})
    b = _insert(backend, 2, queue="qb", worker="w.B", args={"name": "plain"})
    assert [j.id for j in seen.find_jobs(JobFilter())] == sorted(a + b, reverse=True)
    assert [j.id for j in seen.find_jobs(JobFilter(queue="qa"))] == sorted(a, reverse=True)
    assert [j.id for j in seen.find_jobs(JobFilter(worker="w.B"))] == sorted(b, reverse=True)
    assert seen.find_jobs(JobFilter(state=JobState.COMPLETED)) == []
    page = seen.find_jobs(JobFilter(limit=2))
    older = seen.find_jobs(JobFilter(limit=2, before=page[-1].id))
    assert [j.id for j in page + older] == sorted(a + b, reverse=True)[:4]
    # LIKE wildcards in the text are literal characters
    assert [j.id for j in seen.find_jobs(JobFilter(text="50%_"))] == sorted(a, reverse=True)
    assert seen.find_jobs(JobFilter(text="5_%")) == []
    assert [j.id for j in seen.find_jobs(JobFilter(text="PLAIN"))] == sorted(b, reverse=True)
    with pytest.raises(ValueError, match="limit"):
        JobFilter(limit=0)


def test_counts_by_queue_and_state(backend: Any) -> None:
    _insert(backend, 3, queue="qa")
    _insert(backend, 1, queue="qb")
    claimed = backend.claim_jobs("qa", "i-1", 1)
    backend.complete_jobs([claimed[0].ref])
    counts = {(c.queue, c.state.value): c.count for c in inspection_for(backend).state_counts()}
    assert counts == {("qa", "available"): 2, ("qa", "completed"): 1, ("qb", "available"): 1}


def test_throughput_counts_completed_and_discarded_per_bucket(backend: Any) -> None:
    _insert(backend, 3, queue="qa", max_attempts=1)
    claimed = backend.claim_jobs("qa", "i-1", 3)
    backend.complete_jobs([claimed[0].ref, claimed[1].ref])
    error = {"kind": "E", "message": "m", "attempt": 1}
    backend.fail_job(
        JobRef(claimed[2].id, claimed[2].attempt, claimed[2].attempted_at), error, retry_in=None
    )
    seen = inspection_for(backend)
    since = backend.database_time() - timedelta(hours=1)
    buckets = seen.throughput(since, 3600)
    assert [(b.queue, b.completed, b.failed) for b in buckets] == [("qa", 2, 1)]
    assert buckets[0].start.timestamp() % 3600 == 0
    assert seen.throughput(backend.database_time() + timedelta(minutes=1), 60) == []


def test_delete_refuses_executing_jobs(backend: Any) -> None:
    seen = inspection_for(backend)
    waiting, running = _insert(backend, 2, queue="qa")
    claimed = backend.claim_jobs("qa", "i-1", 1)
    assert claimed[0].id == waiting
    with pytest.raises(JobStateError, match=f"job {waiting} is executing"):
        seen.delete_job(waiting)
    assert seen.delete_job(running)
    assert backend.get_job(running) is None
    assert not seen.delete_job(running)
    assert [j.id for j in seen.find_jobs(JobFilter())] == [waiting]


def test_leader_and_cron_slots(backend: Any) -> None:
    seen = inspection_for(backend)
    assert seen.leader() is None
    assert backend.acquire_leadership("i-1", 60)
    assert seen.leader() == "i-1"
    backend.release_leadership("i-1")
    assert seen.leader() is None
    slot = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    backend.insert_cron_job("w.A 0 * * * *", slot, NewJob(worker="w.A"))
    assert seen.cron_slots() == [("w.A 0 * * * *", slot)]


def test_runs_by_flow_and_state(backend: Any) -> None:
    from pgflow.records import RunState

    for index, flow in enumerate(["f1", "f1", "f2"]):
        backend.start_run(workflow_id=f"r{index}", workflow=flow, input=None, max_attempts=1)
    backend.finish_run("r0", 1, RunState.COMPLETED)
    counts = {(c.flow, c.state.value): c.count for c in inspection_for(backend).run_counts()}
    assert counts == {("f1", "completed"): 1, ("f1", "running"): 1, ("f2", "running"): 1}


def test_scans_window_names_the_filters_no_index_serves() -> None:
    assert not scans_window(JobFilter())
    assert not scans_window(JobFilter(before=10))
    assert not scans_window(JobFilter(state=JobState.DISCARDED, queue="q"))
    assert not scans_window(JobFilter(state=JobState.EXECUTING))
    assert scans_window(JobFilter(queue="q"))
    assert scans_window(JobFilter(state=JobState.COMPLETED))
    assert scans_window(JobFilter(worker="w"))
    assert scans_window(JobFilter(state=JobState.AVAILABLE, text="x"))


def _discard_oldest(backend: Any) -> int:
    """One discarded job of queue "qold" (worker "w.Old"), then five newer jobs of "qa"."""
    _insert(backend, 1, queue="qold", worker="w.Old", max_attempts=1)
    job = backend.claim_jobs("qold", "i-1", 1)[0]
    error = {"kind": "E", "message": "m", "attempt": 1}
    backend.fail_job(JobRef(job.id, job.attempt, job.attempted_at), error, retry_in=None)
    _insert(backend, 5, queue="qa")
    return int(job.id)


def test_unindexed_filters_read_only_the_newest_jobs_on_sql(
    backend: Any, backend_kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if backend_kind == "memory":
        pytest.skip("the memory backend reads every job")
    monkeypatch.setattr("pgflow_backends.sql.inspection.SCAN_LIMIT", 3)
    old = _discard_oldest(backend)
    seen = inspection_for(backend)
    newer = [job.id for job in seen.find_jobs(JobFilter())][:5]
    # Beyond the newest 3 jobs: not found by the filters no index serves...
    assert seen.find_jobs(JobFilter(worker="w.Old")) == []
    assert seen.find_jobs(JobFilter(queue="qold")) == []
    # ...found through an indexed state, or in the window below `before`.
    assert [j.id for j in seen.find_jobs(JobFilter(state=JobState.DISCARDED))] == [old]
    assert [j.id for j in seen.find_jobs(JobFilter(state="discarded", queue="qold"))] == [old]
    assert [j.id for j in seen.find_jobs(JobFilter(state="discarded", worker="w.Old"))] == [old]
    assert [j.id for j in seen.find_jobs(JobFilter(worker="w.Old", before=newer[-2]))] == [old]


@pytest.mark.postgres
def test_the_job_path_writes_no_dashboard_index_entry(postgres_url: str) -> None:
    import psycopg

    from pgflow_backends.postgres import PostgresBackend

    backend = PostgresBackend(postgres_url)
    try:
        backend.migrate()
        _insert(backend, 20, queue="qa")
        claimed = backend.claim_jobs("qa", "i-1", 20)
        backend.complete_jobs([job.ref for job in claimed[:19]])
        sizes = "SELECT pg_relation_size(%s::regclass)"
        names = ("pgflow_jobs_failed_idx", "pgflow_jobs_failed_queue_idx")
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            # An empty B-tree is its metapage alone.
            assert [conn.execute(sizes, (n,)).fetchone() for n in names] == [(8192,), (8192,)]
            last = claimed[19]
            error = {"kind": "E", "message": "m", "attempt": 1}
            backend.fail_job(JobRef(last.id, last.attempt, last.attempted_at), error, retry_in=1)
            assert [conn.execute(sizes, (n,)).fetchone() for n in names] != [(8192,), (8192,)]
    finally:
        backend.close()


def test_sqlite_finds_failed_jobs_through_the_partial_indexes(sqlite_url: str) -> None:
    """SQLite uses a partial index only when the query repeats its predicate: the statement
    find_jobs sends must search pgflow_jobs_failed(_queue)_idx."""
    from sqlalchemy import event

    from pgflow_backends.sqlite import SQLiteBackend

    backend = SQLiteBackend(sqlite_url)
    try:
        backend.migrate()
        sent: list[tuple[str, Any]] = []
        event.listen(
            backend.engine,
            "before_cursor_execute",
            lambda _c, _cur, statement, params, _ctx, _many: sent.append((statement, params)),
        )
        plans = []
        for where in (JobFilter(state="discarded"), JobFilter(state="cancelled", queue="q")):
            inspection_for(backend).find_jobs(where)
            statement, params = sent[-1]
            with backend.engine.connect() as conn:
                rows = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, params).all()
            plans.append(" ".join(row[3] for row in rows))
        assert "USING INDEX pgflow_jobs_failed_idx (state=?)" in plans[0]
        assert "USING INDEX pgflow_jobs_failed_queue_idx (queue=? AND state=?)" in plans[1]
    finally:
        backend.close()
