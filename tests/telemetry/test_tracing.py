"""OpenTelemetry spans of inserts, attempts, runs and steps, on the in-memory exporter."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import textwrap
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk")

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind, StatusCode

import pgflow
import pgflow.telemetry
import pgflow.testing
from pgflow.telemetry import hooks
from tests.telemetry.conftest import Traced

seen: dict[str, Any] = {}


class Greet(pgflow.Worker, queue="mail"):
    def perform(self, job: pgflow.Job) -> Any:
        seen["span"] = trace.get_current_span().get_span_context()
        mode = job.args.get("mode")
        if mode == "fail":
            raise ValueError("no such address")
        if mode == "discard":
            raise pgflow.Discard("not wanted")
        if mode == "snooze":
            raise pgflow.Snooze(5.0)
        if mode == "limited":
            raise pgflow.RateLimited(retry_after=7.0)
        return "hello"


class AsyncGreet(pgflow.Worker, queue="mail"):
    async def perform(self, job: pgflow.Job) -> Any:
        await asyncio.sleep(0)
        seen["span"] = trace.get_current_span().get_span_context()
        return "hello"


class SlowGreet(pgflow.Worker, queue="mail", timeout=30.0):
    """A timeout runs the perform on a thread of its own: the span must follow it there."""

    def perform(self, job: pgflow.Job) -> Any:
        seen["span"] = trace.get_current_span().get_span_context()
        return "hello"


pair = pgflow.Flow("telemetry_pair")


@pair.step
def double(input: int) -> int:
    return input * 2


@pair.step(depends_on=["double"])
def announce(double: int) -> str:
    if double < 0:
        raise ValueError("negative")
    return f"got {double}"


def _hex(span: ReadableSpan) -> str:
    assert span.context is not None
    return format(span.context.span_id, "016x")


def _parent_of(span: ReadableSpan) -> int | None:
    return None if span.parent is None else span.parent.span_id


def _id(span: ReadableSpan) -> int:
    assert span.context is not None
    return span.context.span_id


def test_an_attempt_continues_the_trace_of_the_request_that_inserted_it(traced: Traced) -> None:
    with pgflow.testing.manual() as t:
        with traced.tracer.start_as_current_span("request"):
            job = t.app.insert(Greet.new({"to": "ada"}))
        assert job.meta["traceparent"].split("-")[2] == _hex(traced.one("send mail"))
        assert t.drain().completed == 1
    request, send = traced.one("request"), traced.one("send mail")
    process = traced.one("process mail")
    assert send.kind is SpanKind.PRODUCER and _parent_of(send) == _id(request)
    assert process.kind is SpanKind.CONSUMER and _parent_of(process) == _id(send)
    assert process.context is not None and request.context is not None
    assert process.context.trace_id == request.context.trace_id
    assert dict(process.attributes or {}) == {
        "messaging.system": "pgflow",
        "messaging.operation.type": "process",
        "messaging.destination.name": "mail",
        "messaging.message.id": str(job.id),
        "pgflow.job.id": job.id,
        "pgflow.queue": "mail",
        "pgflow.worker": job.worker,
        "pgflow.attempt": 1,
        "pgflow.outcome": "completed",
    }
    assert (send.attributes or {})["pgflow.job.id"] == job.id
    assert seen["span"] == process.context  # perform runs inside its attempt's span


@pytest.mark.parametrize("worker", [AsyncGreet, SlowGreet], ids=["async", "timeout-thread"])
def test_perform_runs_inside_its_span_on_any_runner(traced: Traced, worker: Any) -> None:
    with pgflow.testing.manual() as t:
        t.app.insert(worker.new({}))
        assert t.drain().completed == 1
    assert seen["span"] == traced.one("process mail").context


def test_a_batch_insert_is_one_span_whose_context_every_job_carries(traced: Traced) -> None:
    with pgflow.testing.manual() as t:
        jobs = t.app.insert([Greet.new({"n": n}) for n in range(3)])
    send = traced.one("send mail")
    assert (send.attributes or {})["messaging.batch.message_count"] == 3
    assert {job.meta["traceparent"].split("-")[2] for job in jobs} == {_hex(send)}


def test_a_traceparent_given_in_meta_is_kept(traced: Traced) -> None:
    mine = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    with pgflow.testing.manual() as t:
        job = t.app.insert(Greet.new({}, meta={"traceparent": mine, "tenant": "acme"}))
        assert job.meta == {"traceparent": mine, "tenant": "acme"}
        t.drain()
    process = traced.one("process mail")
    assert process.parent is not None
    assert format(process.parent.span_id, "016x") == "b7ad6b7169203331"
    assert process.context is not None
    assert format(process.context.trace_id, "032x") == "0af7651916cd43dd8448eb211c80319c"


@pytest.mark.parametrize(
    ("mode", "outcome"), [("fail", "retry"), ("discard", "discarded")], ids=["retry", "discard"]
)
def test_a_failed_attempt_is_an_error_span_with_its_exception(
    traced: Traced, mode: str, outcome: str
) -> None:
    with pgflow.testing.manual() as t:
        t.app.insert(Greet.new({"mode": mode}))
        t.drain(raise_on_failure=False)
    process = traced.one("process mail")
    assert process.status.status_code is StatusCode.ERROR
    assert (process.attributes or {})["pgflow.outcome"] == outcome
    events = [event for event in process.events if event.name == "exception"]
    assert len(events) == 1
    assert (events[0].attributes or {})["exception.type"] in {"ValueError", "pgflow.errors.Discard"}


def test_snoozes_and_rate_limits_show_on_the_span(traced: Traced) -> None:
    with pgflow.testing.manual() as t:
        t.app.insert(Greet.new({"mode": "snooze"}))
        t.app.insert(Greet.new({"mode": "limited"}))
        assert t.drain().snoozed == 2
    spans = traced.spans("process mail", **{"pgflow.outcome": "snoozed"})
    assert sorted((s.attributes or {})["pgflow.snooze_seconds"] for s in spans) == [5.0, 7.0]
    limited = [s for s in spans if any(e.name == "pgflow.rate_limited" for e in s.events)]
    assert len(limited) == 1
    assert all(s.status.status_code is StatusCode.UNSET for s in spans)


def test_a_cancelled_attempt_has_a_cancel_event(traced: Traced) -> None:
    from datetime import UTC, datetime

    from pgflow.records import Job, JobState
    from pgflow.runtime.execution import JobControl, OutcomeKind, execute_job

    now = datetime.now(UTC)
    job = Job(
        id=9,
        queue="mail",
        worker=Greet.new({}).worker,
        args={"mode": "fail"},
        state=JobState.EXECUTING,
        priority=0,
        attempt=1,
        max_attempts=3,
        scheduled_at=now,
        inserted_at=now,
        attempted_at=now,
    )
    control = JobControl()
    control.cancel()  # cancel requested while perform ran: its error ends the attempt
    outcome = execute_job(job, control=control, worker_cls=Greet)
    assert outcome.kind is OutcomeKind.CANCELLED
    process = traced.one("process mail")
    assert (process.attributes or {})["pgflow.outcome"] == "cancelled"
    assert [event.name for event in process.events] == ["pgflow.cancelled"]
    assert process.parent is None  # no traceparent in meta: a root span


def test_a_failed_step_task_is_an_error_span_of_its_run(traced: Traced) -> None:
    with pgflow.testing.manual() as t:
        handle = t.app.start_run(pair, -1, max_attempts=1)
        t.drain(raise_on_failure=False)
        assert t.app.get_run(handle.workflow_id).state is pgflow.RunState.FAILED
    start = traced.one("start_run telemetry_pair")
    failed = traced.one("process default", **{"pgflow.step": "announce"})
    assert _parent_of(failed) == _id(start)
    assert failed.status.status_code is StatusCode.ERROR
    assert (failed.attributes or {})["pgflow.outcome"] == "discarded"


def test_every_step_of_a_distributed_run_is_in_the_trace_of_start_run(traced: Traced) -> None:
    with pgflow.testing.manual() as t:
        with traced.tracer.start_as_current_span("request"):
            handle = t.app.start_run(pair, 4)
        t.drain()
        assert handle.result() == {"announce": "got 8"}
    start = traced.one("start_run telemetry_pair", **{"pgflow.workflow_id": handle.workflow_id})
    assert _parent_of(start) == _id(traced.one("request"))
    for step in ("double", "announce"):
        task = traced.one("process default", **{"pgflow.step": step})
        assert _parent_of(task) == _id(start), step
        assert (task.attributes or {})["pgflow.workflow_id"] == handle.workflow_id


def test_in_process_steps_get_spans_under_the_caller(traced: Traced) -> None:
    with traced.tracer.start_as_current_span("caller"):
        assert pgflow.execute(pair, 3) == {"announce": "got 6"}
        with pytest.raises(pgflow.WorkflowError):
            pgflow.execute(pair, -1, max_attempts=1)
    caller = traced.one("caller")
    steps = traced.spans("step telemetry_pair.double")
    assert len(steps) == 2 and all(_parent_of(s) == _id(caller) for s in steps)
    failed = traced.spans("step telemetry_pair.announce")
    assert [s.status.status_code for s in failed] == [StatusCode.UNSET, StatusCode.ERROR]


def test_a_broken_tracer_never_fails_a_job(
    traced: Traced, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Broken:
        def start_span(self, *args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("exporter down")

    monkeypatch.setattr(hooks, "_warned", set())  # what earlier tests' failures logged
    tracing = hooks.OBSERVER.tracing if hooks.OBSERVER is not None else None
    assert tracing is not None
    tracing.tracer = Broken()  # type: ignore[attr-defined]
    with (
        caplog.at_level(logging.WARNING, logger="pgflow.telemetry"),
        pgflow.testing.manual() as t,
    ):
        t.app.insert(Greet.new({}))
        t.app.insert(Greet.new({}))
        assert t.drain().completed == 2
    warnings = [r for r in caplog.records if r.name == "pgflow.telemetry"]
    assert {r.getMessage().split(" failed")[0] for r in warnings} == {
        "telemetry hook insert_started",
        "telemetry hook job_started",
    }  # each hook warns once, then only at DEBUG


def test_uninstrument_stops_the_spans(traced: Traced) -> None:
    pgflow.telemetry.uninstrument()
    assert hooks.OBSERVER is None
    with pgflow.testing.manual() as t:
        job = t.app.insert(Greet.new({}))
        t.drain()
    assert job.meta == {} and traced.spans() == []


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_without_instrument_nothing_of_opentelemetry_is_loaded() -> None:
    done = _run(
        """
        import sys
        import pgflow, pgflow.testing

        class Job(pgflow.Worker):
            def perform(self, job):
                return 1

        flow = pgflow.Flow("plain")

        @flow.step
        def one(input):
            return input

        with pgflow.testing.manual() as t:
            job = t.app.insert(Job.new({}))
            t.app.start_run(flow, 1)
            assert t.drain().completed == 2 and job.meta == {}
        assert pgflow.execute(flow, 2) == 2
        loaded = [m for m in sys.modules if m.startswith(("opentelemetry", "prometheus_client"))]
        assert not loaded, loaded
        """
    )
    assert done.returncode == 0, done.stderr


def test_instrument_without_the_extra_names_it() -> None:
    done = _run(
        """
        import sys
        sys.modules["opentelemetry"] = None
        import pgflow.telemetry
        try:
            pgflow.telemetry.instrument()
        except ImportError as exc:
            print(exc)
        """
    )
    assert done.returncode == 0, done.stderr
    assert 'pip install "pgflow[otel]"' in done.stdout
