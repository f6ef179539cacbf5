"""Runs recorded in a RunStore (InMemoryBackend): history, resume, JSON and fencing."""

from __future__ import annotations

import threading
from collections import Counter
from datetime import timedelta
from typing import Any

import pytest

import pgflow
from pgflow.executor import Executor
from pgflow.records import RunState, StepOutcome
from pgflow_backends.memory import InMemoryBackend


@pytest.fixture
def store() -> InMemoryBackend:
    return InMemoryBackend()


def counting_flow(calls: Counter[str], *, fail_middle: int = 0) -> pgflow.Flow:
    """first -> middle (fails its first `fail_middle` calls) -> last, counting calls."""
    flow = pgflow.Flow("counting")

    @flow.step
    def first(state: dict[str, Any]) -> dict[str, Any]:
        calls["first"] += 1
        return {**state, "first": True}

    @flow.step
    def middle(state: dict[str, Any]) -> dict[str, Any]:
        calls["middle"] += 1
        if calls["middle"] <= fail_middle:
            raise ValueError(f"middle failure {calls['middle']}")
        return {**state, "middle": True}

    @flow.step
    def last(state: dict[str, Any]) -> dict[str, Any]:
        calls["last"] += 1
        return {**state, "last": True}

    return flow


DONE = {"n": 1, "first": True, "middle": True, "last": True}


def test_a_completed_run_and_its_steps_are_recorded(store: InMemoryBackend) -> None:
    clock = pgflow.FakeClock()
    result = Executor(store, clock=clock).execute(
        counting_flow(Counter()), {"n": 1}, workflow_id="r1"
    )
    assert result == DONE
    run = store.get_run("r1")
    assert run is not None
    assert (run.workflow, run.state, run.attempt, run.max_attempts) == (
        "counting",
        RunState.COMPLETED,
        1,
        3,
    )
    assert (run.input, run.output) == ({"n": 1}, DONE)
    steps = store.get_steps("r1")
    assert [(s.step, s.index, s.attempt, s.outcome) for s in steps] == [
        ("first", 0, 1, StepOutcome.COMPLETED),
        ("middle", 1, 1, StepOutcome.COMPLETED),
        ("last", 2, 1, StepOutcome.COMPLETED),
    ]
    assert steps[0].output == {"n": 1, "first": True}
    assert all(s.duration >= 0 and s.started_at == clock.now() for s in steps)


def test_a_generated_workflow_id_is_recorded(store: InMemoryBackend) -> None:
    Executor(store).execute(counting_flow(Counter()), {"n": 1})
    [run] = store.list_runs()
    assert len(run.workflow_id) == 36
    assert len(store.get_steps(run.workflow_id)) == 3


def test_retries_are_recorded_attempt_by_attempt(store: InMemoryBackend) -> None:
    calls = Counter[str]()
    clock = pgflow.FakeClock()
    result = Executor(store, clock=clock).execute(
        counting_flow(calls, fail_middle=2), {"n": 1}, workflow_id="r2"
    )
    assert result == DONE
    assert calls == Counter({"first": 1, "middle": 3, "last": 1})
    steps = store.get_steps("r2")
    assert [(s.step, s.attempt, s.outcome) for s in steps] == [
        ("first", 1, StepOutcome.COMPLETED),
        ("middle", 1, StepOutcome.FAILED),
        ("middle", 2, StepOutcome.FAILED),
        ("middle", 3, StepOutcome.COMPLETED),
        ("last", 3, StepOutcome.COMPLETED),
    ]
    error = steps[1].error
    assert error is not None
    assert (error["kind"], error["message"]) == ("ValueError", "middle failure 1")
    assert "Traceback" in error["traceback"]
    run = store.get_run("r2")
    assert run is not None and (run.state, run.attempt) == (RunState.COMPLETED, 3)
    # Step timestamps come from the executor's clock, which the backoff advanced.
    assert steps[2].started_at - steps[1].started_at == timedelta(seconds=10)


def test_a_failed_run_is_recorded(store: InMemoryBackend) -> None:
    with pytest.raises(pgflow.MaxAttemptsExceeded):
        Executor(store, clock=pgflow.FakeClock()).execute(
            counting_flow(Counter(), fail_middle=9), {"n": 1}, workflow_id="r3", max_attempts=2
        )
    run = store.get_run("r3")
    assert run is not None
    assert (run.state, run.attempt) == (RunState.FAILED, 2)
    assert run.error is not None
    assert run.error["kind"] == "MaxAttemptsExceeded"
    assert run.error["step"] == "middle"
    assert "middle failure 2" in run.error["traceback"]


def test_a_failed_run_resumes_after_its_last_completed_step(store: InMemoryBackend) -> None:
    calls = Counter[str]()
    executor = Executor(store, clock=pgflow.FakeClock())
    with pytest.raises(pgflow.StepFailed):
        executor.execute(
            counting_flow(calls, fail_middle=1), {"n": 1}, workflow_id="r4", max_attempts=1
        )
    # Same workflow_id again (e.g. the job that runs it was retried): "first" is not re-run.
    assert executor.execute(counting_flow(calls, fail_middle=1), {"n": 1}, workflow_id="r4") == DONE
    assert calls == Counter({"first": 1, "middle": 2, "last": 1})
    run = store.get_run("r4")
    assert run is not None and (run.state, run.attempt) == (RunState.COMPLETED, 2)


def test_a_crashed_run_resumes_with_the_stored_input(store: InMemoryBackend) -> None:
    calls = Counter[str]()
    flow = counting_flow(calls)

    crashing = pgflow.Flow("counting")
    crashing.add_step("first", lambda state: {**state, "first": True})

    def crash(state: Any) -> Any:
        raise KeyboardInterrupt  # the process dies mid-run: nothing more is written

    crashing.add_step("middle", crash)
    crashing.add_step("last", lambda state: state)
    with pytest.raises(KeyboardInterrupt):
        pgflow.execute(crashing, {"n": 1}, backend=store, workflow_id="r5")
    run = store.get_run("r5")
    assert run is not None and run.state is RunState.RUNNING

    # A running run is presumed live and followed for one attempt's timeout (here on a fake
    # clock), then presumed abandoned and taken over from its last checkpoint.
    clock = pgflow.FakeClock()
    executor = Executor(store, clock=clock)
    assert executor.execute(flow, {"n": 1}, workflow_id="r5", timeout=5.0) == DONE
    assert calls == Counter({"middle": 1, "last": 1})
    assert sum(clock.sleeps) >= 5.0
    run = store.get_run("r5")
    assert run is not None and (run.state, run.attempt) == (RunState.COMPLETED, 2)


def test_a_completed_run_is_not_run_again(store: InMemoryBackend) -> None:
    calls = Counter[str]()
    executor = Executor(store)
    assert executor.execute(counting_flow(calls), {"n": 1}, workflow_id="r6") == DONE
    assert executor.execute(counting_flow(calls), {"n": 1}, workflow_id="r6") == DONE
    assert calls == Counter({"first": 1, "middle": 1, "last": 1})


def test_a_workflow_id_of_another_workflow_is_refused(store: InMemoryBackend) -> None:
    Executor(store).execute(counting_flow(Counter()), {"n": 1}, workflow_id="r7")
    other = pgflow.Flow("other")
    other.add_step("only", lambda state: state)
    with pytest.raises(pgflow.WorkflowError, match="belongs to workflow 'counting'") as info:
        Executor(store).execute(other, {}, workflow_id="r7")
    assert info.value.workflow_id == "r7"


def test_non_json_output_names_the_step_and_is_not_retried(store: InMemoryBackend) -> None:
    calls = Counter[str]()
    flow = pgflow.Flow("unserialisable")

    @flow.step
    def make_set(state: Any) -> Any:
        calls["make_set"] += 1
        return {"tags": {"a", "b"}}

    clock = pgflow.FakeClock()
    with pytest.raises(
        pgflow.SerializationError, match="workflow 'unserialisable' step 'make_set'"
    ):
        Executor(store, clock=clock).execute(flow, {}, workflow_id="r8")
    assert calls["make_set"] == 1 and clock.sleeps == []
    run = store.get_run("r8")
    assert run is not None and run.state is RunState.FAILED


def test_non_json_input_is_refused_before_anything_runs(store: InMemoryBackend) -> None:
    calls = Counter[str]()
    with pytest.raises(pgflow.SerializationError, match="workflow 'counting': input"):
        Executor(store).execute(counting_flow(calls), {"when": object()})
    assert not calls


def test_without_a_backend_nothing_is_serialised() -> None:
    flow = pgflow.Flow("free")
    flow.add_step("only", lambda state: {"tags": {"a"}})
    assert pgflow.execute(flow, object()) == {"tags": {"a"}}


def test_a_timed_out_step_is_recorded_and_the_abandoned_attempt_writes_nothing(
    store: InMemoryBackend,
) -> None:
    release, returned, next_ran = threading.Event(), threading.Event(), threading.Event()
    flow = pgflow.Flow("hangs")
    flow.add_step("start", lambda state: {"started": True})

    def stuck(state: Any) -> Any:
        try:
            release.wait(30)
            return {"late": True}
        finally:
            returned.set()

    def after(state: Any) -> Any:
        next_ran.set()
        return state

    flow.add_step("stuck", stuck)
    flow.add_step("after", after)
    try:
        with pytest.raises(pgflow.StepTimedOut):
            Executor(store).execute(flow, {}, workflow_id="r9", timeout=0.2, max_attempts=1)
    finally:
        release.set()
    assert returned.wait(30)
    assert not next_ran.wait(0.3)
    steps = store.get_steps("r9")
    assert [(s.step, s.outcome) for s in steps] == [
        ("start", StepOutcome.COMPLETED),
        ("stuck", StepOutcome.TIMED_OUT),
    ]
    assert steps[1].error is not None and steps[1].error["kind"] == "StepTimedOut"
    run = store.get_run("r9")
    assert run is not None and run.state is RunState.FAILED
    assert run.error is not None and run.error["kind"] == "StepTimedOut"


def test_an_executor_fenced_out_of_its_run_stops(store: InMemoryBackend) -> None:
    next_ran = threading.Event()
    flow = pgflow.Flow("taken_over")

    def taken_over(state: Any) -> Any:
        assert store.start_attempt("r10", 2)  # another executor takes the run over meanwhile
        return state

    def after(state: Any) -> Any:
        next_ran.set()
        return state

    flow.add_step("taken_over", taken_over)
    flow.add_step("after", after)
    with pytest.raises(pgflow.WorkflowError, match="moved past attempt 1"):
        Executor(store).execute(flow, {}, workflow_id="r10", timeout=None)
    assert not next_ran.is_set()


def test_backend_url_is_opened_once_and_reused() -> None:
    calls = Counter[str]()
    assert (
        pgflow.execute(counting_flow(calls), {"n": 1}, backend="memory://", workflow_id="u1")
        == DONE
    )
    # A second call with the same URL sees the same store: the completed run is not re-run.
    assert (
        pgflow.execute(counting_flow(calls), {"n": 1}, backend="memory://", workflow_id="u1")
        == DONE
    )
    assert calls["first"] == 1


def test_executor_with_url_opens_lazily() -> None:
    executor = Executor("memory://")
    assert executor.execute(counting_flow(Counter()), {"n": 1}, workflow_id="u2") == DONE
    store = executor.backend
    assert store is not None and store.get_run("u2") is not None


def test_backend_may_be_an_sqlalchemy_engine(tmp_path: Any) -> None:
    sqlalchemy = pytest.importorskip("sqlalchemy")
    engine = sqlalchemy.create_engine(f"sqlite:///{tmp_path}/runs.db")
    try:
        store = pgflow.backend_from_url(engine)
        store.migrate()
        calls = Counter[str]()
        flow = counting_flow(calls)
        assert pgflow.execute(flow, {"n": 1}, backend=engine, workflow_id="e1") == DONE
        assert pgflow.execute(flow, {"n": 1}, backend=engine, workflow_id="e1") == DONE
        assert calls["first"] == 1
        run = store.get_run("e1")
        assert run is not None and run.state is RunState.COMPLETED
    finally:
        engine.dispose()
