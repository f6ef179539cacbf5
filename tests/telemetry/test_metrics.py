"""Per-process Prometheus metrics of the jobs a process runs, in a registry of the test's."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import pytest
from click.testing import CliRunner

pytest.importorskip("prometheus_client")

from prometheus_client import CollectorRegistry

import pgflow
import pgflow.telemetry
import pgflow.testing
from pgflow import cli
from pgflow.clock import SYSTEM_CLOCK
from pgflow.records import RescueReport
from pgflow.runtime.leader import Leader
from pgflow.telemetry import hooks


class Pay(pgflow.Worker, queue="billing", max_attempts=2):
    def perform(self, job: pgflow.Job) -> Any:
        if job.args.get("fail"):
            raise ValueError("card declined")
        return None


@pytest.fixture
def registry() -> Iterator[CollectorRegistry]:
    fresh = CollectorRegistry()
    pgflow.telemetry.enable_metrics(fresh)
    try:
        yield fresh
    finally:
        pgflow.telemetry.disable_metrics()


def test_attempts_are_timed_and_counted_by_queue_worker_and_outcome(
    registry: CollectorRegistry,
) -> None:
    with pgflow.testing.manual() as t:
        t.app.insert(Pay.new({}))
        failing = t.app.insert(Pay.new({"fail": True}))
        result = t.drain(with_scheduled=True, raise_on_failure=False)
    assert (result.completed, result.retried, result.discarded) == (1, 1, 1)
    worker = failing.worker

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    count = "pgflow_job_duration_seconds_count"
    assert value(count, queue="billing", worker=worker, outcome="completed") == 1
    assert value(count, queue="billing", worker=worker, outcome="retry") == 1
    assert value(count, queue="billing", worker=worker, outcome="discarded") == 1
    assert value("pgflow_job_failures_total", queue="billing", worker=worker) == 2
    assert value("pgflow_jobs_completed_total", queue="billing", worker=worker) == 1
    assert value("pgflow_job_enqueue_to_start_seconds_count", queue="billing") == 3
    waited = value("pgflow_job_enqueue_to_start_seconds_sum", queue="billing")
    assert waited is not None and waited >= 0


def test_the_leaders_rescues_are_counted(registry: CollectorRegistry) -> None:
    class Store:
        def rescue_stale(self, stale_timeout: float) -> RescueReport:
            return RescueReport(instances=("gone",), rescued=(4, 5, 6), discarded=(7,))

    leader = Leader(
        backend=Store(),  # type: ignore[arg-type]
        instance_id="leader",
        clock=SYSTEM_CLOCK,
        interval=1.0,
        stale_timeout=30.0,
        rescue_interval=1.0,
        prune_after=None,
        prune_interval=60.0,
        cron=None,
        on_staged=lambda queues: None,
    )
    leader.rescue()
    assert registry.get_sample_value("pgflow_jobs_rescued_total") == 3


def test_metrics_and_tracing_are_independent_halves(registry: CollectorRegistry) -> None:
    assert hooks.OBSERVER is not None and hooks.OBSERVER.tracing is None
    pgflow.telemetry.uninstrument()  # tracing off: metrics stay on
    assert hooks.OBSERVER is not None and hooks.OBSERVER.metrics is not None
    pgflow.telemetry.disable_metrics()
    assert hooks.OBSERVER is None


def test_metrics_port_without_the_extra_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    monkeypatch.delitem(sys.modules, "pgflow.telemetry.metrics", raising=False)
    result = CliRunner().invoke(cli.cli, ["worker", "--url", "memory://", "--metrics-port", "9464"])
    assert result.exit_code == 2
    assert 'pip install "pgflow[metrics]"' in result.output
    assert hooks.OBSERVER is None


def test_metrics_port_is_checked() -> None:
    result = CliRunner().invoke(cli.cli, ["worker", "--url", "memory://", "--metrics-port", "0"])
    assert result.exit_code == 2 and "--metrics-port" in result.output
