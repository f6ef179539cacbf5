"""OpenTelemetry spans for inserts, job attempts, flow runs and in-process steps.

Imported only by `pgflow.telemetry.instrument`: the job path never loads OpenTelemetry while
tracing is off. The trace context crosses processes in the job's meta as W3C `traceparent`
(and `tracestate`), so an attempt's span continues the trace of the request that inserted it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attrs
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import (
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TracerProvider,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from pgflow.runtime.execution import OutcomeKind
from pgflow.telemetry.hooks import TRACE_KEYS

if TYPE_CHECKING:
    from pgflow.records import Job, NewJob
    from pgflow.runtime.execution import Outcome

__all__ = ["SYSTEM", "OtelTracing"]

#: `messaging.system` of every pgflow span.
SYSTEM = "pgflow"
#: W3C Trace Context caps tracestate at 512 characters; longer values are not carried.
_MAX_TRACESTATE = 512
_PROPAGATOR = TraceContextTextMapPropagator()
_FAILED = frozenset({OutcomeKind.RETRY, OutcomeKind.DISCARDED})
#: Version 00 of W3C traceparent: trace id, parent span id, flags (lowercase hex).
_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")

_State = tuple[Span, object]


def _carrier(meta: Mapping[str, Any]) -> dict[str, str]:
    """The trace fields of a job's meta that are text (anything else is ignored)."""
    return {key: meta[key] for key in TRACE_KEYS if isinstance(meta.get(key), str)}


def _parent_of(meta: Mapping[str, Any]) -> otel_context.Context | None:
    """The context a job's meta carries. The common case (a traceparent alone, as pgflow
    writes it) is parsed here, several times cheaper than the propagator; anything else
    (a tracestate, another version) goes through the propagator."""
    value = meta.get("traceparent")
    if "tracestate" not in meta and isinstance(value, str):
        match = _TRACEPARENT.fullmatch(value)
        if match is not None:
            trace_id, span_id = int(match[1], 16), int(match[2], 16)
            if trace_id and span_id:
                remote = SpanContext(
                    trace_id, span_id, is_remote=True, trace_flags=TraceFlags(int(match[3], 16))
                )
                return trace.set_span_in_context(NonRecordingSpan(remote))
            return None
    carrier = _carrier(meta)
    return _PROPAGATOR.extract(carrier) if carrier else None


def _meta_of(context: SpanContext) -> dict[str, str]:
    """A span context as W3C Trace Context fields for a job's meta ({} when invalid)."""
    if not context.is_valid:
        return {}
    meta = {
        "traceparent": (
            f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"
        )
    }
    if context.trace_state:
        state = context.trace_state.to_header()
        if len(state) <= _MAX_TRACESTATE:
            meta["tracestate"] = state
    return meta


def _fail(span: Span, error: BaseException) -> None:
    span.record_exception(error)
    span.set_status(Status(StatusCode.ERROR, type(error).__name__))


class OtelTracing:
    """The tracing half of `pgflow.telemetry.hooks.Observer`, on one tracer."""

    def __init__(self, tracer_provider: TracerProvider | None = None) -> None:
        from importlib.metadata import version

        self.tracer = trace.get_tracer("pgflow", version("pgflow"), tracer_provider=tracer_provider)

    def _attach(self, span: Span) -> _State:
        return span, otel_context.attach(trace.set_span_in_context(span))

    @staticmethod
    def _end(state: _State) -> None:
        span, token = state
        try:
            otel_context.detach(token)  # type: ignore[arg-type]
        finally:
            span.end()

    # -- job attempts (consumer) ------------------------------------------------------------

    def job_started(self, job: Job, instance_id: str | None) -> _State:
        meta = job.meta
        parent = _parent_of(meta) if "traceparent" in meta else None
        attributes: dict[str, Any] = {
            "messaging.system": SYSTEM,
            "messaging.operation.type": "process",
            "messaging.destination.name": job.queue,
            "messaging.message.id": str(job.id),
            "pgflow.job.id": job.id,
            "pgflow.queue": job.queue,
            "pgflow.worker": job.worker,
            "pgflow.attempt": job.attempt,
        }
        if job.task is not None:
            attributes["pgflow.workflow_id"] = job.task.workflow_id
            attributes["pgflow.step"] = job.task.step
            attributes["pgflow.task_index"] = job.task.index
        span = self.tracer.start_span(
            f"process {job.queue}", context=parent, kind=SpanKind.CONSUMER, attributes=attributes
        )
        return self._attach(span)

    def job_finished(
        self, state: _State, outcome: Outcome | None, error: BaseException | None
    ) -> None:
        span = state[0]
        try:
            if outcome is None:
                if error is not None:
                    _fail(span, error)
                return
            kind = outcome.kind
            span.set_attribute("pgflow.outcome", kind.value)
            if kind in _FAILED:
                if outcome.exception is not None:
                    _fail(span, outcome.exception)
                else:
                    kind_name = (outcome.error or {}).get("kind", kind.value)
                    span.set_status(Status(StatusCode.ERROR, str(kind_name)))
                if kind is OutcomeKind.RETRY and outcome.retry_in is not None:
                    span.set_attribute("pgflow.retry_in", outcome.retry_in)
            elif kind is OutcomeKind.SNOOZED:
                span.set_attribute("pgflow.snooze_seconds", outcome.snooze or 0.0)
                if outcome.rate_limited is not None:
                    span.add_event(
                        "pgflow.rate_limited", {"pgflow.retry_after": outcome.rate_limited}
                    )
            elif kind is OutcomeKind.CANCELLED:
                span.add_event("pgflow.cancelled")
        finally:
            self._end(state)

    # -- inserts (producer) -----------------------------------------------------------------

    def insert_started(self, jobs: Sequence[NewJob]) -> tuple[list[NewJob], Span]:
        """One span per insert call; every job of it carries the span's context (a job
        whose meta already names a traceparent keeps its own)."""
        queues = {job.queue for job in jobs}
        workers = {job.worker for job in jobs}
        queue = next(iter(queues)) if len(queues) == 1 else None
        attributes: dict[str, Any] = {
            "messaging.system": SYSTEM,
            "messaging.operation.type": "send",
        }
        if queue is not None:
            attributes["messaging.destination.name"] = queue
            attributes["pgflow.queue"] = queue
        if len(workers) == 1:
            attributes["pgflow.worker"] = next(iter(workers))
        if len(jobs) != 1:
            attributes["messaging.batch.message_count"] = len(jobs)
        span = self.tracer.start_span(
            "send" if queue is None else f"send {queue}",
            kind=SpanKind.PRODUCER,
            attributes=attributes,
        )
        carrier = _meta_of(span.get_span_context())
        if not carrier:  # a non-recording span: nothing to carry
            return list(jobs), span
        stamped = [
            job if "traceparent" in job.meta else attrs.evolve(job, meta={**job.meta, **carrier})
            for job in jobs
        ]
        return stamped, span

    def insert_finished(
        self, state: Span, stored: Sequence[Job] | None, error: BaseException | None
    ) -> None:
        """End the insert's span (never made current: nothing runs inside an insert that
        would nest under it, and attaching would cost every insert)."""
        span = state
        try:
            if error is not None:
                _fail(span, error)
            elif stored is not None and len(stored) == 1:
                job = stored[0]
                found: dict[str, Any] = {
                    "messaging.message.id": str(job.id),
                    "pgflow.job.id": job.id,
                }
                if job.conflict:
                    found["pgflow.unique_conflict"] = True
                span.set_attributes(found)
        finally:
            span.end()

    # -- distributed runs -------------------------------------------------------------------

    def run_started(self, workflow: str, workflow_id: str) -> _State:
        span = self.tracer.start_span(
            f"start_run {workflow}",
            kind=SpanKind.PRODUCER,
            attributes={
                "messaging.system": SYSTEM,
                "pgflow.workflow": workflow,
                "pgflow.workflow_id": workflow_id,
            },
        )
        return self._attach(span)

    def run_finished(self, state: _State, error: BaseException | None) -> None:
        try:
            if error is not None:
                _fail(state[0], error)
        finally:
            self._end(state)

    def current_meta(self) -> dict[str, str]:
        """The current span's context as job meta fields ({} without a valid span)."""
        return _meta_of(trace.get_current_span().get_span_context())

    # -- in-process steps (pgflow.execute) --------------------------------------------------

    def capture(self) -> otel_context.Context:
        return otel_context.get_current()

    def step_started(
        self, parent: Any, workflow: str, workflow_id: str, step: str, attempt: int
    ) -> _State:
        span = self.tracer.start_span(
            f"step {workflow}.{step}",
            context=parent if isinstance(parent, otel_context.Context) else None,
            kind=SpanKind.INTERNAL,
            attributes={
                "pgflow.workflow": workflow,
                "pgflow.workflow_id": workflow_id,
                "pgflow.step": step,
                "pgflow.attempt": attempt,
            },
        )
        return self._attach(span)

    def step_finished(self, state: _State, error: BaseException | None) -> None:
        try:
            if error is not None:
                _fail(state[0], error)
        finally:
            self._end(state)
