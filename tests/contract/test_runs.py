"""Workflow runs and step results: creation, attempts, fencing, JSON-only values, listing."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

import pytest

from pgflow.backend import Backend
from pgflow.errors import DefinitionError, SerializationError
from pgflow.records import RunState, StepOutcome, StepRecord


def _step(
    workflow_id: str, index: int, attempt: int = 1, output: object = None, **fields: object
) -> StepRecord:
    values: dict[str, object] = {
        "workflow_id": workflow_id,
        "step": f"step{index}",
        "index": index,
        "attempt": attempt,
        "outcome": StepOutcome.COMPLETED,
        "started_at": datetime.now(UTC),
        "duration": 0.001,
        "output": output,
    }
    values.update(fields)
    return StepRecord(**values)  # type: ignore[arg-type]


def test_start_run_creates_a_running_run(backend: Backend) -> None:
    run, created = backend.start_run(
        workflow_id="wf-1", workflow="tests.Flow", input={"data": [1, 2]}, max_attempts=3, job_id=7
    )

    assert created is True
    assert (run.workflow_id, run.workflow, run.state) == ("wf-1", "tests.Flow", RunState.RUNNING)
    assert (run.attempt, run.max_attempts, run.job_id) == (1, 3, 7)
    assert run.input == {"data": [1, 2]}
    assert (run.output, run.error, run.finished_at) == (None, None, None)
    assert run.started_at.utcoffset() is not None
    assert backend.get_run("wf-1") == run


def test_start_run_on_an_existing_id_returns_it_unchanged(backend: Backend) -> None:
    first, _ = backend.start_run(workflow_id="wf-1", workflow="tests.Flow", input=1, max_attempts=3)
    backend.start_attempt("wf-1", 2)

    again, created = backend.start_run(
        workflow_id="wf-1", workflow="other", input=2, max_attempts=9, fingerprint="f" * 64
    )

    assert created is False
    assert again.fingerprint is None
    assert again.workflow_id == first.workflow_id
    assert (again.workflow, again.input, again.max_attempts) == ("tests.Flow", 1, 3)
    assert again.attempt == 2
    assert len(backend.list_runs()) == 1


def test_steps_are_recorded_in_order_with_their_outputs(backend: Backend) -> None:
    backend.start_run(workflow_id="wf-1", workflow="tests.Flow", input={}, max_attempts=3)
    error = {"kind": "ValueError", "message": "bad"}

    assert backend.record_step(_step("wf-1", 0, output={"a": 1}))
    assert backend.record_step(_step("wf-1", 1, outcome=StepOutcome.FAILED, error=error))

    steps = backend.get_steps("wf-1")
    assert [(s.step, s.index, s.attempt, s.outcome) for s in steps] == [
        ("step0", 0, 1, StepOutcome.COMPLETED),
        ("step1", 1, 1, StepOutcome.FAILED),
    ]
    assert steps[0].output == {"a": 1}
    assert steps[1].error == error
    assert steps[0].duration == pytest.approx(0.001)
    assert steps[0].started_at.utcoffset() is not None


def test_record_step_is_fenced_by_the_runs_attempt(backend: Backend) -> None:
    backend.start_run(workflow_id="wf-1", workflow="tests.Flow", input={}, max_attempts=3)
    backend.start_attempt("wf-1", 2)

    assert backend.record_step(_step("wf-1", 0, attempt=1)) is False
    assert backend.record_step(_step("wf-1", 0, attempt=2)) is True
    assert backend.record_step(_step("no-such-run", 0)) is False

    assert [s.attempt for s in backend.get_steps("wf-1")] == [2]
    run = backend.get_run("wf-1")
    assert run is not None and (run.attempt, run.state) == (2, RunState.RUNNING)


def test_finish_run_completes_once_and_fences_later_writes(backend: Backend) -> None:
    backend.start_run(workflow_id="wf-1", workflow="tests.Flow", input={}, max_attempts=3)

    assert backend.finish_run("wf-1", 2, RunState.COMPLETED, output="wrong") is False
    assert backend.finish_run("wf-1", 1, RunState.COMPLETED, output={"done": True}) is True

    run = backend.get_run("wf-1")
    assert run is not None
    assert (run.state, run.output) == (RunState.COMPLETED, {"done": True})
    assert run.finished_at is not None and run.finished_at >= run.started_at
    assert backend.record_step(_step("wf-1", 3)) is False  # an abandoned attempt, too late
    assert backend.get_steps("wf-1") == []


def test_finish_run_failed_keeps_the_error(backend: Backend) -> None:
    backend.start_run(workflow_id="wf-1", workflow="tests.Flow", input={}, max_attempts=1)
    error = {"kind": "StepFailed", "step": "validate", "message": "missing data"}

    assert backend.finish_run("wf-1", 1, RunState.FAILED, error=error) is True

    run = backend.get_run("wf-1")
    assert run is not None and (run.state, run.error, run.output) == (RunState.FAILED, error, None)


def test_non_json_values_raise_and_write_nothing(backend: Backend) -> None:
    with pytest.raises(SerializationError, match="when"):
        backend.start_run(
            workflow_id="wf-bad", workflow="w", input={"when": datetime.now(UTC)}, max_attempts=1
        )
    assert backend.get_run("wf-bad") is None

    backend.start_run(workflow_id="wf-1", workflow="w", input={}, max_attempts=1)
    with pytest.raises(SerializationError, match="blob"):
        backend.record_step(_step("wf-1", 0, output={"blob": b"\x00"}))
    assert backend.get_steps("wf-1") == []

    with pytest.raises(SerializationError):
        backend.finish_run("wf-1", 1, RunState.COMPLETED, output={"s": {1, 2}})
    run = backend.get_run("wf-1")
    assert run is not None and run.state is RunState.RUNNING


def test_list_runs_is_newest_first_and_filters(backend: Backend) -> None:
    for n, workflow in enumerate(["a", "b", "a"]):
        backend.start_run(workflow_id=f"wf-{n}", workflow=workflow, input=n, max_attempts=1)
        time.sleep(0.01)
    backend.finish_run("wf-2", 1, RunState.COMPLETED, output=None)

    assert [r.workflow_id for r in backend.list_runs()] == ["wf-2", "wf-1", "wf-0"]
    assert [r.workflow_id for r in backend.list_runs(workflow="a")] == ["wf-2", "wf-0"]
    assert [r.workflow_id for r in backend.list_runs(state=RunState.RUNNING)] == ["wf-1", "wf-0"]
    assert [r.workflow_id for r in backend.list_runs(limit=1)] == ["wf-2"]


def test_unknown_runs_read_as_nothing(backend: Backend) -> None:
    assert backend.get_run("nope") is None
    assert backend.get_steps("nope") == []
    assert backend.list_runs() == []


def test_a_run_cannot_finish_as_running(backend: Backend) -> None:
    backend.start_run(workflow_id="wf-running", workflow="flows.x", input={}, max_attempts=1)
    with pytest.raises(DefinitionError, match="completed or failed, not 'running'"):
        backend.finish_run("wf-running", 1, RunState.RUNNING)
    run = backend.get_run("wf-running")
    assert run is not None and run.state is RunState.RUNNING


def test_start_run_stores_the_definition_and_its_fingerprint(backend: Backend) -> None:
    definition = {"kind": "chain", "steps": ["fetch", "total"]}
    backend.start_run(
        workflow_id="wf-1",
        workflow="w",
        input={},
        max_attempts=1,
        fingerprint="a" * 64,
        definition=definition,
    )
    backend.start_run(workflow_id="wf-old", workflow="w", input={}, max_attempts=1)

    run = backend.get_run("wf-1")
    assert run is not None and (run.fingerprint, run.definition) == ("a" * 64, definition)
    old = backend.get_run("wf-old")
    assert old is not None and (old.fingerprint, old.definition) == (None, None)


def test_start_attempt_is_a_compare_and_set_on_the_previous_attempt(backend: Backend) -> None:
    backend.start_run(workflow_id="wf-1", workflow="w", input={}, max_attempts=3)

    assert backend.start_attempt("wf-1", 2) is True
    assert backend.start_attempt("wf-1", 2) is False  # a second caller saw attempt 1 too
    assert backend.start_attempt("wf-1", 4) is False  # skipping an attempt is no CAS
    assert backend.start_attempt("no-such-run", 2) is False

    run = backend.get_run("wf-1")
    assert run is not None and (run.attempt, run.state) == (2, RunState.RUNNING)


def test_start_attempt_reopens_a_failed_run(backend: Backend) -> None:
    backend.start_run(workflow_id="wf-1", workflow="w", input={}, max_attempts=3)
    backend.finish_run("wf-1", 1, RunState.FAILED, error={"kind": "X", "message": "m"})

    assert backend.start_attempt("wf-1", 2) is True

    run = backend.get_run("wf-1")
    assert run is not None
    assert (run.state, run.attempt, run.error, run.finished_at) == (RunState.RUNNING, 2, None, None)


def test_a_completed_run_is_final(backend: Backend) -> None:
    backend.start_run(workflow_id="wf-1", workflow="w", input={}, max_attempts=3)
    backend.finish_run("wf-1", 1, RunState.COMPLETED, output={"done": True})

    assert backend.start_attempt("wf-1", 2) is False

    run = backend.get_run("wf-1")
    assert run is not None
    assert (run.state, run.attempt, run.output) == (RunState.COMPLETED, 1, {"done": True})
    assert run.finished_at is not None


def test_a_workflow_id_longer_than_64_characters_is_refused(backend: Backend) -> None:
    long_id = "w" * 65
    with pytest.raises(DefinitionError, match=r"workflow_id 'w+' \(65 characters\)"):
        backend.start_run(workflow_id=long_id, workflow="w", input={}, max_attempts=1)
    assert backend.list_runs() == []

    run, created = backend.start_run(workflow_id="w" * 64, workflow="w", input={}, max_attempts=1)
    assert created and run.workflow_id == "w" * 64


def test_concurrent_start_runs_of_one_id_create_it_once(backend: Backend) -> None:
    callers = 4
    barrier = threading.Barrier(callers)
    created: list[bool] = []
    lock = threading.Lock()

    def start() -> None:
        barrier.wait(5.0)
        _, made = backend.start_run(workflow_id="wf-race", workflow="w", input={}, max_attempts=1)
        with lock:
            created.append(made)

    threads = [threading.Thread(target=start) for _ in range(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10.0)

    assert sorted(created) == [False] * (callers - 1) + [True]


def test_concurrent_start_attempts_from_one_attempt_have_one_winner(backend: Backend) -> None:
    backend.start_run(workflow_id="wf-race", workflow="w", input={}, max_attempts=3)
    callers = 4
    barrier = threading.Barrier(callers)
    won: list[bool] = []
    lock = threading.Lock()

    def take_over() -> None:
        barrier.wait(5.0)
        result = backend.start_attempt("wf-race", 2)
        with lock:
            won.append(result)

    threads = [threading.Thread(target=take_over) for _ in range(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10.0)

    assert sorted(won) == [False] * (callers - 1) + [True]
