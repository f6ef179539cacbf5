"""Timeouts with real hanging steps: the caller gets StepTimedOut at the deadline, the
abandoned attempt never runs another step, and async steps are cancelled for real.

Hanging steps block on events the test releases afterwards, which proves the caller was
released while the step was still stuck (no timing is asserted).
"""

from __future__ import annotations

import _thread
import asyncio
import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

import pgflow
from pgflow.executor import Executor

HANG = 30.0  # a hung step waits this long at most, if a test fails to release it


class Hang:
    """Events shared between a test and its hanging step."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.returned = threading.Event()
        self.next_ran = threading.Event()


@pytest.fixture
def hang() -> Iterator[Hang]:
    events = Hang()
    yield events
    events.release.set()  # never leave a runner blocked for the rest of the session


def hanging_flow(hang: Hang, **step_options: Any) -> pgflow.Flow:
    flow = pgflow.Flow("hanging")

    @flow.step
    def start(state: int) -> int:
        return state + 1

    @flow.step(**step_options)
    def stuck(state: int) -> int:
        hang.entered.set()
        try:
            hang.release.wait(HANG)
            return state
        finally:
            hang.returned.set()

    @flow.step
    def after(state: int) -> int:
        hang.next_ran.set()
        return state

    return flow


def test_attempt_timeout_releases_the_caller_and_abandons_the_attempt(hang: Hang) -> None:
    with pytest.raises(pgflow.StepTimedOut) as info:
        pgflow.execute(hanging_flow(hang), 1, timeout=0.3, max_attempts=1, workflow_id="t-1")
    assert not hang.returned.is_set()  # the caller got its answer while the step hung
    error = info.value
    assert (error.step, error.timeout, error.attempt, error.workflow_id) == ("stuck", 0.3, 1, "t-1")
    hang.release.set()
    assert hang.returned.wait(HANG)
    # The abandoned attempt's runner woke up, but never starts a further step.
    assert not hang.next_ran.wait(0.3)


def test_step_timeout_option(hang: Hang) -> None:
    with pytest.raises(pgflow.StepTimedOut) as info:
        pgflow.execute(hanging_flow(hang), 1, timeout=None, step_timeout=0.2, max_attempts=1)
    assert (info.value.step, info.value.timeout) == ("stuck", 0.2)
    assert not hang.returned.is_set()


def test_per_step_timeout_from_the_decorator(hang: Hang) -> None:
    with pytest.raises(pgflow.StepTimedOut) as info:
        pgflow.execute(hanging_flow(hang, timeout=0.2), 1, timeout=None, max_attempts=1)
    assert (info.value.step, info.value.timeout) == ("stuck", 0.2)


def test_per_step_timeout_beats_a_longer_run_timeout(hang: Hang) -> None:
    with pytest.raises(pgflow.StepTimedOut) as info:
        pgflow.execute(hanging_flow(hang, timeout=0.2), 1, timeout=HANG, max_attempts=1)
    assert info.value.timeout == 0.2


def test_a_timeout_is_an_attempt_and_is_retried(hang: Hang) -> None:
    calls = Counter[str]()
    flow = pgflow.Flow("hangs_once")

    @flow.step
    def first(state: int) -> int:
        calls["first"] += 1
        return state + 1

    @flow.step
    def sometimes_stuck(state: int) -> str:
        calls["stuck"] += 1
        if calls["stuck"] == 1:
            hang.release.wait(HANG)
            return "from the abandoned attempt"
        return f"fresh {state}"

    clock = pgflow.FakeClock()
    result = Executor(clock=clock).execute(flow, 1, step_timeout=0.2, max_attempts=2)
    assert result == "fresh 2"
    assert clock.sleeps == [10.0]
    assert calls == Counter({"first": 1, "stuck": 2})  # resumed at the step that timed out


def test_every_attempt_timing_out_raises_max_attempts_exceeded(hang: Hang) -> None:
    clock = pgflow.FakeClock()
    with pytest.raises(pgflow.MaxAttemptsExceeded) as info:
        Executor(clock=clock).execute(hanging_flow(hang), 1, timeout=0.1, max_attempts=2)
    assert info.value.attempts == 2
    assert isinstance(info.value.reason, pgflow.StepTimedOut)
    assert info.value.reason.attempt == 2
    assert clock.sleeps == [10.0]


def test_async_step_is_cancelled_for_real() -> None:
    cancelled = threading.Event()
    finished = threading.Event()
    next_ran = threading.Event()
    flow = pgflow.Flow("async_hang")

    @flow.step
    async def forever(state: int) -> int:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        finally:
            finished.set()
        return state  # pragma: no cover - never reached

    @flow.step
    def after(state: int) -> int:
        next_ran.set()
        return state

    with pytest.raises(pgflow.StepTimedOut) as info:
        pgflow.execute(flow, 1, timeout=0.2, max_attempts=1)
    assert info.value.step == "forever"
    assert cancelled.wait(HANG)  # CancelledError was delivered inside the step
    assert finished.wait(HANG)  # and its finally block ran
    assert not next_ran.wait(0.2)


def test_async_step_per_step_timeout() -> None:
    cancelled = threading.Event()
    flow = pgflow.Flow("async_step_timeout")

    @flow.step(timeout=0.2)
    async def slow(state: int) -> int:
        try:
            await asyncio.sleep(HANG)
        finally:
            cancelled.set()
        return state

    with pytest.raises(pgflow.StepTimedOut):
        pgflow.execute(flow, 1, timeout=None, max_attempts=1)
    assert cancelled.wait(HANG)


def test_fast_steps_are_unaffected_by_timeouts() -> None:
    flow = pgflow.Flow("fast")
    flow.add_step("a", lambda state: state + 1, timeout=5.0)
    flow.add_step("b", lambda state: state * 2)
    assert pgflow.execute(flow, 1, timeout=5.0, step_timeout=5.0) == 4
    assert pgflow.execute(flow, 1, timeout=None) == 4


def test_the_engine_keeps_working_after_abandoned_attempts(hang: Hang) -> None:
    for _ in range(3):
        with pytest.raises(pgflow.StepTimedOut):
            pgflow.execute(hanging_flow(hang), 1, timeout=0.05, max_attempts=1)
    hang.release.set()
    flow = pgflow.Flow("after_hangs")
    flow.add_step("a", lambda state: state + 1)
    assert [pgflow.execute(flow, n) for n in range(20)] == list(range(1, 21))


def test_caller_interrupted_while_waiting_abandons_the_attempt(hang: Hang) -> None:
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("KeyboardInterrupt is delivered to the main thread only")
    flow = pgflow.Flow("interrupted")

    @flow.step
    def interrupt_caller(state: int) -> int:
        _thread.interrupt_main()  # like Ctrl-C while the caller waits for this attempt
        hang.release.wait(HANG)
        hang.returned.set()
        return state

    @flow.step
    def after(state: int) -> int:
        hang.next_ran.set()
        return state

    with pytest.raises(KeyboardInterrupt):
        pgflow.execute(flow, 1, timeout=HANG)
    hang.release.set()
    assert hang.returned.wait(HANG)
    assert not hang.next_ran.wait(0.3)
