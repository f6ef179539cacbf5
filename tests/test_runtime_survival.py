"""No job, however malformed, may end a runtime thread (issue 9, item 2).

A row naming an allowed worker module that raises SystemExit at import fails alone; the
queue keeps serving. Every service loop logs and survives any BaseException short of
KeyboardInterrupt. Runs on memory, SQLite and the real PostgreSQL (`backend` fixture).
"""

from __future__ import annotations

import secrets
import threading
from pathlib import Path
from typing import Any

import pytest

import pgflow
from pgflow.app import Pgflow
from pgflow.records import InstanceInfo, Job, JobState, Liveness, NewJob
from pgflow.runtime.heartbeat import Heartbeat
from pgflow.runtime.reconnect import keep_running
from pgflow.worker import Worker
from pgflow_backends.memory import InMemoryBackend
from tests.waiting import wait_or_fail

FAST: dict[str, Any] = {"poll_interval": 0.05, "heartbeat_interval": 0.1, "stale_timeout": 2.0,
        "stage_interval": 0.05, "shutdown_timeout": 5.0}  # fmt: skip


class Good(Worker, queue="mixed"):
    def perform(self, job: Job) -> Any:
        return job.args["n"]


def states(app: Pgflow, jobs: list[Job]) -> list[JobState]:
    found = []
    for job in jobs:
        stored = app.backend.get_job(job.id)
        assert stored is not None
        found.append(stored.state)
    return found


def test_a_module_raising_systemexit_at_import_fails_only_its_job(
    backend: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = f"exits_at_import_{secrets.token_hex(4)}"
    (tmp_path / f"{module}.py").write_text("raise SystemExit(3)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    app = Pgflow(
        backend,
        queues={"mixed": 4},
        instance_id="survivor",
        worker_modules=(f"{module}.",),
        **FAST,
    )
    # Inserted before the start, so the bad row is claimed in one batch with good ones.
    good = app.insert([Good.new({"n": n}) for n in range(3)])
    bad = app.insert(NewJob(worker=f"{module}.Job", queue="mixed", max_attempts=1))
    good += app.insert([Good.new({"n": n}) for n in range(3, 6)])
    app.start()
    try:
        wait_or_fail(lambda: states(app, [*good, bad]) == [JobState.COMPLETED] * 6
                 + [JobState.DISCARDED], "the batch to end")  # fmt: skip
        stored = app.backend.get_job(bad.id)
        assert stored is not None
        error = stored.errors[-1]
        assert error["kind"] == "pgflow.worker.WorkerImportError"
        assert "SystemExit" in error["message"] and module in error["message"]
        later = app.insert([Good.new({"n": n}) for n in range(6, 10)])
        wait_or_fail(lambda: states(app, later) == [JobState.COMPLETED] * 4, "later jobs")
    finally:
        assert app.stop(timeout=5)


class ExitsOnce:
    """A heartbeat backend whose first beat raises SystemExit; later beats are counted."""

    def __init__(self) -> None:
        self.beats = 0
        self.second_beat = threading.Event()

    def heartbeat(self, instance_id: str, incarnation: str = "") -> Liveness:
        self.beats += 1
        if self.beats == 1:
            raise SystemExit("raised inside a service loop")
        self.second_beat.set()
        return Liveness.ALIVE

    def set_abandoned(self, instance_id: str, count: int) -> None:
        pass


def test_a_service_thread_survives_systemexit() -> None:
    backend = ExitsOnce()
    heartbeat = Heartbeat(backend, InstanceInfo(instance_id="hb"), 0.01)  # type: ignore[arg-type]
    heartbeat.start()
    try:
        assert backend.second_beat.wait(20), "the heartbeat thread died on SystemExit"
    finally:
        heartbeat.stop()


def test_keep_running_restarts_a_crashed_loop_and_logs_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls: list[int] = []

    def loop() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise SystemExit("crash")

    keep_running("test loop", loop, threading.Event(), {"instance_id": "x"})
    assert len(calls) == 2
    [record] = [r for r in caplog.records if r.levelname == "ERROR"]
    assert "test loop crashed (SystemExit)" in record.getMessage()
    assert record.exc_info is not None


def test_keep_running_lets_keyboard_interrupt_through() -> None:
    def loop() -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        keep_running("test loop", loop, threading.Event(), {})


def test_a_producer_loop_crash_is_restarted(monkeypatch: pytest.MonkeyPatch) -> None:
    """Anything escaping the claim loop (here a bug in a poll tick) does not end the queue."""
    backend = InMemoryBackend()
    app = Pgflow(backend, queues={"mixed": 2}, instance_id="crashy", **FAST)
    calls = {"n": 0}
    original = backend.cancel_requested

    def crash_once(job_ids: Any) -> set[int]:
        calls["n"] += 1
        if calls["n"] == 1:
            raise SystemExit("poll tick bug")
        return original(job_ids)

    monkeypatch.setattr(backend, "cancel_requested", crash_once)
    started = threading.Event()
    release = threading.Event()

    class Holds(Worker, queue="mixed"):
        def perform(self, job: Job) -> Any:
            started.set()
            release.wait(20)

    held = app.insert(Holds.new())
    app.start()
    try:
        assert started.wait(20)
        wait_or_fail(lambda: calls["n"] >= 1, "a poll tick while a job runs")
        release.set()
        jobs = app.insert([Good.new({"n": n}) for n in range(3)])
        wait_or_fail(lambda: states(app, [held, *jobs]) == [JobState.COMPLETED] * 4, "jobs")
    finally:
        release.set()
        app.stop(timeout=5)


class AsyncExits(Worker, queue="mixed", max_attempts=1):
    async def perform(self, job: Job) -> Any:
        raise SystemExit("raised by an async perform")


class AsyncGood(Worker, queue="mixed"):
    async def perform(self, job: Job) -> Any:
        return job.args["n"]


def test_an_async_perform_raising_systemexit_does_not_end_the_event_loop() -> None:
    """asyncio re-raises SystemExit out of the loop: the runtime's loop thread must survive."""
    app = Pgflow(InMemoryBackend(), queues={"mixed": 4}, instance_id="async-exit", **FAST)
    bad = app.insert(AsyncExits.new())
    app.start()
    try:
        wait_or_fail(lambda: states(app, [bad]) == [JobState.DISCARDED], "the exiting job")
        stored = app.backend.get_job(bad.id)
        assert stored is not None and stored.errors[-1]["kind"] == "SystemExit"
        later = app.insert([AsyncGood.new({"n": n}) for n in range(3)])
        wait_or_fail(lambda: states(app, later) == [JobState.COMPLETED] * 3, "later async jobs")
    finally:
        app.stop(timeout=5)


exits_flow = pgflow.Flow("exits_in_async_step")


@exits_flow.step
async def exits(state: Any) -> Any:
    raise SystemExit("raised by an async step")


fine_flow = pgflow.Flow("fine_async_step")


@fine_flow.step
async def fine(state: Any) -> Any:
    return state["n"] + 1


def test_an_async_step_raising_systemexit_leaves_the_shared_loop_serving() -> None:
    with pytest.raises(SystemExit):
        pgflow.execute(exits_flow, {}, max_attempts=1, timeout=10)
    assert pgflow.execute(fine_flow, {"n": 1}, max_attempts=1, timeout=10) == 2
