"""One unstorable error must not block a queue's acknowledgements (issue 9, item 3).

Error entries are cleaned before they are stored (NUL, lone surrogates, length caps), and
the producer never retries forever an outcome the database refuses for what it holds: it
falls back to a minimal error, and if even that is refused, drops it and releases the job.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest

import pgflow
from pgflow.app import Pgflow
from pgflow.errors import BackendError
from pgflow.records import Job, JobRef, JobState
from pgflow.runtime.reconnect import is_transient
from pgflow.stored_errors import (
    MAX_MESSAGE_CHARS,
    MAX_TRACEBACK_CHARS,
    clean_error,
    clean_text,
    minimal_error,
)
from pgflow.worker import Worker
from pgflow_backends.memory import InMemoryBackend
from tests.waiting import wait_or_fail

FAST: dict[str, Any] = {"poll_interval": 0.05, "heartbeat_interval": 0.1, "stale_timeout": 2.0,
        "stage_interval": 0.05, "shutdown_timeout": 5.0}  # fmt: skip
LATER = pgflow.Backoff(base=3600.0, factor=1.0)  # retries stay retryable during the test


class NulFails(Worker, queue="acks", max_attempts=2, backoff=LATER):
    def perform(self, job: Job) -> Any:
        raise ValueError("bad\x00byte \ud800 end")


class NulDiscarded(Worker, queue="acks", max_attempts=1):
    def perform(self, job: Job) -> Any:
        raise ValueError("bad\x00byte")


class PlainFails(Worker, queue="acks", max_attempts=2, backoff=LATER):
    def perform(self, job: Job) -> Any:
        raise ValueError(f"plain {job.args['n']}")


class PoisonError(Exception):
    """An error kind the refusing backend below will not store."""


class Poisoned(Worker, queue="acks", max_attempts=1):
    def perform(self, job: Job) -> Any:
        raise PoisonError("poison")


def stored(app: Pgflow, job: Job) -> Job:
    found = app.backend.get_job(job.id)
    assert found is not None
    return found


# --- cleaning ------------------------------------------------------------------------------


def test_clean_text_removes_nul_and_lone_surrogates() -> None:
    assert clean_text("a\x00b", 100) == "a\\x00b"
    assert clean_text("x\ud800y", 100) == "x\ufffdy"
    assert clean_text("plain", 100) == "plain"
    "\ufffd".encode()  # the replacement is encodable, as the stored text must be


def test_clean_error_caps_message_and_traceback_with_a_marker() -> None:
    error = clean_error(
        {"kind": "ValueError", "message": "m" * 10_000, "traceback": "t" * 50_000, "attempt": 1}
    )
    assert error["message"].startswith("m" * MAX_MESSAGE_CHARS)
    assert "8000 characters cut" in error["message"]
    assert len(error["message"]) < MAX_MESSAGE_CHARS + 50
    assert error["traceback"].endswith("t" * MAX_TRACEBACK_CHARS)
    assert "30000 characters cut" in error["traceback"]
    assert error["attempt"] == 1


def test_minimal_error_is_short_ascii_and_keeps_the_attempt() -> None:
    error = minimal_error(
        {"attempt": 2, "at": "now", "kind": "Bäd\x00", "message": "x" * 9999}, "BackendError"
    )
    assert error["attempt"] == 2 and error["at"] == "now"
    assert error["kind"] == "B?d"
    assert error["message"].isascii() and len(error["message"]) < 100


def test_transient_means_a_connection_problem() -> None:
    class OperationalError(Exception):
        pass

    lost = BackendError("database is unreachable")
    lost.__cause__ = OperationalError("server closed the connection")
    assert is_transient(lost)
    assert is_transient(ConnectionResetError())
    assert not is_transient(BackendError("database error: invalid byte sequence"))
    assert not is_transient(pgflow.SerializationError("not JSON"))


# --- on the real PostgreSQL ------------------------------------------------------------------


@pytest.mark.postgres
def test_a_nul_in_an_error_is_stored_cleaned_and_blocks_nothing(postgres_url: str) -> None:
    app = Pgflow(postgres_url, queues={"acks": 4}, instance_id="acks-pg", **FAST)
    app.migrate()
    app.start()
    try:
        nul = app.insert(NulFails.new())
        wait_or_fail(lambda: stored(app, nul).attempt == 1, "the NUL job to be claimed")
        others = app.insert([PlainFails.new({"n": n}) for n in range(3)])
        discarded = app.insert(NulDiscarded.new())
        wait_or_fail(
            lambda: (
                [stored(app, j).state for j in [nul, *others, discarded]]
                == [JobState.RETRYABLE] * 4 + [JobState.DISCARDED]
            ),
            "every failure to be acknowledged",
        )
        assert stored(app, nul).errors[-1]["message"] == "bad\\x00byte \ufffd end"
        assert stored(app, discarded).errors[-1]["message"] == "bad\\x00byte"
        assert [stored(app, j).errors[-1]["message"] for j in others] == [
            "plain 0",
            "plain 1",
            "plain 2",
        ]
    finally:
        app.stop(timeout=5)
        app.close()


# --- the producer's fallbacks ----------------------------------------------------------------


class RefusingBackend(InMemoryBackend):
    """Refuses, as a database would refuse bad data, any error whose `refuse` test matches."""

    def __init__(self, refuse: Callable[[dict[str, Any]], bool]) -> None:
        super().__init__()
        self.refuse = refuse
        self.refused = 0

    def fail_job(
        self, ref: JobRef, error: dict[str, Any], *, retry_in: float | None
    ) -> JobState | None:
        if self.refuse(error):
            self.refused += 1
            raise BackendError("database error on memory://: invalid input (refused)")
        return super().fail_job(ref, error, retry_in=retry_in)


def test_a_refused_error_is_stored_as_a_minimal_error() -> None:
    backend = RefusingBackend(lambda error: "poison" in error.get("message", ""))
    app = Pgflow(backend, queues={"acks": 4}, instance_id="minimal", **FAST)
    poisoned = app.insert(Poisoned.new())
    others = app.insert([PlainFails.new({"n": n}) for n in range(3)])
    app.start()
    try:
        wait_or_fail(
            lambda: (
                [stored(app, j).state for j in [poisoned, *others]]
                == [JobState.DISCARDED] + [JobState.RETRYABLE] * 3
            ),
            "every failure to be acknowledged",
        )
    finally:
        app.stop(timeout=5)
    error = stored(app, poisoned).errors[-1]
    assert error["kind"] == f"{PoisonError.__module__}.PoisonError"
    assert error["message"] == "the error's text could not be stored (BackendError)"
    assert backend.refused == 1


def test_an_outcome_that_cannot_be_written_at_all_is_dropped_and_released(
    caplog: pytest.LogCaptureFixture,
) -> None:
    backend = RefusingBackend(lambda error: "PoisonError" in error.get("kind", ""))
    app = Pgflow(backend, queues={"acks": 4}, instance_id="dropper", **FAST)
    poisoned = app.insert(Poisoned.new())
    others = app.insert([PlainFails.new({"n": n}) for n in range(3)])
    app.start()
    try:
        wait_or_fail(
            lambda: (
                [stored(app, j).state for j in [poisoned, *others]]
                == [JobState.DISCARDED] + [JobState.RETRYABLE] * 3
            ),
            "every job to end",
        )
    finally:
        app.stop(timeout=5)
    assert stored(app, poisoned).errors[-1]["kind"] == "pgflow.LostClaim"
    assert backend.refused == 2  # its own error, then the minimal one
    dropped = [r for r in caplog.records if "cannot be written" in r.getMessage()]
    assert [r.levelno for r in dropped] == [logging.ERROR]


nul_flow = pgflow.Flow("nul_step_flow")


@nul_flow.step
def nul_step(state: Any) -> Any:
    raise ValueError("step bad\x00byte")


@pytest.mark.postgres
def test_a_nul_in_a_workflow_step_error_is_stored_cleaned(postgres_url: str) -> None:
    from pgflow.registry import backend_from_url

    backend = backend_from_url(postgres_url)
    try:
        backend.migrate()
        executor = pgflow.Executor(backend=backend, clock=pgflow.FakeClock())
        with pytest.raises(pgflow.MaxAttemptsExceeded):
            executor.execute(nul_flow, {}, workflow_id="nul-run", max_attempts=2)
        run = backend.get_run("nul-run")
        assert run is not None and run.state is pgflow.RunState.FAILED
        assert run.error is not None
        assert run.error["message"].endswith("ValueError: step bad\\x00byte")
        assert run.error["traceback"].endswith("ValueError: step bad\\x00byte\n")
    finally:
        backend.close()
