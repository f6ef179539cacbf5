"""Reusable daemon threads that run attempts while the caller supervises their deadline.

A runner that hangs in a step is simply not returned to the pool: the caller has already
moved on, and a fresh runner is started the next time one is needed. Runners that finish
return themselves, so steady-state work starts no threads.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from typing import Any

_allocate_lock = threading.Lock
_yield = os.sched_yield
_perf = time.perf_counter

#: How long a waiting caller spins (yielding its CPU) before blocking. On virtual machines
#: a blocked thread takes tens of microseconds to wake; a short spin catches quick attempts.
SPIN_SECONDS = 200e-6
_MAX_WAIT = threading.TIMEOUT_MAX / 2


def wait_for(lock: Any, timeout: float) -> bool:
    """Acquire `lock` within `timeout` seconds: spin briefly, then block; True if acquired."""
    if lock.acquire(False):
        return True
    start = _perf()
    spin_until = start + min(SPIN_SECONDS, timeout)
    while _perf() < spin_until:
        _yield()
        if lock.acquire(False):
            return True
    remaining = timeout - (_perf() - start)
    if remaining > _MAX_WAIT:
        return bool(lock.acquire())
    return bool(lock.acquire(True, remaining)) if remaining > 0 else bool(lock.acquire(False))


class Runner:
    """One runner thread, blocked on its `go` lock between tasks."""

    __slots__ = ("_go", "_pool", "_task", "thread")

    def __init__(self, pool: RunnerPool) -> None:
        self._pool = pool
        self._task: Callable[[], None] | None = None
        self._go = _allocate_lock()
        self._go.acquire()
        self.thread = threading.Thread(target=self._serve, name="pgflow-runner", daemon=True)
        self.thread.start()

    def hand(self, task: Callable[[], None]) -> None:
        self._task = task
        self._go.release()

    def _serve(self) -> None:
        go = self._go
        while True:
            go.acquire()
            task, self._task = self._task, None
            if task is None:
                return
            # Tasks report their own outcome; a runner must survive anything they raise.
            with contextlib.suppress(BaseException):
                task()
            if not self._pool._give_back(self):
                return


class RunnerPool:
    """Idle runner threads, at most `max_idle` kept waiting for work."""

    def __init__(self, max_idle: int = 64) -> None:
        self._idle: list[Runner] = []
        self._max_idle = max_idle

    def run(self, task: Callable[[], None]) -> Runner:
        """Start `task` on an idle runner (or a new one); returns at once, with the runner."""
        try:
            runner = self._idle.pop()
        except IndexError:
            runner = Runner(self)
        runner.hand(task)
        return runner

    def take_back(self, runner: Runner) -> bool:
        """Undo `run` if the runner has not picked its task up yet (it takes tens of
        microseconds to wake): True if so, and the task will not run there. The runner's
        thread goes back to sleep without ever holding the GIL."""
        if not runner._go.acquire(False):
            return False
        runner._task = None
        if not self._give_back(runner):
            runner._go.release()  # not kept: with no task its thread ends
        return True

    def _give_back(self, runner: Runner) -> bool:
        if len(self._idle) >= self._max_idle:
            return False
        self._idle.append(runner)
        return True

    def _forget(self) -> None:
        """After fork the runners' threads do not exist in the child."""
        self._idle = []


POOL = RunnerPool()
os.register_at_fork(after_in_child=POOL._forget)
