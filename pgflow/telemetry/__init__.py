"""Optional telemetry: OpenTelemetry traces (`pgflow[otel]`) and per-process Prometheus
metrics (`pgflow[metrics]`). Both are off by default; while off, nothing here imports either
library and the job path pays one attribute test (`hooks.OBSERVER`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pgflow.telemetry import hooks

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider
    from prometheus_client import CollectorRegistry

__all__ = ["disable_metrics", "enable_metrics", "instrument", "serve_metrics", "uninstrument"]


def instrument(tracer_provider: TracerProvider | None = None) -> None:
    """Turn tracing on: spans for inserts, job attempts, start_run and in-process steps, on
    `tracer_provider` (default: OpenTelemetry's global one). Calling it again replaces it."""
    try:
        from pgflow.telemetry.tracing import OtelTracing
    except ImportError as exc:
        raise ImportError(
            f"pgflow.telemetry.instrument needs OpenTelemetry ({exc.name} is not installed): "
            'pip install "pgflow[otel]"'
        ) from exc
    hooks.set_tracing(OtelTracing(tracer_provider))


def uninstrument() -> None:
    """Turn tracing off again (metrics, if enabled, stay on)."""
    hooks.set_tracing(None)


def enable_metrics(registry: CollectorRegistry | None = None) -> Any:
    """Count this process's jobs in Prometheus collectors (in `registry`, default the
    global one) and return them; expose them with `serve_metrics` or your own server."""
    try:
        from pgflow.telemetry.metrics import collectors
    except ImportError as exc:
        raise ImportError(
            f"pgflow metrics need prometheus_client ({exc.name} is not installed): "
            'pip install "pgflow[metrics]"'
        ) from exc
    made = collectors(registry)
    hooks.set_metrics(made)
    return made


def disable_metrics() -> None:
    """Stop counting (the collectors keep the values they have)."""
    hooks.set_metrics(None)


def serve_metrics(port: int, host: str = "127.0.0.1") -> Any:
    """`enable_metrics`, then serve the global registry at http://host:port/metrics on a
    daemon thread (what `pgflow worker --metrics-port` does); returns the HTTP server."""
    enable_metrics()
    from pgflow.telemetry.metrics import serve

    return serve(port, host)
