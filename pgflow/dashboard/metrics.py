"""`/metrics`: the store's state in Prometheus' text format, from the read model's cache.

Jobs by queue and state and runs by flow and state are read at most once per cache period
(the same cached counts the overview shows), however often Prometheus scrapes. Uses
prometheus_client (imported here only, on the first scrape).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from pgflow.dashboard.app import Dashboard

__all__ = ["exposition"]


def exposition(board: Dashboard) -> tuple[bytes, str]:
    """The scrape's body and content type."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
    from prometheus_client.core import CollectorRegistry, GaugeMetricFamily

    read = board.read

    class StoreCollector:
        """Gauges of one scrape, built from the cached counts."""

        def collect(self) -> Iterator[Metric]:
            jobs = GaugeMetricFamily(
                "pgflow_jobs", "Jobs stored, by queue and state.", labels=["queue", "state"]
            )
            for row in read.state_counts():
                jobs.add_metric([row.queue, row.state.value], row.count)
            yield jobs
            runs = GaugeMetricFamily(
                "pgflow_runs", "Flow runs stored, by flow and state.", labels=["flow", "state"]
            )
            for run in read.run_counts():
                runs.add_metric([run.flow, run.state.value], run.count)
            yield runs
            paused = GaugeMetricFamily(
                "pgflow_queue_paused", "1 while the queue is paused.", labels=["queue"]
            )
            for control in board.backend.queue_controls():
                paused.add_metric([control.queue], 1.0 if control.paused else 0.0)
            yield paused
            instances = GaugeMetricFamily(
                "pgflow_instances", "Registered instances, by status.", labels=["status"]
            )
            listed = board.backend.list_instances()
            for status in ("online", "offline"):
                count = sum(1 for item in listed if item.status == status)
                instances.add_metric([status], count)
            yield instances

    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector())
    return generate_latest(registry), CONTENT_TYPE_LATEST
