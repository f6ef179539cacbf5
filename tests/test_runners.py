"""The shared runner pool: handing a task to a runner, and taking it back before it wakes."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from pgflow.engine import runners
from pgflow.engine.runners import RunnerPool


class _GatedLock:
    """A runner's `go` lock whose runner thread first waits for `gate`: the runner has
    been handed its task but has not woken up yet, for as long as the test wants."""

    def __init__(self, gate: threading.Event) -> None:
        self._lock = threading.Lock()
        self._gate = gate

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        if blocking and threading.current_thread().name == "pgflow-runner":
            assert self._gate.wait(5)
        return self._lock.acquire(blocking, timeout)

    def release(self) -> None:
        self._lock.release()


def test_a_task_taken_back_before_its_runner_woke_never_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gate = threading.Event()
    monkeypatch.setattr(runners, "_allocate_lock", lambda: _GatedLock(gate))
    pool = RunnerPool()
    ran: list[str] = []
    done = threading.Event()
    runner = pool.run(lambda: ran.append("first"))
    assert pool.take_back(runner)
    gate.set()  # the runner wakes now: its hand-off was undone, it waits for the next

    def second() -> None:
        ran.append("second")
        done.set()

    assert pool.run(second) is runner  # back among the idle runners
    assert done.wait(5)
    assert ran == ["second"]


def test_a_task_its_runner_picked_up_cannot_be_taken_back() -> None:
    pool = RunnerPool()
    started, release = threading.Event(), threading.Event()

    def task() -> None:
        started.set()
        release.wait(5)

    runner = pool.run(task)
    assert started.wait(5)
    try:
        assert not pool.take_back(runner)
    finally:
        release.set()


def test_a_runner_taken_back_into_a_full_pool_ends_its_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gate = threading.Event()
    monkeypatch.setattr(runners, "_allocate_lock", lambda: _GatedLock(gate))
    pool = RunnerPool(max_idle=0)
    ran: list[Any] = []
    runner = pool.run(lambda: ran.append(1))
    assert pool.take_back(runner)
    gate.set()
    runner.thread.join(5)
    assert not runner.thread.is_alive()
    assert ran == []
