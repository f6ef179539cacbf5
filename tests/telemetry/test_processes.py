"""Telemetry across real processes on PostgreSQL: one trace from the request that inserted
a job and started a run (process A) to the job and both steps run by a worker (process B),
and a worker's /metrics scraped over HTTP after it ran jobs."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk")
pytest.importorskip("prometheus_client")
pytest.importorskip("psycopg")

from prometheus_client.parser import text_string_to_metric_families

import pgflow
from tests.telemetry.traced_jobs import TracedJob
from tests.telemetry.traced_jobs import flow as traced_flow

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
JOB_WORKER = "tests.telemetry.traced_jobs.TracedJob"
TASK_WORKER = "pgflow.flow:traced_pair"


def _env(spans: Path | None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.pop("PGFLOW_TEST_SPANS", None)
    if spans is not None:
        env["PGFLOW_TEST_SPANS"] = str(spans)
    return env


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_until(condition: Callable[[], bool], what: str, log: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; worker log:\n{log.read_text()}")
        time.sleep(0.05)


@contextlib.contextmanager
def _worker(
    url: str, tmp_path: Path, spans: Path | None, *extra: str
) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """A real `pgflow worker` process serving `traced`; stopped with SIGTERM (killed if it
    does not stop in time) when the block ends."""
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable, "-m", "pgflow", "worker", "--url", url,
                "--queues", "traced=4", "--import", "tests.telemetry.traced_jobs",
                "--instance-id", "telemetry-b", "--poll-interval", "0.2", *extra,
            ],
            env=_env(spans),
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        yield proc, log
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


@pytest.fixture
def pg(postgres_url: str) -> str:
    app = pgflow.Pgflow(postgres_url)
    try:
        app.migrate()
    finally:
        app.close()
    return postgres_url


def _finished(app: pgflow.Pgflow, job_id: int, workflow_id: str) -> bool:
    job = app.get_job(job_id)
    run = app.get_run(workflow_id)
    return (
        job is not None
        and job.state is pgflow.JobState.COMPLETED
        and run is not None
        and run.state is pgflow.RunState.COMPLETED
    )


def _spans(path: Path) -> list[dict[str, Any]]:
    spans: list[dict[str, Any]] = json.loads(path.read_text(encoding="utf-8"))
    return spans


def _one(spans: list[dict[str, Any]], name: str, **attributes: Any) -> dict[str, Any]:
    found = [
        span
        for span in spans
        if span["name"] == name
        and all(span["attributes"].get(key) == value for key, value in attributes.items())
    ]
    assert len(found) == 1, f"{name} {attributes}: {len(found)} spans in {spans}"
    return found[0]


def test_one_trace_from_the_request_to_every_step_on_another_process(
    pg: str, tmp_path: Path
) -> None:
    spans_a, spans_b = tmp_path / "a.json", tmp_path / "b.json"
    produced = subprocess.run(
        [sys.executable, "-m", "tests.telemetry.produce", pg],
        env=_env(spans_a),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert produced.returncode == 0, produced.stderr
    ids = json.loads(produced.stdout.strip().splitlines()[-1])
    app = pgflow.Pgflow(pg)
    try:
        with _worker(pg, tmp_path, spans_b) as (proc, log):
            _wait_until(
                lambda: _finished(app, ids["job_id"], ids["workflow_id"]), "job and run", log
            )
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0, log.read_text()
    finally:
        app.close()

    a, b = _spans(spans_a), _spans(spans_b)
    request = _one(a, "request")
    send = _one(a, "send traced", **{"pgflow.job.id": ids["job_id"]})
    start = _one(a, "start_run traced_pair", **{"pgflow.workflow_id": ids["workflow_id"]})
    assert request["parent_id"] is None
    assert send["parent_id"] == request["span_id"] and send["kind"] == "PRODUCER"
    assert start["parent_id"] == request["span_id"]

    job = _one(b, "process traced", **{"pgflow.job.id": ids["job_id"]})
    assert job["kind"] == "CONSUMER" and job["status"] == "UNSET"
    assert job["parent_id"] == send["span_id"]  # continued from the traceparent in meta
    expected = {
        "messaging.system": "pgflow",
        "messaging.destination.name": "traced",
        "messaging.message.id": str(ids["job_id"]),
        "pgflow.queue": "traced",
        "pgflow.worker": JOB_WORKER,
        "pgflow.attempt": 1,
        "pgflow.outcome": "completed",
    }
    assert {key: job["attributes"].get(key) for key in expected} == expected
    for step in ("first", "second"):
        task = _one(b, "process traced", **{"pgflow.step": step})
        assert task["parent_id"] == start["span_id"], step  # the second: via the first's meta
        assert task["attributes"]["pgflow.workflow_id"] == ids["workflow_id"]
        assert task["attributes"]["pgflow.worker"] == TASK_WORKER
    assert {span["trace_id"] for span in a + b} == {ids["trace"]}


def test_a_worker_serves_its_job_metrics_over_http(pg: str, tmp_path: Path) -> None:
    port = _free_port()
    app = pgflow.Pgflow(pg)
    try:
        done = app.insert(TracedJob.new({"value": 1}))
        failed = app.insert(TracedJob.new({"fail": True}, max_attempts=1))
        handle = app.start_run(traced_flow, 2)
        with _worker(pg, tmp_path, None, "--metrics-port", str(port)) as (_proc, log):

            def settled() -> bool:
                stored = app.get_job(failed.id)
                return (
                    _finished(app, done.id, handle.workflow_id)
                    and stored is not None
                    and stored.state is pgflow.JobState.DISCARDED
                )

            _wait_until(settled, "jobs and run", log)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
                text = reply.read().decode()
    finally:
        app.close()

    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }

    def value(name: str, **labels: str) -> float:
        return samples.get((name, tuple(sorted(labels.items()))), 0.0)

    duration = "pgflow_job_duration_seconds_count"
    assert value(duration, queue="traced", worker=JOB_WORKER, outcome="completed") == 1
    assert value(duration, queue="traced", worker=JOB_WORKER, outcome="discarded") == 1
    assert value(duration, queue="traced", worker=TASK_WORKER, outcome="completed") == 2
    assert value("pgflow_job_enqueue_to_start_seconds_count", queue="traced") == 4
    assert value("pgflow_job_failures_total", queue="traced", worker=JOB_WORKER) == 1
    assert value("pgflow_jobs_completed_total", queue="traced", worker=TASK_WORKER) == 2
    assert ("pgflow_jobs_rescued_total", ()) in samples
