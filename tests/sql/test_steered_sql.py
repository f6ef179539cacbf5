"""Steered runs on the SQL backends: the indexes their sweeps use, and a parent's sweep racing
its child's end on PostgreSQL (parents lock children, children never lock parents)."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from sqlalchemy import text

import pgflow
from pgflow.graph.ready import plan_fingerprint
from pgflow.records import JobState, RunState, TaskCompletion
from pgflow.serialization import dumps
from pgflow_backends.postgres import PostgresBackend
from pgflow_backends.sqlite import SQLiteBackend

child = pgflow.Flow("sql_steer_child")


@child.step
def inner(input: Any) -> Any: ...


parent = pgflow.Flow("sql_steer_parent")
parent.subflow("nested", child)

PLANS = {plan_fingerprint(flow.plan): flow.plan for flow in (child, parent)}


def _started_child(backend: Any, workflow_id: str) -> tuple[str, Any]:
    """Start a parent run; return its child's id and the child's claimed task."""
    backend.start_flow_run(parent.plan, workflow_id=workflow_id, input=1, max_attempts=1)
    child_id = backend.get_step_states(workflow_id)["nested"].child_id
    assert child_id is not None
    (job,) = [
        j
        for j in backend.claim_jobs("default", "node", 100)
        if j.task is not None and j.task.workflow_id == child_id
    ]
    return child_id, job


@pytest.mark.parametrize(
    ("name", "index", "params"),
    [
        ("expired_runs", "pgflow_runs_deadline_idx", {"p_limit": 100}),
        ("lock_children", "pgflow_runs_parent_idx", {"p_workflow_id": "p"}),
    ],
)
def test_sqlite_steering_sweeps_use_their_partial_indexes(
    sqlite_backend: SQLiteBackend, name: str, index: str, params: dict[str, Any]
) -> None:
    for n in range(20):
        sqlite_backend.start_flow_run(
            child.plan, workflow_id=f"r{n}", input=n, max_attempts=1, deadline=600
        )
    statement = getattr(sqlite_backend._f, name)
    with sqlite_backend.engine.connect() as conn:
        compiled = statement.compile(dialect=conn.dialect)
        values = dict(compiled.params, **params)
        args = tuple(values[key] for key in compiled.positiontup or ())
        plan = [row[-1] for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}", args)]
    assert any(index in line for line in plan), plan


@pytest.mark.postgres
@pytest.mark.parametrize(
    ("name", "index", "params"),
    [
        ("expired_runs", "pgflow_runs_deadline_idx", {"p_limit": 100}),
        ("lock_children", "pgflow_runs_parent_idx", {"p_workflow_id": "p"}),
    ],
)
def test_postgres_steering_sweeps_can_use_their_partial_indexes(
    pg_backend: PostgresBackend, name: str, index: str, params: dict[str, Any]
) -> None:
    for n in range(20):
        pg_backend.start_flow_run(
            child.plan, workflow_id=f"r{n}", input=n, max_attempts=1, deadline=600
        )
    statement = getattr(pg_backend._f, name)
    with pg_backend.engine.begin() as conn:
        conn.execute(text("ANALYZE pgflow_runs"))
        conn.execute(text("SET LOCAL enable_seqscan = off"))  # a tiny table: prove it is usable
        compiled = statement.compile(dialect=conn.dialect)
        values = dict(compiled.params, **params)
        plan = conn.exec_driver_sql(f"EXPLAIN {compiled.string}", values).scalars().all()
        conn.rollback()
    assert any(index in line for line in plan), "\n".join(plan)


def _race(first: Any, second: Any) -> list[BaseException]:
    """Run both at once (released together); return what they raised."""
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def run(work: Any) -> None:
        barrier.wait(timeout=10)
        try:
            work()
        except BaseException as exc:  # collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(work,)) for work in (first, second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
        assert not thread.is_alive(), "a racer hung (a deadlock?)"
    return errors


@pytest.mark.postgres
@pytest.mark.slow
def test_a_parents_cancel_racing_its_childs_last_completion_never_deadlocks(
    pg_backend: PostgresBackend,
) -> None:
    """Whichever commits first wins: the child completed (its relay then cancelled by the
    parent's sweep) or cancelled with its parent (no relay); the parent ends cancelled."""
    outcomes: set[RunState] = set()
    for round_ in range(20):
        workflow_id = f"race{round_}"
        child_id, job = _started_child(pg_backend, workflow_id)
        done = TaskCompletion(job.ref, job.task, dumps("out", what="output"))
        errors = _race(
            lambda done=done: pg_backend.complete_tasks([done], PLANS),
            lambda workflow_id=workflow_id: pg_backend.cancel_run(workflow_id),
        )
        assert errors == []
        assert pg_backend.get_run(workflow_id).state is RunState.CANCELLED
        ended = pg_backend.get_run(child_id).state
        outcomes.add(ended)
        assert ended in (RunState.COMPLETED, RunState.CANCELLED)
        relays = [
            j
            for j in pg_backend.list_jobs(limit=1000)
            if j.task is not None and j.task.workflow_id == workflow_id
        ]
        if ended is RunState.CANCELLED:
            assert relays == []
        assert all(j.state is JobState.CANCELLED for j in relays)
    print(outcomes)  # which orders happened, for the record


@pytest.mark.postgres
@pytest.mark.slow
def test_a_parents_deadline_racing_its_childs_failure_never_deadlocks(
    pg_backend: PostgresBackend,
) -> None:
    for round_ in range(10):
        workflow_id = f"late{round_}"
        pg_backend.start_flow_run(
            parent.plan, workflow_id=workflow_id, input=1, max_attempts=1, deadline=0.001
        )
        child_id = pg_backend.get_step_states(workflow_id)["nested"].child_id
        (job,) = [
            j
            for j in pg_backend.claim_jobs("default", "node", 100)
            if j.task is not None and j.task.workflow_id == child_id
        ]
        errors = _race(
            lambda job=job: pg_backend.fail_job(job.ref, {"kind": "E"}, retry_in=None),
            pg_backend.expire_runs,
        )
        assert errors == []
        pg_backend.expire_runs()
        assert pg_backend.get_run(workflow_id).state is RunState.FAILED
        assert pg_backend.get_run(child_id).state in (RunState.FAILED, RunState.CANCELLED)
