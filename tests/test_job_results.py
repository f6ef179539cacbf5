"""What perform returns is kept on the job; get_job, retry and max_payload_bytes on the app.

Apps run with real threads on each backend; every wait is bounded and awaits an event (the
job reaching a state), never a quiet period.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import pgflow
from pgflow.app import Pgflow
from pgflow.errors import DefinitionError, JobStateError
from pgflow.records import Job, JobState
from pgflow.registry import backend_from_url
from pgflow.runtime.execution import OutcomeKind, execute_job, record_completions, run_job
from pgflow.serialization import DEFAULT_MAX_PAYLOAD_BYTES
from pgflow.worker import Worker
from pgflow_backends.memory import InMemoryBackend
from pgflow_backends.sqlite import SQLiteBackend

FAST: dict[str, Any] = {"poll_interval": 0.05, "heartbeat_interval": 0.1, "stale_timeout": 1.0,
        "stage_interval": 0.05, "shutdown_timeout": 5.0}  # fmt: skip
SERIALIZATION_KIND = "pgflow.errors.SerializationError"


class ReturnsArgs(Worker, queue="results"):
    def perform(self, job: Job) -> Any:
        return job.args.get("value")


class ReturnsASet(Worker, queue="results", max_attempts=2, backoff=pgflow.Backoff(base=0.01)):
    def perform(self, job: Job) -> Any:
        return {"ids": {1, 2}}


class ReturnsTooMuch(Worker, queue="results", max_attempts=1):
    def perform(self, job: Job) -> Any:
        return "x" * 5_000


class FailsOnce(Worker, queue="results", max_attempts=1):
    def perform(self, job: Job) -> Any:
        if not job.args.get("fixed"):
            raise RuntimeError("broken")
        return "fixed"


def wait_for_state(app: Pgflow, job_id: int, *states: JobState, timeout: float = 20.0) -> Job:
    deadline = time.monotonic() + timeout
    while True:
        job = app.get_job(job_id)
        assert job is not None
        if job.state in states:
            return job
        assert time.monotonic() < deadline, f"job {job_id} stayed {job.state}, wanted {states}"
        time.sleep(0.02)


@pytest.fixture
def app_on(backend: Any) -> Iterator[Callable[..., Pgflow]]:
    apps: list[Pgflow] = []

    def make(**options: Any) -> Pgflow:
        app = Pgflow(backend, queues={"results": 4}, **{**FAST, **options})
        apps.append(app)
        app.start()
        return app

    yield make
    for app in apps:
        app.stop(5.0)


def test_the_return_value_of_perform_is_the_jobs_result(app_on: Callable[..., Pgflow]) -> None:
    app = app_on()
    values = [{"rows": [1, 2, 3], "name": "é"}, [1, "two"], 3.5, "text", True, None]
    jobs = app.insert([ReturnsArgs.new({"value": value}) for value in values])
    for job, value in zip(jobs, values, strict=True):
        done = wait_for_state(app, job.id, JobState.COMPLETED)
        assert done.result == value


def test_a_result_that_is_not_json_fails_the_attempt(app_on: Callable[..., Pgflow]) -> None:
    app = app_on()
    job = app.insert(ReturnsASet.new({}))
    done = wait_for_state(app, job.id, JobState.DISCARDED)
    assert [e["kind"] for e in done.errors] == [SERIALIZATION_KIND] * 2
    assert "result['ids'] is not JSON-serialisable" in done.errors[0]["message"]
    assert done.result is None


def test_a_result_over_the_limit_fails_the_attempt(backend: Any) -> None:
    backend.max_payload_bytes = 4_000  # room for the error and its traceback
    app = Pgflow(backend, queues={"results": 2}, **FAST)
    app.start()
    try:
        job = app.insert(ReturnsTooMuch.new({}))
        follower = app.insert(ReturnsArgs.new({"value": 1}))
        done = wait_for_state(app, job.id, JobState.DISCARDED)
        assert wait_for_state(app, follower.id, JobState.COMPLETED).result == 1
    finally:
        app.stop(5.0)
    (error,) = done.errors
    assert error["kind"] == SERIALIZATION_KIND
    assert "result is 5,002 bytes of JSON, over the limit of 4,000" in error["message"]


def test_run_job_records_the_result_inline() -> None:
    memory = InMemoryBackend()
    memory.insert_jobs([ReturnsArgs.new({"value": {"ok": True}})])
    (claimed,) = memory.claim_jobs("results", "inline", 1)
    outcome = run_job(memory, claimed)
    assert outcome.kind is OutcomeKind.COMPLETED
    assert outcome.result == '{"ok":true}'
    assert memory.get_job(claimed.id).result == {"ok": True}  # type: ignore[union-attr]


def test_app_retry_runs_a_discarded_job_again(app_on: Callable[..., Pgflow]) -> None:
    app = app_on()
    job = app.insert(FailsOnce.new({}))
    wait_for_state(app, job.id, JobState.DISCARDED)
    assert app.get_job(job.id).errors[0]["message"] == "broken"  # type: ignore[union-attr]

    retried = app.retry(job.id)

    assert retried is not None and retried.max_attempts == 2
    done = wait_for_state(app, job.id, JobState.DISCARDED)
    assert done.attempt == 2 and len(done.errors) == 2


def test_app_retry_refuses_an_executing_job() -> None:
    memory = InMemoryBackend()
    app = Pgflow(memory, **FAST)
    (job,) = memory.insert_jobs([ReturnsArgs.new({})])
    memory.claim_jobs("results", "elsewhere", 1)
    with pytest.raises(JobStateError, match="executing"):
        app.retry(job.id)
    assert app.retry(999) is None
    assert app.get_job(999) is None


def test_pgflow_passes_max_payload_bytes_to_the_backend_it_opens(tmp_path: Any) -> None:
    with Pgflow(f"sqlite:///{tmp_path}/a.db", max_payload_bytes=1_000) as app:
        assert app.backend.max_payload_bytes == 1_000  # type: ignore[attr-defined]
        app.migrate()
        with pytest.raises(pgflow.SerializationError, match="over the limit of 1,000"):
            app.insert(ReturnsArgs.new({"value": "x" * 1_000}))
    with Pgflow("memory://", max_payload_bytes=None) as app:
        assert app.backend.max_payload_bytes is None  # type: ignore[attr-defined]
    with Pgflow("memory://") as app:
        assert app.backend.max_payload_bytes == DEFAULT_MAX_PAYLOAD_BYTES  # type: ignore[attr-defined]


def test_pgflow_refuses_a_limit_that_contradicts_the_given_backend() -> None:
    memory = InMemoryBackend(max_payload_bytes=1_000)
    assert Pgflow(memory).backend.max_payload_bytes == 1_000  # type: ignore[attr-defined]
    assert Pgflow(memory, max_payload_bytes=1_000).backend is memory
    with pytest.raises(DefinitionError, match="set it on the backend you built"):
        Pgflow(memory, max_payload_bytes=2_000)


@pytest.mark.parametrize("bad", [0, -1, 1.5, "4MB", True])
def test_a_bad_limit_is_a_definition_error(bad: Any) -> None:
    with pytest.raises(DefinitionError, match="max_payload_bytes must be a positive integer"):
        InMemoryBackend(max_payload_bytes=bad)


def test_backend_from_url_passes_options(tmp_path: Any) -> None:
    opened = backend_from_url(f"sqlite:///{tmp_path}/b.db", max_payload_bytes=123)
    try:
        assert isinstance(opened, SQLiteBackend) and opened.max_payload_bytes == 123
    finally:
        opened.close()
    assert backend_from_url("memory://", max_payload_bytes=7).max_payload_bytes == 7  # type: ignore[attr-defined]


class _CompletionSpy:
    """Records how complete_jobs was called; every ref counts as written."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, Any]] = []

    def complete_jobs(self, refs: Any, results: Any = None) -> list[int]:
        self.calls.append((len(refs), results))
        return [ref.id for ref in refs]


def test_a_batch_of_none_results_takes_the_plain_completion() -> None:
    memory = InMemoryBackend()
    memory.insert_jobs([ReturnsArgs.new({"value": None}), ReturnsArgs.new({"value": None})])
    outcomes = [execute_job(job) for job in memory.claim_jobs("results", "spy", 2)]
    spy = _CompletionSpy()

    assert record_completions(spy, outcomes) == 2  # type: ignore[arg-type]

    assert spy.calls == [(2, None)]


def test_results_travel_with_their_refs_when_one_is_set() -> None:
    memory = InMemoryBackend()
    memory.insert_jobs([ReturnsArgs.new({"value": None}), ReturnsArgs.new({"value": [1]})])
    outcomes = [execute_job(job) for job in memory.claim_jobs("results", "spy", 2)]
    spy = _CompletionSpy()

    record_completions(spy, outcomes)  # type: ignore[arg-type]

    assert spy.calls == [(2, [None, "[1]"])]
