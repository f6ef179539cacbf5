"""Per-process Prometheus metrics of the jobs this process runs, and their HTTP endpoint.

Imported only when metrics are enabled (`pgflow worker --metrics-port`, or
`pgflow.telemetry.enable_metrics`). Labels are queue, worker and outcome names, which code
defines: never job ids or args, so the number of series stays bounded.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, start_http_server

if TYPE_CHECKING:
    from pgflow.records import Job

__all__ = ["DURATION_BUCKETS", "PrometheusMetrics", "collectors", "serve"]

logger = logging.getLogger("pgflow.telemetry")

#: Seconds: from sub-millisecond jobs to ten-minute ones.
DURATION_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
)  # fmt: skip


class PrometheusMetrics:
    """The metrics half of `pgflow.telemetry.hooks.Observer`: one set of collectors."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.duration = Histogram(
            "pgflow_job_duration_seconds",
            "Seconds one attempt of a job ran in this process, by how it ended.",
            ("queue", "worker", "outcome"),
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.enqueue_to_start = Histogram(
            "pgflow_job_enqueue_to_start_seconds",
            "Seconds from when a job was due (inserted, scheduled or retried) to its claim.",
            ("queue",),
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.failures = Counter(
            "pgflow_job_failures_total",
            "Attempts that failed here (to be retried, or discarded).",
            ("queue", "worker"),
            registry=registry,
        )
        self.completed = Counter(
            "pgflow_jobs_completed_total",
            "Attempts that completed here.",
            ("queue", "worker"),
            registry=registry,
        )
        self.rescued_total = Counter(
            "pgflow_jobs_rescued_total",
            "Jobs of dead instances this process (as leader) made available again.",
            registry=registry,
        )

        # Labelled children by label values: `labels()` locks and checks on every call,
        # a dict lookup does not (the label sets are bounded, so are these dicts).
        self._waits: dict[str, Any] = {}
        self._ends: dict[tuple[str, str, str], tuple[Any, Any]] = {}

    def job_started(self, job: Job) -> None:
        attempted = job.attempted_at
        if attempted is None:
            return
        waited = (attempted - job.scheduled_at).total_seconds()
        child = self._waits.get(job.queue)
        if child is None:
            child = self._waits[job.queue] = self.enqueue_to_start.labels(job.queue)
        child.observe(waited if waited > 0.0 else 0.0)

    def job_finished(self, job: Job, seconds: float, outcome: str) -> None:
        key = (job.queue, job.worker, outcome)
        children = self._ends.get(key)
        if children is None:
            children = self._ends[key] = self._children(*key)
        duration, counter = children
        duration.observe(seconds)
        if counter is not None:
            counter.inc()

    def _children(self, queue: str, worker: str, outcome: str) -> tuple[Any, Any]:
        """The duration histogram's child for these labels, and the counter the outcome
        adds to (failures, completions, or None for snoozes and cancels)."""
        counter = None
        if outcome in ("retry", "discarded", "error"):
            counter = self.failures.labels(queue, worker)
        elif outcome == "completed":
            counter = self.completed.labels(queue, worker)
        return self.duration.labels(queue, worker, outcome), counter

    def rescued(self, count: int) -> None:
        self.rescued_total.inc(count)


_lock = threading.Lock()
_made: dict[int, PrometheusMetrics] = {}


def collectors(registry: CollectorRegistry | None = None) -> PrometheusMetrics:
    """The process's pgflow collectors in `registry` (default: prometheus_client's global
    one), made once: registering the same names twice is an error in prometheus_client."""
    target = REGISTRY if registry is None else registry
    with _lock:
        made = _made.get(id(target))
        if made is None:
            made = _made[id(target)] = PrometheusMetrics(target)
        return made


def serve(port: int, host: str = "127.0.0.1", registry: CollectorRegistry | None = None) -> Any:
    """Serve `registry` at http://host:port/metrics on a daemon thread; returns the server."""
    result = start_http_server(port, addr=host, registry=REGISTRY if registry is None else registry)
    logger.info(
        "Prometheus metrics on http://%s:%d/metrics",
        host,
        port,
        extra={"metrics_host": host, "metrics_port": port},
    )
    return result[0] if isinstance(result, tuple) else result
