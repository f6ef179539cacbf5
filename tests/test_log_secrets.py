"""What pgflow's logs may contain: no exception text (it may quote inputs) at WARNING and
above, and nothing printed at all by an application that did not configure logging."""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from typing import Any

import pytest

import pgflow
from pgflow.app import Pgflow
from pgflow.executor import Executor
from pgflow.records import Job, JobState
from pgflow.worker import Worker

SECRET = "hunter2-secret-input"


class LeaksInput(Worker, max_attempts=2, backoff=pgflow.Backoff(base=0.01, factor=1.0)):
    def perform(self, job: Job) -> Any:
        raise ValueError(f"cannot charge card {job.args['card']}")


leaky_flow = pgflow.Flow("leaky_flow")


@leaky_flow.step
def charge(state: Any) -> Any:
    raise ValueError(f"cannot charge card {state['card']}")


LeakyFlowJob = pgflow.workflow_worker(leaky_flow, max_attempts=1)


def warnings_and_above(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name.startswith("pgflow") and r.levelno >= 30]


def assert_no_secret(records: list[logging.LogRecord]) -> None:
    assert records, "expected WARNING/ERROR records to inspect"
    for record in records:
        assert SECRET not in record.getMessage()
        for key, value in vars(record).items():
            assert SECRET not in repr(value), f"{key} of {record.getMessage()!r} holds input"


def test_workflow_failures_log_no_exception_text_at_warning_and_above(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="pgflow")
    with pytest.raises(pgflow.MaxAttemptsExceeded):
        Executor(clock=pgflow.FakeClock()).execute(leaky_flow, {"card": SECRET}, max_attempts=2)
    records = warnings_and_above(caplog)
    assert_no_secret(records)
    assert all(getattr(r, "error", None) == "ValueError" for r in records)
    # The text is still there for whoever turns DEBUG on.
    assert any(SECRET in r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG)


def test_job_failures_log_no_exception_text_at_warning_and_above(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="pgflow")
    app = Pgflow("memory://", poll_interval=0.05, instance_id="secrets")
    jobs = app.insert([LeaksInput.new({"card": SECRET}), LeakyFlowJob.new({"card": SECRET})])
    app.start()
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            found = [app.backend.get_job(job.id) for job in jobs]
            if all(j is not None and j.state is JobState.DISCARDED for j in found):
                break
            time.sleep(0.02)
    finally:
        app.stop(timeout=5)
    found = [app.backend.get_job(job.id) for job in jobs]
    assert all(j is not None and j.state is JobState.DISCARDED for j in found)
    assert_no_secret(warnings_and_above(caplog))


def test_an_application_without_logging_configured_sees_nothing_printed() -> None:
    code = (
        "import logging, pgflow\n"
        "logging.getLogger('pgflow.runtime').error('pgflow error record')\n"
        "logging.getLogger('pgflow').warning('pgflow warning record')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stderr == ""
