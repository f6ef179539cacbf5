"""Steering calls racing each other on PostgreSQL, from two threads released together: two
signals to one wait, two resumes of one run. Exactly one wins, the other is told, and the
run's rows say the same."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest

import pgflow
from pgflow.errors import RunStateError, SignalError
from pgflow.graph.ready import plan_fingerprint
from pgflow.records import JobState, RunState, StepStatus
from pgflow_backends.postgres import PostgresBackend

pytestmark = pytest.mark.postgres

ROUNDS = 10

waiting = pgflow.Flow("race_wait")
waiting.wait_for("approval")


@waiting.step(depends_on=["approval"])
def after(approval: Any) -> Any: ...


mapped = pgflow.Flow("race_resume")


@mapped.map
def element(item: Any) -> Any: ...


PLANS = {plan_fingerprint(flow.plan): flow.plan for flow in (waiting, mapped)}


def _together(calls: list[Callable[[], Any]]) -> list[tuple[bool, Any]]:
    """Run the calls on their own threads, released at once; (ok, value or exception)."""
    barrier = threading.Barrier(len(calls))
    results: list[tuple[bool, Any]] = [(False, None)] * len(calls)

    def run(index: int) -> None:
        barrier.wait()
        try:
            results[index] = (True, calls[index]())
        except Exception as exc:
            results[index] = (False, exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
        assert not thread.is_alive(), "a racing call did not return"
    return results


def test_two_signals_to_one_wait_deliver_exactly_one(pg_backend: PostgresBackend) -> None:
    for round_ in range(ROUNDS):
        run_id = f"sig-{round_}"
        pg_backend.start_flow_run(waiting.plan, workflow_id=run_id, input=None, max_attempts=1)
        results = _together(
            [
                lambda p=payload, r=run_id: pg_backend.signal_run(PLANS, r, "approval", p)
                for payload in ("first", "second")
            ]
        )
        won = [value for ok, value in results if ok]
        lost = [value for ok, value in results if not ok]
        assert won == [True], results
        assert len(lost) == 1 and isinstance(lost[0], SignalError), results
        assert "already signalled" in str(lost[0])
        step = pg_backend.get_step_states(run_id)["approval"]
        assert step.state is StepStatus.COMPLETED and step.tasks_done == 1
        winner = "first" if results[0][0] else "second"
        assert step.output == winner
        (job,) = [
            job
            for job in pg_backend.list_jobs(worker=waiting.plan.worker)
            if job.task is not None and job.task.workflow_id == run_id
        ]
        assert job.task is not None and job.task.step == "after"
        assert job.args["kwargs"] == {"approval": winner}


def test_two_resumes_of_one_run_resume_it_once(pg_backend: PostgresBackend) -> None:
    for round_ in range(ROUNDS):
        run_id = f"res-{round_}"
        pg_backend.start_flow_run(mapped.plan, workflow_id=run_id, input=[1, 2, 3], max_attempts=1)
        pg_backend.cancel_run(run_id)
        results = _together([lambda r=run_id: pg_backend.resume_run(mapped.plan, r)] * 2)
        won = [value for ok, value in results if ok]
        lost = [value for ok, value in results if not ok]
        assert len(won) == 1 and won[0].state is RunState.RUNNING, results
        assert len(lost) == 1 and isinstance(lost[0], RunStateError), results
        assert "running" in str(lost[0])
        live = [
            job
            for job in pg_backend.list_jobs(worker=mapped.plan.worker)
            if job.task is not None
            and job.task.workflow_id == run_id
            and job.state is JobState.AVAILABLE
        ]
        assert sorted(job.task.index for job in live if job.task) == [0, 1, 2]
        step = pg_backend.get_step_states(run_id)["element"]
        assert (step.state, step.tasks_total, step.tasks_done) == (StepStatus.STARTED, 3, 0)
