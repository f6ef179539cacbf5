"""Who decides what runs: only workers registered in the process, or under `worker_modules`.

A job row naming any other module must never make a process import it; the job is snoozed
(a deploy may bring its worker) and discarded once the lookup's window has passed.
"""

from __future__ import annotations

import secrets
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import pgflow
from pgflow.clock import FakeClock
from pgflow.records import Job, JobState, NewJob
from pgflow.runtime.execution import OutcomeKind, run_job
from pgflow.runtime.worker_lookup import UNKNOWN_WORKER_SNOOZE, WorkerLookup
from pgflow.worker import Worker
from pgflow_backends.memory import InMemoryBackend


class Registered(Worker):
    def perform(self, job: Job) -> Any:
        return "ran"


def write_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: str) -> str:
    """A fresh importable module whose import, even a failed one, leaves its name in the
    list `imported_by_rows` on the `sys` module."""
    name = f"row_named_{secrets.token_hex(4)}"
    (tmp_path / f"{name}.py").write_text(
        "import sys\nsys.__dict__.setdefault('imported_by_rows', []).append(__name__)\n" + body
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def imported(name: str) -> bool:
    return name in sys.__dict__.get("imported_by_rows", [])


WORKER_BODY = (
    "import pgflow\nclass Job(pgflow.Worker):\n    def perform(self, job):\n        return 'lazy'\n"
)


def claim(backend: InMemoryBackend) -> Job:
    (job,) = backend.claim_jobs("default", "tester", 1)
    return job


def test_a_row_never_imports_a_module_that_is_not_allowed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = write_module(tmp_path, monkeypatch, WORKER_BODY)
    clock = FakeClock()
    backend = InMemoryBackend(clock=clock)
    backend.insert_jobs([NewJob(worker=f"{module}.Job", max_attempts=1)])
    lookup = WorkerLookup(clock=clock)
    outcome = run_job(backend, claim(backend), "tester", clock=clock, lookup=lookup)
    assert not imported(module)
    assert outcome.kind is OutcomeKind.SNOOZED
    assert outcome.snooze == UNKNOWN_WORKER_SNOOZE
    stored = backend.get_job(outcome.job.id)
    assert stored is not None and stored.state is JobState.SCHEDULED and stored.attempt == 0


def test_an_unknown_worker_is_snoozed_then_discarded_with_a_clear_error() -> None:
    clock = FakeClock()
    backend = InMemoryBackend(clock=clock)
    backend.insert_jobs([NewJob(worker="elsewhere.workers.Missing", max_attempts=3)])
    lookup = WorkerLookup(snooze=60.0, window=600.0, clock=clock)
    kinds = []
    for _ in range(20):
        outcome = run_job(backend, claim(backend), "tester", clock=clock, lookup=lookup)
        kinds.append(outcome.kind)
        if outcome.kind is not OutcomeKind.SNOOZED:
            break
        clock.advance(60)
        backend.stage_jobs()
    assert kinds == [OutcomeKind.SNOOZED] * 10 + [OutcomeKind.DISCARDED]
    stored = backend.get_job(outcome.job.id)
    assert stored is not None and stored.state is JobState.DISCARDED
    error = stored.errors[-1]
    assert error["kind"] == "pgflow.UnknownWorker"
    assert "elsewhere.workers.Missing" in error["message"]
    assert "--import" in error["message"] and "worker_modules" in error["message"]


def test_allowed_prefixes_are_imported_lazily(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = write_module(tmp_path, monkeypatch, WORKER_BODY)
    backend = InMemoryBackend()
    backend.insert_jobs([NewJob(worker=f"{module}.Job")])
    outcome = run_job(backend, claim(backend), "tester", lookup=WorkerLookup((f"{module}.",)))
    assert imported(module)
    assert outcome.kind is OutcomeKind.COMPLETED


def test_registered_workers_and_workflow_workers_need_no_allow_list() -> None:
    flow = pgflow.Flow(f"lookup_flow_{secrets.token_hex(3)}")

    @flow.step
    def double(state: Any) -> Any:
        return state["n"] * 2

    FlowJob = pgflow.workflow_worker(flow)
    backend = InMemoryBackend()
    backend.insert_jobs([Registered.new(), FlowJob.new({"n": 21})])
    lookup = WorkerLookup()
    outcomes = [run_job(backend, claim(backend), "t", lookup=lookup) for _ in range(2)]
    assert [o.kind for o in outcomes] == [OutcomeKind.COMPLETED] * 2


def test_app_serves_allowed_modules_and_checks_the_option(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = write_module(tmp_path, monkeypatch, WORKER_BODY)
    with pytest.raises(pgflow.DefinitionError, match="worker_modules"):
        pgflow.Pgflow("memory://", worker_modules="myapp.")
    with pytest.raises(pgflow.DefinitionError, match="worker_modules"):
        pgflow.Pgflow("memory://", worker_modules=("",))
    app = pgflow.Pgflow("memory://", worker_modules=(f"{module}.",), poll_interval=0.05)
    job = app.insert(NewJob(worker=f"{module}.Job"))
    app.start()
    try:
        assert _await_state(app, job.id, JobState.COMPLETED)
    finally:
        app.stop(timeout=5)
    assert imported(module)


def _await_state(app: pgflow.Pgflow, job_id: int, state: JobState) -> bool:
    import time

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        stored = app.backend.get_job(job_id)
        if stored is not None and stored.state is state:
            return True
        time.sleep(0.02)
    return False


def test_testing_fails_an_unknown_worker_at_once_without_importing_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = write_module(tmp_path, monkeypatch, WORKER_BODY)
    with pgflow.testing.manual() as t:
        t.app.insert(NewJob(worker=f"{module}.Job"))
        with pytest.raises(pgflow.DefinitionError, match="unknown worker"):
            t.drain()
        assert t.drain(raise_on_failure=False).total == 0
        [job] = t.app.backend.list_jobs()
        assert job.state is JobState.DISCARDED
    assert not imported(module)
    with (
        pytest.raises(pgflow.DefinitionError, match="unknown worker"),
        pgflow.testing.inline() as t,
    ):
        t.app.insert(NewJob(worker=f"{module}.Job"))
    assert not imported(module)


def test_cli_worker_passes_worker_modules(monkeypatch: pytest.MonkeyPatch) -> None:
    from pgflow import app as app_module
    from pgflow.cli import cli

    seen: dict[str, Any] = {}

    class Stub:
        def __init__(self, url: str, **options: Any) -> None:
            seen.update(options)

        def run(self) -> None:
            return None

    monkeypatch.setattr(app_module, "Pgflow", Stub)
    result = CliRunner().invoke(
        cli,
        ["worker", "--url", "memory://", "--worker-module", "a.", "--worker-module", "b."],
    )
    assert result.exit_code == 0, result.output
    assert tuple(seen["worker_modules"]) == ("a.", "b.")
