"""Inserting inside the caller's own SQLAlchemy transaction (SQL backends only)."""

from __future__ import annotations

from typing import Any

import pytest

from pgflow.backend import Backend
from pgflow.records import JobState

from .support import new


class _Rollback(Exception):
    """Raised inside a transaction to make SQLAlchemy roll it back."""


def _engine(backend: Backend, kind: str) -> Any:
    if kind == "memory":  # its refusal is tested in tests/test_memory_backend.py
        pytest.skip("memory has no SQL transaction to join")
    return backend.engine  # type: ignore[attr-defined]


def test_an_insert_in_a_rolled_back_transaction_leaves_no_job(
    backend: Backend, backend_kind: str
) -> None:
    engine = _engine(backend, backend_kind)

    with pytest.raises(_Rollback), engine.begin() as connection:
        (job,) = backend.insert_jobs([new(args={"n": 1})], connection=connection)
        assert job.state is JobState.AVAILABLE
        raise _Rollback

    assert backend.list_jobs() == []
    assert backend.claim_jobs("default", "node-a", 10) == []


def test_an_insert_in_a_committed_transaction_is_stored(
    backend: Backend, backend_kind: str
) -> None:
    engine = _engine(backend, backend_kind)

    with engine.begin() as connection:
        (job,) = backend.insert_jobs([new(args={"n": 1})], connection=connection)

    assert [j.id for j in backend.list_jobs()] == [job.id]
    assert [j.id for j in backend.claim_jobs("default", "node-a", 10)] == [job.id]


def test_a_flow_run_started_in_a_rolled_back_transaction_leaves_nothing(
    backend: Backend, backend_kind: str
) -> None:
    import pgflow

    engine = _engine(backend, backend_kind)
    flow = pgflow.Flow("contract_tx_flow")

    @flow.step
    def only(value: Any) -> Any:
        return value

    store: Any = backend
    with pytest.raises(_Rollback), engine.begin() as connection:
        started = store.start_flow_run(
            flow.plan, workflow_id="tx-run", input=1, max_attempts=3, connection=connection
        )
        assert started.created
        raise _Rollback
    assert backend.get_run("tx-run") is None
    assert backend.list_jobs() == [] and store.get_step_states("tx-run") == {}

    with engine.begin() as connection:
        store.start_flow_run(
            flow.plan, workflow_id="tx-run", input=1, max_attempts=3, connection=connection
        )
    assert backend.get_run("tx-run") is not None
    (job,) = backend.claim_jobs("default", "node-a", 10)
    assert job.task is not None and job.task.workflow_id == "tx-run"


def test_a_flow_run_started_in_the_callers_transaction_leaves_its_settings_alone(
    backend: Backend, backend_kind: str
) -> None:
    from sqlalchemy import text

    import pgflow

    engine = _engine(backend, backend_kind)
    if backend_kind != "postgres":
        pytest.skip("plan_cache_mode is a PostgreSQL setting")
    flow = pgflow.Flow("contract_tx_settings")

    @flow.step
    def only(value: Any) -> Any:
        return value

    store: Any = backend
    with engine.begin() as connection:
        store.start_flow_run(
            flow.plan, workflow_id="tx-set", input=1, max_attempts=3, connection=connection
        )
        # pgflow's own transactions plan generically; the caller's must not inherit that.
        assert connection.execute(text("SHOW plan_cache_mode")).scalar_one() == "auto"
