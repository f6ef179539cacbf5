"""A displaced app that has not noticed yet claims nothing; the id's new incarnation runs it all.

The displaced app's heartbeat interval is long, so it keeps serving its queue while another
incarnation holds its id. Every claim it makes is recorded: the test awaits one that began
after the jobs were inserted (an event, not a sleep) and checks it got nothing.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from pgflow.app import Pgflow
from pgflow.backend import Backend
from pgflow.records import InstanceInfo, Job, JobState
from pgflow.worker import Worker

WAIT = 30.0
FAST: dict[str, Any] = {"poll_interval": 0.05, "stage_interval": 0.05, "shutdown_timeout": 5.0}
UNAWARE: dict[str, Any] = {**FAST, "heartbeat_interval": 3600.0, "stale_timeout": 7200.0}


class Fenced(Worker):
    def perform(self, job: Job) -> Any:
        return None


def await_true(condition: Callable[[], bool]) -> bool:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


class ClaimLog:
    """Wraps a backend's claim_jobs: which thread claimed, in which order, and what it got."""

    def __init__(self, backend: Backend) -> None:
        self._original = backend.claim_jobs
        self._order = itertools.count()
        self._lock = threading.Lock()
        self.calls: list[tuple[int, threading.Thread, list[int]]] = []

    def __call__(self, *args: Any, **kwargs: Any) -> list[Job]:
        began = next(self._order)
        claimed = self._original(*args, **kwargs)
        with self._lock:
            self.calls.append((began, threading.current_thread(), [job.id for job in claimed]))
        return claimed

    def next_order(self) -> int:
        return next(self._order)

    def by(self, thread: threading.Thread, since: int = 0) -> list[list[int]]:
        with self._lock:
            return [ids for began, who, ids in self.calls if who is thread and began >= since]


@pytest.fixture
def apps() -> Iterator[list[Pgflow]]:
    started: list[Pgflow] = []
    yield started
    for app in started:
        app.stop(timeout=5)


def test_a_displaced_app_claims_nothing_before_it_notices(
    backend: Backend, apps: list[Pgflow], monkeypatch: pytest.MonkeyPatch
) -> None:
    log = ClaimLog(backend)
    monkeypatch.setattr(backend, "claim_jobs", log)
    unaware = Pgflow(backend, **{**UNAWARE, "instance_id": "shared"})
    unaware.start()
    apps.append(unaware)
    producer_thread = unaware._producers["default"]._thread
    # Another process registers under the same id (directly through the backend).
    backend.register_instance(InstanceInfo(instance_id="shared", hostname="h2", incarnation="x"))

    jobs = unaware.insert([Fenced.new() for _ in range(5)])
    since = log.next_order()
    assert await_true(lambda: len(log.by(producer_thread, since)) >= 1)

    assert all(ids == [] for ids in log.by(producer_thread))
    assert not unaware.displaced  # it has not noticed: the claim itself was fenced
    for job in jobs:
        assert backend.get_job(job.id).state is JobState.AVAILABLE  # type: ignore[union-attr]

    successor = Pgflow(backend, **{**FAST, "instance_id": "shared"})
    successor.start()
    apps.append(successor)

    def all_completed() -> bool:
        stored = [backend.get_job(job.id) for job in jobs]
        return all(s is not None and s.state is JobState.COMPLETED for s in stored)

    assert await_true(all_completed)
    for job in jobs:
        stored = backend.get_job(job.id)
        assert stored is not None and (stored.attempt, stored.errors) == (1, ())
    assert all(ids == [] for ids in log.by(producer_thread))
