"""Durable runs under contention and change: fencing, final completed runs, definitions,
inputs, and workflow jobs whose step retries are scheduled snoozes (issue 9 items 4-6)."""

from __future__ import annotations

import threading
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

import pgflow
from pgflow import testing
from pgflow.backend import Backend
from pgflow.executor import Executor
from pgflow.records import JobState, RunState, StepOutcome

# -- fencing -----------------------------------------------------------------------------------


class _WatchedStore:
    """The backend, plus an event set when a second caller has reached start_run."""

    def __init__(self, backend: Backend) -> None:
        self._backend = backend
        self._lock = threading.Lock()
        self._starts = 0
        self.second_start = threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backend, name)

    def start_run(self, **fields: Any) -> Any:
        started = self._backend.start_run(**fields)
        with self._lock:
            self._starts += 1
            if self._starts == 2:
                self.second_start.set()
        return started


def test_two_concurrent_executes_of_one_workflow_id_run_each_step_once(
    backend: Backend, tmp_path: Path
) -> None:
    effects = tmp_path / "effects.txt"
    effects.touch()
    store = _WatchedStore(backend)
    flow = pgflow.Flow("charge_order")

    @flow.step
    def charge(order: dict[str, Any]) -> dict[str, Any]:
        with effects.open("a") as file:
            file.write("charge\n")
        # Hold the step until the other caller has asked for the same run: the two overlap.
        assert store.second_start.wait(10.0), "the second caller never reached start_run"
        return {**order, "charged": True}

    @flow.step
    def receipt(order: dict[str, Any]) -> dict[str, Any]:
        with effects.open("a") as file:
            file.write("receipt\n")
        return {**order, "receipt": True}

    barrier = threading.Barrier(2)
    results: list[Any] = []
    errors: list[BaseException] = []

    def call() -> None:
        barrier.wait(5.0)
        try:
            results.append(Executor(store).execute(flow, {"order": 1}, workflow_id="order-1"))
        except BaseException as exc:  # reported below, with the effects
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30.0)

    assert errors == []
    assert results == [{"order": 1, "charged": True, "receipt": True}] * 2
    assert effects.read_text().splitlines() == ["charge", "receipt"]
    run = backend.get_run("order-1")
    assert run is not None and (run.state, run.attempt) == (RunState.COMPLETED, 1)


def test_a_caller_following_a_run_that_fails_there_gets_its_error_without_running_it(
    backend: Backend,
) -> None:
    store = _WatchedStore(backend)
    calls = Counter[str]()
    flow = pgflow.Flow("failing_order")

    @flow.step
    def charge(order: Any) -> Any:
        calls["charge"] += 1
        assert store.second_start.wait(10.0), "the second caller never reached start_run"
        raise RuntimeError("card declined")

    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def call() -> None:
        barrier.wait(5.0)
        try:
            Executor(store).execute(flow, {"order": 2}, workflow_id="order-2", max_attempts=1)
        except pgflow.WorkflowError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30.0)

    assert calls == Counter({"charge": 1})
    assert sorted(type(error).__name__ for error in errors) == ["StepFailed", "WorkflowError"]
    (followed,) = [error for error in errors if type(error) is pgflow.WorkflowError]
    assert "failed in another caller on attempt 1" in str(followed)
    assert "card declined" in str(followed)


class _InterloperClock(pgflow.FakeClock):
    """A fake clock on which another caller completes the run during the backoff wait."""

    def __init__(self, backend: Backend, workflow_id: str) -> None:
        super().__init__()
        self.backend = backend
        self.workflow_id = workflow_id

    def sleep(self, seconds: float) -> None:
        super().sleep(seconds)
        if self.backend.start_attempt(self.workflow_id, 2):
            self.backend.finish_run(
                self.workflow_id, 2, RunState.COMPLETED, output={"done_by": "other"}
            )


def test_a_caller_waking_from_backoff_does_not_reopen_a_run_completed_meanwhile(
    backend: Backend,
) -> None:
    calls = Counter[str]()
    flow = pgflow.Flow("flaky_once")

    @flow.step
    def flaky(state: Any) -> Any:
        calls["flaky"] += 1
        if calls["flaky"] == 1:
            raise ConnectionError("transient")
        return {"done_by": "this caller"}

    clock = _InterloperClock(backend, "wake-1")
    result = Executor(backend, clock=clock).execute(flow, {}, workflow_id="wake-1")

    assert result == {"done_by": "other"}
    assert calls == Counter({"flaky": 1})
    run = backend.get_run("wake-1")
    assert run is not None
    assert (run.state, run.attempt, run.output) == (RunState.COMPLETED, 2, {"done_by": "other"})


def test_a_completed_run_returns_its_output_without_running_anything(backend: Backend) -> None:
    calls = Counter[str]()
    flow = pgflow.Flow("once")

    @flow.step
    def only(state: dict[str, Any]) -> dict[str, Any]:
        calls["only"] += 1
        return {"n": state["n"] * 2}

    executor = Executor(backend)
    assert executor.execute(flow, {"n": 2}, workflow_id="once-1") == {"n": 4}
    assert executor.execute(flow, {"n": 2}, workflow_id="once-1") == {"n": 4}
    assert calls == Counter({"only": 1})
    run = backend.get_run("once-1")
    assert run is not None and run.attempt == 1


def test_a_workflow_id_longer_than_the_column_is_refused_before_anything_runs(
    backend: Backend,
) -> None:
    ran: list[str] = []
    flow = pgflow.Flow("long_id")
    flow.add_step("mark", lambda state: ran.append("mark"))
    long_id = "order-" + "9" * 59

    with pytest.raises(pgflow.DefinitionError, match=f"invalid workflow_id '{long_id}'"):
        pgflow.execute(flow, {}, backend=backend, workflow_id=long_id)
    assert ran == [] and backend.list_runs() == []


# -- definitions and inputs ---------------------------------------------------------------------


def _chain(name: str, steps: list[str], calls: Counter[str], *, failing: str = "") -> pgflow.Flow:
    """A chain of steps passing the state on; `failing` raises every time, once per call."""
    flow = pgflow.Flow(name)
    for step in steps:

        def run(state: Any, step: str = step) -> Any:
            calls[step] += 1
            if step == failing:
                raise RuntimeError(f"{step} is down")
            return [*state, step]

        flow.add_step(step, run)
    return flow


def _failed_run(backend: Backend, steps: list[str], failing: str, workflow_id: str) -> None:
    flow = _chain("orders", steps, Counter(), failing=failing)
    with pytest.raises(pgflow.StepFailed):
        Executor(backend).execute(flow, [], workflow_id=workflow_id, max_attempts=1)


@pytest.mark.parametrize(
    ("before", "failing", "after", "change"),
    [
        (["a", "b", "c"], "b", ["a", "x", "c"], "step 'b' renamed to 'x'"),
        (["x", "y"], "y", ["z", "x", "y"], "step 'z' inserted before completed step 'x'"),
        (["a", "b", "c"], "b", ["a", "c"], "step 'b' removed"),
        (["a", "b"], "b", ["a", "b", "d"], "step 'd' inserted at the end"),
        (["a", "b"], "b", ["b", "a"], "steps reordered from \\['a', 'b'\\] to \\['b', 'a'\\]"),
    ],
)
def test_a_resume_under_another_definition_is_refused_naming_the_change(
    backend: Backend, before: list[str], failing: str, after: list[str], change: str
) -> None:
    _failed_run(backend, before, failing, "def-1")
    calls = Counter[str]()

    with pytest.raises(pgflow.DefinitionError, match=rf"run def-1 .*{change}"):
        Executor(backend).execute(_chain("orders", after, calls), [], workflow_id="def-1")
    assert calls == Counter()
    run = backend.get_run("def-1")
    assert run is not None and (run.state, run.attempt) == (RunState.FAILED, 1)


def test_the_definition_and_its_fingerprint_are_stored_with_the_run(backend: Backend) -> None:
    flow = _chain("orders", ["a", "b"], Counter())
    Executor(backend).execute(flow, [], workflow_id="def-2")

    run = backend.get_run("def-2")
    assert run is not None
    assert run.definition == {"kind": "chain", "steps": ["a", "b"]}
    assert run.fingerprint == flow.workflow.fingerprint and len(run.fingerprint) == 64
    # Step options are not part of the shape: changing them changes nothing stored.
    tuned = pgflow.Flow("orders")
    tuned.add_step("a", lambda s: s, timeout=5.0)
    tuned.add_step("b", lambda s: s, max_attempts=9)
    assert tuned.workflow.fingerprint == flow.workflow.fingerprint


def test_a_completed_run_is_returned_even_under_a_new_definition(backend: Backend) -> None:
    Executor(backend).execute(_chain("orders", ["a", "b"], Counter()), [], workflow_id="def-3")
    calls = Counter[str]()

    result = Executor(backend).execute(_chain("orders", ["a", "c"], calls), [], workflow_id="def-3")

    assert result == ["a", "b"] and calls == Counter()


def test_a_run_stored_without_a_fingerprint_resumes_as_before(backend: Backend) -> None:
    backend.start_run(workflow_id="legacy-1", workflow="orders", input=[], max_attempts=1)
    backend.finish_run("legacy-1", 1, RunState.FAILED, error={"kind": "X", "message": "m"})
    calls = Counter[str]()

    flow = _chain("orders", ["a", "b"], calls)
    result = Executor(backend).execute(flow, [], workflow_id="legacy-1")

    assert result == ["a", "b"] and calls == Counter({"a": 1, "b": 1})


def test_a_resume_with_another_input_is_refused(backend: Backend) -> None:
    _failed_run(backend, ["a", "b"], "b", "input-1")
    calls = Counter[str]()
    flow = _chain("orders", ["a", "b"], calls)

    with pytest.raises(pgflow.WorkflowError, match=r"run input-1 .* another input") as caught:
        Executor(backend).execute(flow, ["other"], workflow_id="input-1")
    assert caught.value.workflow_id == "input-1"
    assert calls == Counter()


def test_the_same_input_in_another_key_order_resumes(backend: Backend) -> None:
    flow = pgflow.Flow("keyed")
    flow.add_step("first", lambda state: {**state, "first": True})
    executor = Executor(backend)
    executor.execute(flow, {"a": 1, "b": {"x": 1, "y": 2}}, workflow_id="keys-1")

    again = executor.execute(flow, {"b": {"y": 2, "x": 1}, "a": 1}, workflow_id="keys-1")

    assert again == {"a": 1, "b": {"x": 1, "y": 2}, "first": True}


def test_an_input_with_non_string_keys_resumes_as_the_same_input(backend: Backend) -> None:
    calls = Counter[str]()
    flow = pgflow.Flow("mixed_keys")
    flow.add_step("first", lambda state: calls.update(["first"]) or "done")
    executor = Executor(backend)
    with pytest.raises(pgflow.StepFailed):
        broken = pgflow.Flow("mixed_keys")
        broken.add_step("first", lambda state: 1 / 0)
        executor.execute(broken, {1: "one", "b": 2}, workflow_id="keys-3", max_attempts=1)

    assert executor.execute(flow, {1: "one", "b": 2}, workflow_id="keys-3") == "done"
    assert calls == Counter({"first": 1})


# -- workflow jobs: step retries are scheduled, never slept --------------------------------------

JOB_CALLS = Counter[str]()
retrying = pgflow.Flow("retrying_in_a_job")


@retrying.step
def prepare(state: dict[str, Any]) -> dict[str, Any]:
    JOB_CALLS["prepare"] += 1
    return {**state, "prepared": True}


@retrying.step(max_attempts=3)
def call_api(state: dict[str, Any]) -> dict[str, Any]:
    JOB_CALLS["call_api"] += 1
    if JOB_CALLS["call_api"] <= state["failures"]:
        raise ConnectionError("try again")
    return {**state, "called": True}


RetryingWorker = pgflow.workflow_worker(retrying, queue="flows", max_attempts=1)


def test_a_step_retry_inside_a_workflow_job_is_a_scheduled_snooze() -> None:
    JOB_CALLS.clear()
    with testing.manual() as t:
        assert isinstance(t.clock, pgflow.FakeClock)
        started = t.clock.now()
        job = t.app.insert(RetryingWorker.new({"failures": 2}))

        drained = t.drain("flows", with_scheduled=True)

        assert (drained.snoozed, drained.completed) == (2, 1)
        assert dict(JOB_CALLS) == {"prepare": 1, "call_api": 3}
        assert t.clock.now() - started == timedelta(seconds=10 + 100)  # the default backoff
        done = t.backend.get_job(job.id)
        assert done is not None and (done.state, done.attempt) == (JobState.COMPLETED, 1)
        run = t.backend.get_run(f"job-{job.id}")
        assert run is not None and (run.state, run.attempt) == (RunState.COMPLETED, 3)
        outcomes = [(s.step, s.outcome) for s in t.backend.get_steps(run.workflow_id)]
        assert outcomes == [
            ("prepare", StepOutcome.COMPLETED),
            ("call_api", StepOutcome.FAILED),
            ("call_api", StepOutcome.FAILED),
            ("call_api", StepOutcome.COMPLETED),
        ]


def test_a_workflow_job_fails_when_the_step_is_out_of_attempts() -> None:
    JOB_CALLS.clear()
    with testing.manual() as t:
        job = t.app.insert(RetryingWorker.new({"failures": 5}))

        drained = t.drain("flows", with_scheduled=True, raise_on_failure=False)

        assert (drained.snoozed, drained.discarded) == (2, 1)
        assert dict(JOB_CALLS) == {"prepare": 1, "call_api": 3}
        done = t.backend.get_job(job.id)
        assert done is not None and done.state is JobState.DISCARDED
        assert "MaxAttemptsExceeded" in done.errors[-1]["kind"]
        run = t.backend.get_run(f"job-{job.id}")
        assert run is not None and run.state is RunState.FAILED
