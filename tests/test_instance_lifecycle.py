"""The instance lifecycle on InMemoryBackend: stopping with stuck queues, restarts under
the same instance id, displaced processes, and the leader's duties fenced by its lease.

Real threads and the real clock; every wait is bounded and awaits an event.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from pgflow.app import Pgflow
from pgflow.records import Job
from pgflow.worker import Worker
from pgflow_backends.memory import InMemoryBackend

FAST: dict[str, Any] = {"poll_interval": 0.05, "heartbeat_interval": 0.1, "stale_timeout": 1.0,
        "stage_interval": 0.05, "shutdown_timeout": 5.0}  # fmt: skip

RELEASE = threading.Event()
STARTED: list[int] = []
STARTED_LOCK = threading.Lock()


class Stuck(Worker):
    """Ignores cancellation: only RELEASE (set at teardown) ends it."""

    def perform(self, job: Job) -> Any:
        with STARTED_LOCK:
            STARTED.append(job.id)
        RELEASE.wait(60)


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


@pytest.fixture(autouse=True)
def _reset() -> Iterator[None]:
    RELEASE.clear()
    with STARTED_LOCK:
        STARTED.clear()
    yield
    RELEASE.set()


@pytest.fixture
def memory() -> InMemoryBackend:
    return InMemoryBackend()


def test_stop_with_stuck_queues_waits_for_them_together(memory: InMemoryBackend) -> None:
    queues = [f"stuck_{n}" for n in range(8)]
    app = Pgflow(memory, queues=dict.fromkeys(queues, 1), **FAST)
    jobs = app.insert([Stuck.new(queue=queue) for queue in queues])
    app.start()
    assert wait_for(lambda: len(STARTED) == len(queues))
    timeout = 1.0

    began = time.monotonic()
    drained = app.stop(timeout=timeout)
    took = time.monotonic() - began

    assert drained is False
    # A behaviour bound, not a benchmark: one queue after another took T + ~1 s per queue.
    assert took < timeout + 5.0, f"stop(timeout={timeout}) took {took:.1f}s"
    assert {job.id for job in jobs} == set(STARTED)
