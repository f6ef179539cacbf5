"""Distributed flow runs through the app on every backend: `start_run` stores the run, the
instance's producers run each step as a task job, and the handle reads the result."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

import pgflow
from pgflow import Pgflow
from pgflow.errors import BackendError, DefinitionError, StepFailed, WorkflowError
from pgflow.graph.registry import flows
from pgflow.records import JobState, StepStatus
from tests.waiting import wait_or_fail


@pytest.fixture(
    params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)],
)
def app_url(request: pytest.FixtureRequest) -> str:
    """memory://, a fresh SQLite file, or the shared PostgreSQL test database emptied."""
    if request.param == "memory":
        return "memory://"
    if request.param == "sqlite":
        return str(request.getfixturevalue("sqlite_url"))
    from tests.conftest import _empty_pgflow_tables

    url = str(request.getfixturevalue("shared_postgres_url"))
    _empty_pgflow_tables(url)
    return url


@pytest.fixture
def app(app_url: str) -> Iterator[Pgflow]:
    app = Pgflow(app_url, poll_interval=0.05, instance_id="flows", queues={"default": 10})
    app.migrate()
    app.start()
    try:
        yield app
    finally:
        app.close()


def _name(prefix: str) -> str:
    """A flow name unique to the test: the registry is process-wide."""
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def test_chain_of_three_steps(app: Pgflow) -> None:
    flow = pgflow.Flow(_name("chain"))

    @flow.step
    def one(x: int) -> int:
        return x + 1

    @flow.step
    def two(x: int) -> int:
        return x * 10

    @flow.step
    def three(x: int) -> str:
        return f"got {x}"

    handle = app.start_run(flow, 4)
    assert handle.result(timeout=20) == "got 50"
    run = handle.status()
    assert [s.state for s in run.steps.values()] == [StepStatus.COMPLETED] * 3
    stored = app.get_run(handle.workflow_id)
    assert stored is not None and stored.steps["two"].output == 50


def test_diamond(app: Pgflow) -> None:
    flow = pgflow.Flow(_name("diamond"))

    @flow.step
    def fetch(input: dict[str, Any]) -> str:
        return f"text of {input['url']}"

    @flow.step(depends_on=["fetch"])
    def left(fetch: str) -> str:
        return fetch.upper()

    @flow.step(depends_on=["fetch"])
    def right(fetch: str) -> int:
        return len(fetch)

    @flow.step(depends_on=["left", "right"])
    def join(left: str, right: int, input: Any = None) -> str:
        return f"{left}/{right}/{input['url']}"

    handle = app.start_run(flow, {"url": "u1"})
    assert handle.result(timeout=20) == {"join": "TEXT OF U1/10/u1"}


def test_map_of_ten(app: Pgflow) -> None:
    flow = pgflow.Flow(_name("map"))

    @flow.step
    def items(count: int) -> list[int]:
        return list(range(count))

    @flow.map(over="items")
    def square(item: int) -> int:
        return item * item

    @flow.step(depends_on=["square"])
    def total(square: list[int]) -> int:
        return sum(square)

    handle = app.start_run(flow, 10)
    assert handle.result(timeout=20) == {"total": 285}
    run = handle.status()
    assert run.steps["square"].output == [n * n for n in range(10)]
    assert run.steps["square"].tasks_total == 10


def test_when_false_skips_the_step_and_its_dependents(app: Pgflow) -> None:
    flow = pgflow.Flow(_name("when"))

    @flow.step
    def account(input: dict[str, Any]) -> dict[str, Any]:
        return {"plan": input["plan"]}

    @flow.step(depends_on=["account"], when=lambda account: account["plan"] == "premium")
    def premium(account: dict[str, Any]) -> str:
        return "premium ready"

    @flow.step(depends_on=["premium"])
    def mail(premium: str) -> str:
        return f"mail: {premium}"

    @flow.step(depends_on=["account"])
    def welcome(account: dict[str, Any]) -> str:
        return "welcome"

    handle = app.start_run(flow, {"plan": "free"})
    assert handle.result(timeout=20) == {"welcome": "welcome"}
    steps = handle.status().steps
    assert steps["premium"].state is StepStatus.SKIPPED
    assert steps["premium"].skip_reason == "when returned false"
    assert steps["mail"].state is StepStatus.SKIPPED


def test_a_failing_step_fails_the_run(app: Pgflow) -> None:
    flow = pgflow.Flow(_name("failing"))

    @flow.step
    def first(x: int) -> int:
        return x

    @flow.step(max_attempts=1)
    def boom(x: int) -> int:
        raise ValueError(f"bad value {x}")

    handle = app.start_run(flow, 3)
    with pytest.raises(StepFailed) as caught:
        handle.result(timeout=20)
    assert caught.value.step == "boom"
    assert "bad value 3" in str(caught.value)
    assert handle.status().steps["boom"].state is StepStatus.FAILED


def test_start_is_idempotent_and_refuses_another_input(app: Pgflow) -> None:
    flow = pgflow.Flow(_name("idem"))

    @flow.step
    def only(x: int) -> int:
        return x * 2

    first = app.start_run(flow, 5, workflow_id="run-idem")
    again = app.start_run(flow, 5, workflow_id="run-idem")
    assert again.workflow_id == first.workflow_id
    assert first.result(timeout=20) == 10
    tasks = [j for j in app.backend.list_jobs() if j.task is not None]  # type: ignore[attr-defined]
    assert len(tasks) == 1
    with pytest.raises(WorkflowError, match="another input"):
        app.start_run(flow, 6, workflow_id="run-idem")


def test_another_definition_under_the_same_id_is_refused(app: Pgflow) -> None:
    name = _name("redef")
    old = pgflow.Flow(name, version="1")

    @old.step
    def a(x: int) -> int:
        return x

    new = pgflow.Flow(name, version="2")

    @new.step
    def b(x: int) -> int:
        return x

    app.start_run(old, 1, workflow_id="run-redef").result(timeout=20)
    with pytest.raises(DefinitionError, match="another definition"):
        app.start_run(new, 1, workflow_id="run-redef")


def test_result_times_out_while_the_run_waits(app: Pgflow) -> None:
    flow = pgflow.Flow(_name("slow"), queue="nobody-serves-this")

    @flow.step
    def only(x: int) -> int:
        return x

    handle = app.start_run(flow, 1)
    with pytest.raises(TimeoutError):
        handle.result(timeout=0.05)
    assert handle.status().steps["only"].state is StepStatus.STARTED


def test_unknown_definition_is_snoozed_without_an_attempt(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from pgflow.records import NewJob, TaskKey

    app = Pgflow("memory://", poll_interval=0.05, instance_id="unknown-def")
    name = _name("ghost")
    job = NewJob(
        worker=f"pgflow.flow:{name}",
        args={"fingerprint": "f" * 64, "args": [1], "kwargs": {}},
        queue="default",
        max_attempts=3,
        task=TaskKey("ghost-run", "only", 0),
    )
    stored = app.backend.insert_jobs([job])[0]
    with caplog.at_level(logging.WARNING, logger="pgflow.runtime"):
        app.start()
        try:
            wait_or_fail(
                lambda: (j := app.get_job(stored.id)) is not None and j.state is JobState.SCHEDULED,
                "the task job to be snoozed",
            )
        finally:
            app.stop()
    snoozed = app.get_job(stored.id)
    app.close()
    assert snoozed is not None and snoozed.attempt == 0
    assert any(name in r.getMessage() and "f" * 64 in r.getMessage() for r in caplog.records)


class _JobsOnlyBackend:
    """A third-party backend: the whole Backend protocol, but no FlowStore methods."""

    _FLOW_METHODS = frozenset(
        (
            "start_flow_run",
            "complete_tasks",
            "get_step_states",
            "fail_run",
            "wait_for_run",
            "running_flows",
        )
    )

    def __init__(self) -> None:
        from pgflow_backends.memory import InMemoryBackend

        self._inner = InMemoryBackend()

    def __getattr__(self, name: str) -> Any:
        if name in self._FLOW_METHODS:
            raise AttributeError(name)
        return getattr(self._inner, name)


def test_a_backend_without_flow_store_is_refused() -> None:
    backend = _JobsOnlyBackend()
    assert not isinstance(backend, pgflow.FlowStore)
    app = Pgflow(backend)
    flow = pgflow.Flow(_name("nostore"))

    @flow.step
    def only(x: int) -> int:
        return x

    try:
        with pytest.raises(BackendError, match=r"_JobsOnlyBackend.*no pgflow\.FlowStore"):
            app.start_run(flow, 1)
    finally:
        backend.close()


def test_started_flows_are_served() -> None:
    flow = pgflow.Flow(_name("served"))

    @flow.step
    def only(x: int) -> int:
        return x

    assert (flow.name, flow.workflow.fingerprint) in flows.served()


def test_retries_use_the_step_backoff_then_max_attempts_exceeded(app: Pgflow) -> None:
    flow = pgflow.Flow(_name("retry"))
    calls: list[int] = []

    @flow.step(max_attempts=2, backoff=pgflow.Backoff(base=1.0, factor=0.01))
    def flaky(x: int) -> int:
        calls.append(x)
        raise RuntimeError(f"attempt {len(calls)} failed")

    handle = app.start_run(flow, 1)
    with pytest.raises(pgflow.MaxAttemptsExceeded) as caught:
        handle.result(timeout=20)
    assert caught.value.attempts == 2
    assert "attempt 2 failed" in str(caught.value)
    assert len(calls) == 2


def test_the_instance_registers_the_flows_it_serves(app: Pgflow) -> None:
    flow = pgflow.Flow(_name("listed"))

    @flow.step
    def only(x: int) -> int:
        return x

    app.start_run(flow, 1).result(timeout=20)
    app.stop()
    app.start()
    [instance] = app.status().instances
    assert (flow.name, flow.workflow.fingerprint) in instance.flows


def test_a_task_row_with_a_malformed_envelope_is_discarded_not_retried() -> None:
    """A hand-edited or foreign task row must not reach the step, nor be retried."""
    from datetime import UTC, datetime

    from pgflow.records import JobState, TaskKey
    from pgflow.runtime.execution import OutcomeKind
    from pgflow.runtime.flow_tasks import execute_task

    flow = pgflow.Flow(f"malformed_{uuid.uuid4().hex[:8]}")
    calls: list[object] = []

    @flow.step
    def first(input: object) -> object:
        calls.append(input)
        return input

    @flow.step(depends_on=["first"])
    def second(first: object) -> object:
        return first

    fingerprint = flow.workflow.fingerprint
    now = datetime.now(UTC)
    for args, step in (
        ({"fingerprint": fingerprint, "args": 5, "kwargs": {}}, "first"),
        ({"fingerprint": fingerprint, "args": [1, 2], "kwargs": {}}, "first"),
        ({"fingerprint": fingerprint, "args": [], "kwargs": [1]}, "second"),
        ({"fingerprint": fingerprint, "args": [1], "kwargs": {}}, "no_such_step"),
    ):
        job = pgflow.Job(
            id=1,
            queue="default",
            worker=flow.plan.worker,
            args=args,
            state=JobState.EXECUTING,
            priority=0,
            attempt=1,
            max_attempts=3,
            scheduled_at=now,
            inserted_at=now,
            attempted_at=now,
            task=TaskKey("run-1", step, 0),
        )
        outcome = execute_task(job)
        assert outcome.kind is OutcomeKind.DISCARDED, (args, step, outcome)
    assert calls == []


def test_the_completing_instance_claims_the_next_step_in_the_same_transaction(
    app_url: str,
) -> None:
    if app_url.startswith("sqlite"):
        pytest.skip("SQLite's clock moves between statements of one transaction")
    # A long poll interval: no poll tick starts a claim of its own while the steps run (a
    # claim in flight holds the free slots, and the successor claim would find none).
    app = Pgflow(app_url, poll_interval=30.0, instance_id="flows", queues={"default": 10})
    app.migrate()
    app.start()
    flow = pgflow.Flow(_name("successor"))

    @flow.step
    def first(x: int) -> int:
        return x + 1

    @flow.step
    def second(x: int) -> int:
        return x + 1

    @flow.step
    def third(x: int) -> int:
        return x + 1

    try:
        handle = app.start_run(flow, 1)
        assert handle.result(timeout=20) == 4
        jobs = {j.task.step: j for j in app.backend.list_jobs() if j.task is not None}
    finally:
        app.close()
    # Claimed by the transaction that completed its predecessor: one timestamp for both
    # (a claim of its own, after a wake-up, would come later).
    assert jobs["second"].attempted_at == jobs["first"].completed_at
    assert jobs["third"].attempted_at == jobs["second"].completed_at
    assert jobs["third"].reserved_by == "flows"


def test_successor_claims_and_claims_together_keep_the_queue_limit(app_url: str) -> None:
    limit = 2
    app = Pgflow(app_url, poll_interval=0.05, instance_id="limited", queues={"default": limit})
    app.migrate()
    app.start()
    lock = threading.Lock()
    running = [0]
    highest = [0]
    flow = pgflow.Flow(_name("limited"))

    @flow.step
    def items(input: int) -> list[int]:
        return list(range(input))

    @flow.map(over="items")
    def work(item: int) -> int:
        with lock:
            running[0] += 1
            highest[0] = max(highest[0], running[0])
        time.sleep(0.005)  # stands in for real work, so tasks overlap
        with lock:
            running[0] -= 1
        return item

    @flow.step(depends_on=["work"])
    def total(work: list[int]) -> int:
        return sum(work)

    try:
        handles = [app.start_run(flow, 12) for _ in range(3)]
        assert [h.result(timeout=60) for h in handles] == [{"total": 66}] * 3
    finally:
        app.close()
    assert highest[0] <= limit


def test_cancel_run_stops_a_running_step_and_result_raises_run_cancelled(app: Pgflow) -> None:
    started = threading.Event()
    stopped = threading.Event()
    flow = pgflow.Flow(_name("cancel"))

    @flow.step
    async def slow(x: int) -> int:
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            stopped.set()  # an async step is cancelled where it awaits
            raise
        return x

    @flow.step
    def after(x: int) -> int:
        return x

    handle = app.start_run(flow, 1)
    assert started.wait(20)
    run = app.cancel_run(handle.workflow_id)
    assert run.state is pgflow.RunState.CANCELLED
    assert run.steps["after"].state is StepStatus.CANCELLED
    with pytest.raises(pgflow.RunCancelled, match="was cancelled"):
        handle.result(timeout=5)
    with pytest.raises(pgflow.RunStateError, match="is cancelled"):
        app.cancel_run(handle.workflow_id)
    with pytest.raises(pgflow.RunStateError, match="not stored"):
        app.cancel_run("no-such-run")
    assert stopped.wait(20)
    wait_or_fail(
        lambda: all(j.state is JobState.CANCELLED for j in app.backend.list_jobs()),
        "the running task to end cancelled",
    )


@pytest.mark.parametrize("bad_id", ["a\x00b", "x" * 65, ""])
def test_ids_no_run_could_have_are_unknown_runs_not_database_errors(
    app: Pgflow, bad_id: str
) -> None:
    """PostgreSQL refuses NUL in text and an oversized id fits no row: a lookup by such an
    id is an unknown run on every backend, never a BackendError from the driver."""
    assert app.get_run(bad_id) is None
    with pytest.raises(pgflow.RunStateError, match="is not stored"):
        app.cancel_run(bad_id)
    with pytest.raises(pgflow.RunStateError, match="is not stored"):
        app.resume_run(bad_id)
    with pytest.raises(pgflow.RunStateError, match="is not stored"):
        app.restart_run(bad_id)
    with pytest.raises(pgflow.SignalError, match="is not stored"):
        app.signal(bad_id, "approval", 1)


@pytest.mark.parametrize("bad_id", [0, -1, 2**63, 2**70])
def test_job_ids_no_job_could_have_find_nothing(app: Pgflow, bad_id: int) -> None:
    assert app.get_job(bad_id) is None
    assert app.cancel(bad_id) is None
    assert app.retry(bad_id) is None


def test_a_workflow_id_with_a_nul_is_refused_at_start(app: Pgflow) -> None:
    flow = pgflow.Flow(_name("nul_id"))

    @flow.step
    def only(value: Any) -> Any:
        return value

    with pytest.raises(pgflow.DefinitionError, match="NUL character"):
        app.start_run(flow, 1, workflow_id="a\x00b")
    assert app.list_runs(flow=flow) == []


def test_a_sync_task_finishing_after_its_run_was_cancelled_is_logged_as_counting_nothing(
    app: Pgflow, caplog: pytest.LogCaptureFixture
) -> None:
    """Its job completes but its result counts nothing: that is the expected end of a
    cancelled run's running task, logged at INFO, not a fencing warning."""
    started, release = threading.Event(), threading.Event()
    flow = pgflow.Flow(_name("late_sync"))

    @flow.step
    def slow(x: int) -> int:
        started.set()
        release.wait(20)
        return x

    @flow.step
    def after(x: int) -> int:
        return x

    handle = app.start_run(flow, 1)
    assert started.wait(20)
    caplog.set_level(logging.INFO, logger="pgflow.runtime")
    app.cancel_run(handle.workflow_id)
    release.set()
    wait_or_fail(
        lambda: any("counted nothing" in r.getMessage() for r in caplog.records),
        "the late task's outcome to be logged",
    )
    late = [r for r in caplog.records if "counted nothing" in r.getMessage()]
    assert [r.levelno for r in late] == [logging.INFO]
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert not [r for r in warnings if r.name.startswith("pgflow")], warnings
    assert app.get_run(handle.workflow_id).steps["slow"].state is StepStatus.CANCELLED
