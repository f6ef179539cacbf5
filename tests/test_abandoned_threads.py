"""Timed-out work whose thread runs on: bounded, counted, logged, and holding its slot.

Hanging code blocks on events the test releases; every wait is bounded and awaits an event
or a state, never a fixed sleep.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

import pgflow
from pgflow.abandoned import ABANDONED, TooManyAbandonedThreads
from pgflow.app import Pgflow
from pgflow.cli import render_status, status_data
from pgflow.records import Instance, Job, JobState
from pgflow.worker import Worker
from pgflow_backends.memory import InMemoryBackend
from tests.waiting import wait_for

HANG = 30.0  # a hung step or perform waits this long at most, if a test fails to release it


@pytest.fixture
def no_abandoned_steps() -> None:
    """Runners abandoned by earlier tests end once released; start from none."""
    assert wait_for(lambda: ABANDONED.steps == 0)


def test_timed_out_execute_steps_hold_at_most_the_limit_of_threads(
    no_abandoned_steps: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="pgflow.runtime")
    monkeypatch.setattr(ABANDONED, "limit", 10)
    release = threading.Event()
    flow = pgflow.Flow("hangs-forever")

    @flow.step
    def stuck(state: int) -> int:
        release.wait(HANG)
        return state

    before = threading.active_count()
    timed_out = refused = 0
    try:
        for n in range(1000):
            try:
                pgflow.execute(flow, n, timeout=None, step_timeout=0.01, max_attempts=1)
            except pgflow.StepTimedOut:
                timed_out += 1
            except TooManyAbandonedThreads as exc:
                refused += 1
                assert "hangs-forever" in str(exc) and "stuck" in str(exc)
            assert threading.active_count() <= before + 10 + 1
        assert (timed_out, refused, ABANDONED.steps) == (10, 990, 10)
        counts = [r.abandoned_steps for r in caplog.records if hasattr(r, "abandoned_steps")]
        assert counts == list(range(1, 11))  # one WARNING per abandoned step, with the count
    finally:
        release.set()
    # Once the stuck steps return, their threads are no longer counted and execute runs again.
    assert wait_for(lambda: ABANDONED.steps == 0)
    assert pgflow.execute(flow, 7, timeout=None, step_timeout=5.0) == 7


GATE = threading.Event()
CONCURRENCY = threading.Lock()
RUNNING = [0]
MOST = [0]
ENTERED = [0]


class HangsPastTimeout(Worker, queue="tight", timeout=1.0, max_attempts=1):
    """Ignores its timeout until GATE opens; counts how many performs run at once."""

    def perform(self, job: Job) -> Any:
        with CONCURRENCY:
            RUNNING[0] += 1
            ENTERED[0] += 1
            MOST[0] = max(MOST[0], RUNNING[0])
        try:
            GATE.wait(HANG)
        finally:
            with CONCURRENCY:
                RUNNING[0] -= 1


@pytest.fixture
def app() -> Iterator[Pgflow]:
    GATE.clear()
    RUNNING[0] = MOST[0] = ENTERED[0] = 0
    app = Pgflow(
        InMemoryBackend(),
        instance_id="tight-node",
        queues={"tight": 2},
        poll_interval=0.05,
        heartbeat_interval=0.05,
        stale_timeout=5.0,
        shutdown_timeout=5.0,
    )
    yield app
    GATE.set()
    app.stop(timeout=5)


def test_a_timed_out_perform_keeps_its_slot_until_its_thread_ends(
    app: Pgflow, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="pgflow")
    jobs = app.insert([HangsPastTimeout.new({"n": n}) for n in range(6)])
    ids = [job.id for job in jobs]
    backend = app.backend

    def states() -> list[JobState]:
        return [backend.get_job(job_id).state for job_id in ids]  # type: ignore[union-attr]

    def abandoned() -> int:
        return sum(i.abandoned for i in backend.list_instances())

    app.start()
    # The two timed-out attempts are recorded at their deadline while their threads hang.
    assert wait_for(lambda: states().count(JobState.DISCARDED) == 2)
    # Either a third perform starts (the slots were freed: the bug) or the instance reports
    # its two abandoned threads; only then is the gate opened.
    assert wait_for(lambda: ENTERED[0] > 2 or abandoned() == 2)
    assert ENTERED[0] == 2
    GATE.set()
    assert wait_for(lambda: states().count(JobState.COMPLETED) == 4)
    assert MOST[0] == 2
    assert wait_for(lambda: abandoned() == 0)
    warnings = [r for r in caplog.records if getattr(r, "abandoned_jobs", None) is not None]
    assert len(warnings) == 2
    assert "timed out" in warnings[0].getMessage()


def test_status_shows_each_instance_abandoned_threads() -> None:
    now = datetime.now(UTC)
    instance = Instance(
        instance_id="node-a", status="online", heartbeat_at=now, started_at=now, abandoned=3
    )
    text = render_status("memory://", [], [instance], show_all=False)
    header, _rule, row = text.splitlines()[-3:]
    assert header.split()[-1] == "abandoned"
    assert row.split()[-1] == "3"
    assert status_data("memory://", [], [instance])["instances"][0]["abandoned"] == 3
