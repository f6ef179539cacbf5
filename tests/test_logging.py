"""Run logging: levels, structured extra fields, no data at INFO+, and logging that fails
never failing a run."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

import pgflow
from pgflow.executor import Executor

SECRET = "s3cr3t-token"


def flow_failing(times: int) -> pgflow.Flow:
    calls = Counter[str]()
    flow = pgflow.Flow("logged")

    @flow.step
    def load(state: Any) -> Any:
        return {"token": SECRET, **state}

    @flow.step
    def send(state: Any) -> Any:
        calls["send"] += 1
        if calls["send"] <= times:
            raise ConnectionError("remote down")
        return state

    return flow


def records_of(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "pgflow"]


def test_levels_and_fields_of_a_successful_run(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="pgflow")
    Executor().execute(flow_failing(0), {"a": 1}, workflow_id="log-1", max_attempts=4)
    records = records_of(caplog)
    assert [(r.levelno, getattr(r, "step", None)) for r in records] == [
        (logging.DEBUG, None),  # run started
        (logging.DEBUG, "load"),  # step started
        (logging.DEBUG, "load"),  # step completed
        (logging.DEBUG, "send"),
        (logging.DEBUG, "send"),
        (logging.INFO, None),  # run completed
    ]
    for record in records:
        assert record.workflow_id == "log-1"  # type: ignore[attr-defined]
        assert record.workflow == "logged"  # type: ignore[attr-defined]
        assert record.attempt == 1  # type: ignore[attr-defined]
        assert record.max_attempts == 4  # type: ignore[attr-defined]
        assert SECRET not in record.getMessage()


def test_retry_warning_and_final_error(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="pgflow")
    clock = pgflow.FakeClock()
    with pytest.raises(pgflow.MaxAttemptsExceeded):
        Executor(clock=clock).execute(flow_failing(9), {}, workflow_id="log-2", max_attempts=2)
    warning, error = records_of(caplog)
    assert warning.levelno == logging.WARNING
    assert (warning.step, warning.attempt, warning.delay) == ("send", 1, 10.0)  # type: ignore[attr-defined]
    assert "retrying in 10s" in warning.getMessage()
    assert error.levelno == logging.ERROR
    assert (error.step, error.attempt, error.workflow_id) == ("send", 2, "log-2")  # type: ignore[attr-defined]
    for record in (warning, error):
        assert SECRET not in record.getMessage()
        assert "ConnectionError" in record.getMessage()


def test_log_context_adds_job_and_instance(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="pgflow")
    Executor().execute(
        flow_failing(0), {}, log_context={"job_id": 42, "instance_id": "host-1"}, timeout=None
    )
    records = records_of(caplog)
    assert records
    assert all((r.job_id, r.instance_id) == (42, "host-1") for r in records)  # type: ignore[attr-defined]


def test_nothing_is_logged_when_the_level_is_off(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="pgflow")
    pgflow.execute(flow_failing(0), {})
    assert records_of(caplog) == []


class Exploding(logging.Handler):
    def handle(self, record: logging.LogRecord) -> bool:  # bypasses handleError on purpose
        raise RuntimeError("handler is broken")


class ExplodingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        raise RuntimeError("filter is broken")


@pytest.fixture(params=["handler", "filter"])
def broken_logging(request: pytest.FixtureRequest) -> Iterator[None]:
    logger = logging.getLogger("pgflow")
    previous = logger.level
    logger.setLevel(logging.DEBUG)
    broken: Any = Exploding() if request.param == "handler" else ExplodingFilter()
    if request.param == "handler":
        logger.addHandler(broken)
    else:
        logger.addFilter(broken)
    try:
        yield
    finally:
        logger.removeHandler(broken)
        logger.removeFilter(broken)
        logger.setLevel(previous)


@pytest.mark.usefixtures("broken_logging")
@pytest.mark.parametrize("timeout", [None, 5.0])
def test_a_raising_handler_or_filter_never_fails_a_run(timeout: float | None) -> None:
    clock = pgflow.FakeClock()
    result = Executor(clock=clock).execute(flow_failing(1), {"a": 1}, timeout=timeout)
    assert result == {"token": SECRET, "a": 1}
    with pytest.raises(pgflow.StepFailed):  # still the run's own error, not the logger's
        Executor(clock=clock).execute(flow_failing(1), {}, max_attempts=1, timeout=timeout)
