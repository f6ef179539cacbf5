"""Workers and a two-step flow for the multi-process telemetry tests, importable as
`tests.telemetry.traced_jobs` (by the producer script and by `pgflow worker --import`).

With PGFLOW_TEST_SPANS set, importing it turns tracing on with an in-memory exporter and
writes every finished span to that JSON file when the process exits.
"""

from __future__ import annotations

import atexit
import json
import os
from pathlib import Path
from typing import Any

import pgflow

flow = pgflow.Flow("traced_pair", queue="traced")


@flow.step
def first(input: int) -> int:
    return input + 1


@flow.step(depends_on=["first"])
def second(first: int) -> int:
    return first * 10


class TracedJob(pgflow.Worker, queue="traced"):
    """Completes on its first attempt unless asked to fail."""

    def perform(self, job: pgflow.Job) -> Any:
        if job.args.get("fail"):
            raise ValueError("asked to fail")
        return job.args.get("value")


def span_dict(span: Any) -> dict[str, Any]:
    """What the tests read of a finished span, as JSON."""
    return {
        "name": span.name,
        "kind": span.kind.name,
        "trace_id": format(span.context.trace_id, "032x"),
        "span_id": format(span.context.span_id, "016x"),
        "parent_id": None if span.parent is None else format(span.parent.span_id, "016x"),
        "status": span.status.status_code.name,
        "attributes": dict(span.attributes or {}),
    }


def _record_spans(path: Path) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    import pgflow.telemetry

    global provider
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    pgflow.telemetry.instrument(provider)

    def dump() -> None:
        spans = [span_dict(span) for span in exporter.get_finished_spans()]
        partial = path.with_suffix(".partial")
        partial.write_text(json.dumps(spans), encoding="utf-8")
        partial.replace(path)  # whole or absent: the test never reads half a file

    atexit.register(dump)


#: The tracer provider spans are recorded on (None unless PGFLOW_TEST_SPANS is set).
provider: Any = None

if os.environ.get("PGFLOW_TEST_SPANS"):
    _record_spans(Path(os.environ["PGFLOW_TEST_SPANS"]))
