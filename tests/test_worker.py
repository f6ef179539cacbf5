"""Worker definitions and the semantics of running one job (pgflow.runtime.execution).

Everything runs on InMemoryBackend with a FakeClock: retries, Discard, Snooze, timeouts,
cancellation and async perform, through the same `run_job` the producers use.
"""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import pgflow
from pgflow.clock import FakeClock
from pgflow.records import Job, JobState, UniqueSpec
from pgflow.runtime.execution import JobControl, OutcomeKind, execute_job, failed_outcome, run_job
from pgflow.runtime.worker_lookup import WorkerLookup
from pgflow.worker import Worker, current_backend, resolve_worker
from pgflow_backends.memory import InMemoryBackend

QUICK = pgflow.Backoff(base=2.0, factor=1.0)  # 2 s, 4 s, 8 s... on the fake clock


class Echo(Worker, queue="echo", priority=3):
    def perform(self, job: Job) -> Any:
        return {"seen": job.args, "backend": current_backend() is not None}


class Flaky(Worker, max_attempts=3, backoff=QUICK):
    def perform(self, job: Job) -> Any:
        raise ValueError(f"boom {job.attempt}")


class Discarding(Worker):
    def perform(self, job: Job) -> Any:
        raise pgflow.Discard("not worth retrying")


class Snoozing(Worker):
    def perform(self, job: Job) -> Any:
        raise pgflow.Snooze(30)


class Slow(Worker, timeout=0.05, max_attempts=2, backoff=QUICK):
    def perform(self, job: Job) -> Any:
        # Cooperative code notices the deadline through `cancelled`.
        self.cancelled.wait(5)
        return "late"


class AsyncEcho(Worker):
    async def perform(self, job: Job) -> Any:
        await asyncio.sleep(0)
        return job.args["value"] * 2


class AsyncSlow(Worker, timeout=0.05):
    async def perform(self, job: Job) -> Any:
        await asyncio.sleep(5)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(datetime(2026, 3, 1, 12, 0, tzinfo=UTC))


@pytest.fixture
def memory(clock: FakeClock) -> InMemoryBackend:
    return InMemoryBackend(clock=clock)


def claim_one(backend: InMemoryBackend, queue: str = "default") -> Job:
    backend.stage_jobs()
    [job] = backend.claim_jobs(queue, "tester", 1)
    return job


# --- definitions ---------------------------------------------------------------------------


def test_options_are_class_keywords_with_defaults() -> None:
    assert Echo.options.queue == "echo"
    assert Echo.options.priority == 3
    assert Echo.options.max_attempts == 3
    assert Echo.options.timeout is None
    assert Echo.options.name == f"{__name__}.Echo"
    assert Echo.options.backoff == pgflow.Backoff()


def test_subclass_inherits_options_unless_overridden() -> None:
    class Child(Echo, max_attempts=7):
        pass

    assert Child.options.queue == "echo"
    assert Child.options.max_attempts == 7
    assert Child.options.name.endswith("Child")


def test_unknown_or_bad_options_raise_definition_error_naming_the_class() -> None:
    with pytest.raises(pgflow.DefinitionError, match=r"Typo.*unknown option.*queeu"):

        class Typo(Worker, queeu="x"):
            def perform(self, job: Job) -> None: ...

    with pytest.raises(pgflow.DefinitionError, match="max_attempts"):

        class Zero(Worker, max_attempts=0):
            def perform(self, job: Job) -> None: ...

    with pytest.raises(pgflow.DefinitionError, match="queue"):

        class BadQueue(Worker, queue="no spaces"):
            def perform(self, job: Job) -> None: ...

    with pytest.raises(pgflow.DefinitionError, match="backoff"):

        class BadBackoff(Worker, backoff=5):
            def perform(self, job: Job) -> None: ...


def test_new_builds_a_validated_new_job() -> None:
    when = datetime(2030, 1, 1, tzinfo=UTC)
    new = Echo.new({"a": 1}, priority=9, scheduled_at=when, unique={"keys": ["a"]}, meta={"m": 1})
    assert new.worker == Echo.options.name
    assert (new.queue, new.priority, new.max_attempts) == ("echo", 9, 3)
    assert new.scheduled_at == when
    assert new.unique is not None and new.unique.keys == ("a",)
    assert Echo.new(unique=True).unique == UniqueSpec()
    assert Echo.new().args == {}
    with pytest.raises(pgflow.DefinitionError, match="dict"):
        Echo.new(["not", "a", "dict"])  # type: ignore[arg-type]
    with pytest.raises(pgflow.DefinitionError, match="not both"):
        Echo.new(schedule_in=1, scheduled_at=when)
    with pytest.raises(pgflow.DefinitionError, match="timezone"):
        Echo.new(scheduled_at=datetime(2030, 1, 1))
    with pytest.raises(pgflow.DefinitionError, match="unknown unique"):
        Echo.new(unique={"period": 5, "colour": "red"})


def test_resolve_worker_by_name_and_by_allowed_import() -> None:
    assert resolve_worker(Echo.options.name) is Echo
    with pytest.raises(pgflow.DefinitionError, match="no_such_module"):
        resolve_worker("no_such_module.Worker", worker_modules=("no_such_module.",))


def test_backoff_delay_follows_the_policy() -> None:
    assert [Flaky.backoff_delay(n) for n in (1, 2, 3)] == [2.0, 4.0, 8.0]
    assert Echo.backoff_delay(1) == 10.0


# --- running one job -----------------------------------------------------------------------


def test_completed_job_is_acknowledged_with_the_backend_visible(memory: InMemoryBackend) -> None:
    memory.insert_jobs([Echo.new({"x": 1})])
    outcome = run_job(memory, claim_one(memory, "echo"), "tester")
    assert outcome.kind is OutcomeKind.COMPLETED
    assert outcome.value == {"seen": {"x": 1}, "backend": True}
    job = memory.get_job(outcome.job.id)
    assert job is not None and job.state is JobState.COMPLETED
    assert job.reserved_by == "tester"


def test_retry_then_discard_keeps_every_error(memory: InMemoryBackend, clock: FakeClock) -> None:
    [inserted] = memory.insert_jobs([Flaky.new()])
    kinds = []
    for expected_delay in (2.0, 4.0, None):
        outcome = run_job(memory, claim_one(memory), "tester", clock=clock)
        kinds.append(outcome.kind)
        assert outcome.retry_in == expected_delay
        job = memory.get_job(inserted.id)
        assert job is not None
        if expected_delay is not None:
            assert job.state is JobState.RETRYABLE
            # Not due before its backoff has passed.
            clock.advance(expected_delay - 0.5)
            memory.stage_jobs()
            assert memory.claim_jobs("default", "tester", 1) == []
            clock.advance(0.5)
    assert kinds == [OutcomeKind.RETRY, OutcomeKind.RETRY, OutcomeKind.DISCARDED]
    job = memory.get_job(inserted.id)
    assert job is not None and job.state is JobState.DISCARDED
    assert [e["attempt"] for e in job.errors] == [1, 2, 3]
    assert all(e["kind"] == "ValueError" and e["instance_id"] == "tester" for e in job.errors)
    assert job.errors[2]["message"] == "boom 3"
    assert "Traceback" in job.errors[0]["traceback"]


def test_discard_fails_at_once(memory: InMemoryBackend) -> None:
    memory.insert_jobs([Discarding.new()])
    outcome = run_job(memory, claim_one(memory), "tester")
    assert outcome.kind is OutcomeKind.DISCARDED
    job = memory.get_job(outcome.job.id)
    assert job is not None and job.state is JobState.DISCARDED and job.attempt == 1
    assert job.errors[0]["message"] == "not worth retrying"


def test_snooze_reschedules_without_counting_an_attempt(
    memory: InMemoryBackend, clock: FakeClock
) -> None:
    memory.insert_jobs([Snoozing.new()])
    first = run_job(memory, claim_one(memory), "tester")
    assert first.kind is OutcomeKind.SNOOZED
    clock.advance(29)
    memory.stage_jobs()
    assert memory.claim_jobs("default", "tester", 1) == []
    clock.advance(2)
    job = claim_one(memory)
    assert job.id == first.job.id
    assert job.errors == ()


def test_sync_timeout_is_a_failed_attempt_and_signals_cancelled(memory: InMemoryBackend) -> None:
    memory.insert_jobs([Slow.new()])
    control = JobControl()
    outcome = run_job(memory, claim_one(memory), "tester", control=control)
    assert outcome.kind is OutcomeKind.RETRY
    assert outcome.error is not None and outcome.error["kind"] == "TimeoutError"
    assert control.cancelled.is_set()


def test_async_perform_runs_and_times_out(memory: InMemoryBackend) -> None:
    memory.insert_jobs([AsyncEcho.new({"value": 21}), AsyncSlow.new()])
    done = run_job(memory, claim_one(memory), "tester")
    assert done.kind is OutcomeKind.COMPLETED and done.value == 42
    started = time.monotonic()
    late = run_job(memory, claim_one(memory), "tester")
    assert time.monotonic() - started < 4  # the 5 s sleep was cancelled, not awaited
    assert late.kind is OutcomeKind.RETRY
    assert late.error is not None and late.error["kind"] == "TimeoutError"


def test_cancelling_a_running_async_job_cancels_its_task(memory: InMemoryBackend) -> None:
    started = threading.Event()

    class Waits(Worker):
        async def perform(self, job: Job) -> Any:
            started.set()
            await asyncio.sleep(30)

    [inserted] = memory.insert_jobs([Waits.new()])
    job = claim_one(memory)
    control = JobControl()
    result: list[Any] = []
    runner = threading.Thread(
        target=lambda: result.append(run_job(memory, job, "tester", control=control))
    )
    runner.start()
    assert started.wait(5)
    cancelled = memory.cancel_job(inserted.id)
    assert cancelled is not None and cancelled.cancel_requested
    assert memory.cancel_requested([inserted.id]) == {inserted.id}
    control.cancel()
    runner.join(5)
    assert not runner.is_alive()
    assert result[0].kind is OutcomeKind.CANCELLED
    stored = memory.get_job(inserted.id)
    assert stored is not None and stored.state is JobState.CANCELLED


def test_cancelled_event_reaches_sync_perform(memory: InMemoryBackend) -> None:
    seen: list[bool] = []

    class Polls(Worker):
        def perform(self, job: Job) -> Any:
            seen.append(self.cancelled.wait(5))
            raise RuntimeError("stopped on request")

    memory.insert_jobs([Polls.new()])
    job = claim_one(memory)
    control = JobControl()
    control.cancel()
    outcome = execute_job(job, instance_id="tester", control=control)
    assert seen == [True]
    assert outcome.kind is OutcomeKind.CANCELLED


def test_unknown_worker_is_discarded_not_a_crash_when_lookup_does_not_snooze(
    memory: InMemoryBackend,
) -> None:
    memory.insert_jobs([pgflow.NewJob(worker="nowhere.Missing", max_attempts=3)])
    outcome = run_job(memory, claim_one(memory), "tester", lookup=WorkerLookup(snooze=None))
    assert outcome.kind is OutcomeKind.DISCARDED
    assert outcome.error is not None and "unknown worker" in outcome.error["message"]


def test_a_zombie_attempt_changes_nothing(memory: InMemoryBackend, clock: FakeClock) -> None:
    """The attempt was rescued (instance presumed dead) before it reported: fenced out."""
    memory.insert_jobs([Echo.new()])
    memory.register_instance(pgflow.records.InstanceInfo(instance_id="tester"))
    job = claim_one(memory, "echo")
    clock.advance(600)
    report = memory.rescue_stale(300)
    assert job.id in report.rescued
    late = run_job(memory, job, "tester")
    assert late.fenced
    stored = memory.get_job(job.id)
    assert stored is not None and stored.state is JobState.AVAILABLE


def test_error_timestamps_come_from_the_clock(memory: InMemoryBackend, clock: FakeClock) -> None:
    memory.insert_jobs([Discarding.new()])
    outcome = run_job(memory, claim_one(memory), "tester", clock=clock)
    assert outcome.error is not None
    at = datetime.fromisoformat(outcome.error["at"])
    assert abs(at - clock.now()) < timedelta(seconds=1)


# --- workflows as jobs ---------------------------------------------------------------------

STEP_CALLS: list[str] = []
flow = pgflow.Flow("resumable_flow")


@flow.step
def fetch(state: dict[str, Any]) -> dict[str, Any]:
    STEP_CALLS.append("fetch")
    return {**state, "fetched": True}


@flow.step
def publish(state: dict[str, Any]) -> dict[str, Any]:
    STEP_CALLS.append("publish")
    if STEP_CALLS.count("publish") == 1:
        raise ConnectionError("transient")
    return {**state, "published": True}


FlowWorker = pgflow.workflow_worker(flow, max_attempts=3, backoff=QUICK)


def test_workflow_worker_resumes_after_the_last_completed_step(
    memory: InMemoryBackend, clock: FakeClock
) -> None:
    STEP_CALLS.clear()
    [inserted] = memory.insert_jobs([FlowWorker.new({"id": 7})])
    first = run_job(memory, claim_one(memory), "tester", clock=clock)
    # A step retry is a snooze for the step's backoff delay: no job attempt is used up.
    assert (first.kind, first.snooze) == (OutcomeKind.SNOOZED, QUICK.delay(1))
    clock.advance(first.snooze or 0)
    memory.stage_jobs()
    second = run_job(memory, claim_one(memory), "tester", clock=clock)
    assert second.job.attempt == 1
    assert second.kind is OutcomeKind.COMPLETED
    assert second.value == {"id": 7, "fetched": True, "published": True}
    assert STEP_CALLS == ["fetch", "publish", "publish"]  # fetch was not run again
    run = memory.get_run(f"job-{inserted.id}")
    assert run is not None and run.state is pgflow.RunState.COMPLETED
    assert resolve_worker(FlowWorker.options.name) is FlowWorker


def test_async_perform_runs_from_inside_a_running_event_loop(memory: InMemoryBackend) -> None:
    """E.g. pgflow.testing.drain called from an async test."""
    memory.insert_jobs([AsyncEcho.new({"value": 4})])
    job = claim_one(memory)

    async def main() -> Any:
        return run_job(memory, job, "tester")

    outcome = asyncio.run(main())
    assert outcome.kind is OutcomeKind.COMPLETED and outcome.value == 8


def test_a_worker_module_that_fails_to_import_fails_the_attempt(
    memory: InMemoryBackend, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "broken_workers_mod.py").write_text("raise RuntimeError('bad config')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    memory.insert_jobs([pgflow.NewJob(worker="broken_workers_mod.Job", max_attempts=1)])
    lookup = WorkerLookup(("broken_workers_mod.",))
    outcome = run_job(memory, claim_one(memory), "tester", lookup=lookup)
    assert outcome.kind is OutcomeKind.DISCARDED
    assert outcome.error is not None and "bad config" in outcome.error["message"]


def test_failed_outcome_follows_the_worker_policy(memory: InMemoryBackend) -> None:
    memory.insert_jobs([Flaky.new()])
    job = claim_one(memory)
    outcome = failed_outcome(job, RuntimeError("runner broke"), instance_id="tester")
    assert (outcome.kind, outcome.retry_in) == (OutcomeKind.RETRY, 2.0)
