"""Tracing on an in-memory exporter for one test, turned off again afterwards."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

try:
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
except ImportError:  # without pgflow[otel] (the dev extra has it): only the metrics tests run
    collect_ignore = ["test_tracing.py", "test_processes.py"]

import pgflow.telemetry


class Traced:
    """The test's provider, its tracer, and the spans finished so far."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider()
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.tracer = self.provider.get_tracer("tests")

    def spans(self, name: str | None = None, **attributes: Any) -> list[ReadableSpan]:
        return [
            span
            for span in self.exporter.get_finished_spans()
            if (name is None or span.name == name)
            and all((span.attributes or {}).get(k) == v for k, v in attributes.items())
        ]

    def one(self, name: str, **attributes: Any) -> ReadableSpan:
        found = self.spans(name, **attributes)
        assert len(found) == 1, [(s.name, dict(s.attributes or {})) for s in self.spans()]
        return found[0]


@pytest.fixture
def traced() -> Iterator[Traced]:
    recorder = Traced()
    pgflow.telemetry.instrument(recorder.provider)
    try:
        yield recorder
    finally:
        pgflow.telemetry.uninstrument()
