"""`pgflow.execute` on graph flows: concurrency, maps, `when`, retries, timeouts, async."""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

import pytest

import pgflow
from pgflow import Backoff, Executor
from pgflow.abandoned import ABANDONED
from pgflow.clock import FakeClock
from pgflow.errors import MaxAttemptsExceeded, StepFailed, StepTimedOut
from pgflow.records import StepOutcome
from tests.waiting import wait_or_fail

BACKENDS = [None, "memory://"]


def run(flow: Any, value: Any, backend: str | None, **options: Any) -> Any:
    return pgflow.execute(flow, value, backend=backend, **options)


@pytest.mark.parametrize("backend", BACKENDS)
def test_diamond_runs_its_middle_steps_concurrently(backend: str | None) -> None:
    both = threading.Barrier(2, timeout=5)
    flow = pgflow.Flow("diamond")

    @flow.step
    def a(input: int) -> int:
        return input + 1

    @flow.step(depends_on=["a"])
    def b(a: int) -> int:
        both.wait()  # breaks (and b fails) unless c runs at the same time
        return a * 2

    @flow.step(depends_on=["a"])
    def c(a: int) -> int:
        both.wait()
        return a * 3

    @flow.step(depends_on=["b", "c"])
    def d(b: int, c: int, input: int = 0) -> int:
        return b + c + input

    assert run(flow, 1, backend, max_attempts=1) == {"d": 4 + 6 + 1}


@pytest.mark.parametrize("backend", BACKENDS)
def test_map_over_a_step_keeps_element_order(backend: str | None) -> None:
    flow = pgflow.Flow("squares")

    @flow.step
    def numbers(input: int) -> list[int]:
        return list(range(input))

    @flow.map(over="numbers")
    def square(n: int) -> int:
        return n * n

    assert run(flow, 20, backend) == {"square": [n * n for n in range(20)]}
    assert run(flow, 0, backend) == {"square": []}


def test_map_over_the_run_input() -> None:
    flow = pgflow.Flow("map_input")

    @flow.map
    def double(n: int) -> int:
        return 2 * n

    assert pgflow.execute(flow, [1, 2, 3]) == {"double": [2, 4, 6]}


def test_map_over_a_non_list_fails_with_a_type_error() -> None:
    flow = pgflow.Flow("map_bad")

    @flow.map
    def double(n: int) -> int:
        return 2 * n

    with pytest.raises(StepFailed) as caught:
        pgflow.execute(flow, {"not": "a list"})
    assert isinstance(caught.value.reason, TypeError)
    assert caught.value.step == "double"


def _conditional_flow(name: str) -> pgflow.Flow:
    flow = pgflow.Flow(name)

    @flow.step
    def account(input: str) -> dict[str, str]:
        return {"plan": input}

    @flow.step(depends_on=["account"], when=lambda account: account["plan"] == "premium")
    def bonus(account: dict[str, str]) -> int:
        return 100

    @flow.step(depends_on=["bonus"])
    def with_default(bonus: int = 0) -> int:
        return bonus + 1

    @flow.step(depends_on=["bonus"])
    def without_default(bonus: int) -> int:
        return bonus + 2

    return flow


@pytest.mark.parametrize("backend", BACKENDS)
def test_when_false_skips_and_dependents_use_defaults_or_skip(backend: str | None) -> None:
    flow = _conditional_flow("conditional")
    assert run(flow, "premium", backend) == {"with_default": 101, "without_default": 102}
    # bonus skipped: with_default gets 0; without_default is skipped and left out.
    assert run(flow, "free", backend) == {"with_default": 1}


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_failing_step_is_retried_with_its_backoff_on_the_clock(backend: str | None) -> None:
    clock = FakeClock()
    calls: list[int] = []
    flow = pgflow.Flow("flaky")

    @flow.step
    def root(input: int) -> int:
        return input

    @flow.step(depends_on=["root"], max_attempts=3, backoff=Backoff(base=2.0, factor=5.0))
    def flaky(root: int) -> int:
        calls.append(root)
        if len(calls) < 3:
            raise RuntimeError("not yet")
        return root + 1

    executor = Executor(backend, clock=clock)
    start = clock.now()
    assert executor.execute(flow, 41) == {"flaky": 42}
    assert calls == [41, 41, 41]
    assert (clock.now() - start).total_seconds() == 10.0 + 20.0


def test_retries_exhausted_raise_max_attempts_exceeded() -> None:
    flow = pgflow.Flow("always_fails")

    @flow.map
    def boom(n: int) -> int:
        raise ValueError(f"bad {n}")

    executor = Executor(clock=FakeClock())
    with pytest.raises(MaxAttemptsExceeded) as caught:
        executor.execute(flow, [1], max_attempts=2)
    assert caught.value.attempts == 2
    assert isinstance(caught.value.reason, StepFailed)
    with pytest.raises(StepFailed):
        executor.execute(flow, [1], max_attempts=1)


def test_a_step_timeout_raises_step_timed_out() -> None:
    release = threading.Event()
    flow = pgflow.Flow("slow")

    @flow.step
    def root(input: int) -> int:
        return input

    @flow.step(depends_on=["root"], timeout=0.2)
    def slow(root: int) -> int:
        release.wait(10)
        return root

    before = ABANDONED.steps
    try:
        with pytest.raises(StepTimedOut) as caught:
            pgflow.execute(flow, 1, max_attempts=1)
        assert caught.value.step == "slow"
        assert ABANDONED.steps == before + 1  # its thread is left behind, and counted
    finally:
        release.set()
    wait_or_fail(lambda: ABANDONED.steps == before, "the abandoned step's thread to return")


def test_max_parallel_one_still_completes() -> None:
    flow = pgflow.Flow("serial")

    @flow.step
    def numbers(input: int) -> list[int]:
        return list(range(input))

    @flow.map(over="numbers")
    def inc(n: int) -> int:
        return n + 1

    @flow.step(depends_on=["numbers"])
    def total(numbers: list[int]) -> int:
        return sum(numbers)

    assert pgflow.execute(flow, 5, max_parallel=1) == {"inc": [1, 2, 3, 4, 5], "total": 10}


@pytest.mark.parametrize("backend", BACKENDS)
def test_async_steps_run_on_the_loop(backend: str | None) -> None:
    flow = pgflow.Flow("async_graph")

    @flow.step
    async def root(input: int) -> int:
        await asyncio.sleep(0)
        return input

    @flow.map(over="root_list")
    async def twice(n: int) -> int:
        return 2 * n

    @flow.step(depends_on=["root"])
    def root_list(root: int) -> list[int]:
        return [root, root + 1]

    assert run(flow, 3, backend) == {"twice": [6, 8]}


def test_chains_are_unchanged() -> None:
    flow = pgflow.Flow("chain")

    @flow.step
    def one(value: int) -> int:
        return value + 1

    @flow.step
    def two(value: int) -> int:
        return value * 10

    assert pgflow.execute(flow, 1) == 20


def test_max_parallel_must_be_positive() -> None:
    flow = _conditional_flow("bad_parallel")
    with pytest.raises(pgflow.DefinitionError, match="max_parallel"):
        pgflow.execute(flow, "free", max_parallel=0)


def test_a_recorded_run_holds_each_attempt_and_element(backend: Any) -> None:
    calls: list[int] = []
    flow = pgflow.Flow("recorded")

    @flow.step
    def numbers(input: int) -> list[int]:
        return list(range(input))

    @flow.map(over="numbers", backoff=Backoff(base=1.0))
    def inc(n: int) -> int:
        calls.append(n)
        if calls.count(n) == 1 and n == 1:
            raise RuntimeError("first try of element 1")
        return n + 1

    executor = Executor(backend, clock=FakeClock())
    assert executor.execute(flow, 3, workflow_id="rec-1") == {"inc": [1, 2, 3]}
    store = backend
    run_record = store.get_run("rec-1")
    assert run_record is not None
    assert run_record.state is pgflow.RunState.COMPLETED
    assert run_record.output == {"inc": [1, 2, 3]}
    steps = store.get_steps("rec-1")
    seen = sorted(
        (s.step, s.index, -1 if s.element is None else s.element, s.outcome.value) for s in steps
    )
    assert seen == [
        ("inc", 1, 0, "completed"),
        ("inc", 1, 1, "completed"),
        ("inc", 1, 1, "failed"),
        ("inc", 1, 2, "completed"),
        ("numbers", 0, -1, "completed"),
    ]


def test_a_failed_recorded_run_is_stored_as_failed() -> None:
    flow = pgflow.Flow("recorded_failure")

    @flow.map
    def boom(n: int) -> int:
        raise pgflow.Discard("no")

    executor = Executor("memory://", clock=FakeClock())
    try:
        with pytest.raises(StepFailed):
            executor.execute(flow, [1], workflow_id="rec-2")
        store = executor.backend
        assert store is not None
        stored = store.get_run("rec-2")
        assert stored is not None
        assert stored.state is pgflow.RunState.FAILED
        assert stored.error is not None and stored.error["step"] == "boom"
    finally:
        executor.close()


def test_a_run_timeout_bounds_the_whole_run() -> None:
    release = threading.Event()
    flow = pgflow.Flow("run_deadline")

    @flow.map
    def wait(n: int) -> int:
        release.wait(10)
        return n

    try:
        with pytest.raises(StepTimedOut) as caught:
            pgflow.execute(flow, [1, 2], timeout=0.2, max_attempts=3)
        assert caught.value.timeout == 0.2
    finally:
        release.set()


def test_a_failure_for_good_starts_no_further_work() -> None:
    calls: list[int] = []
    flow = pgflow.Flow("stop_on_failure")

    @flow.map
    def first_fails(n: int) -> int:
        calls.append(n)
        raise pgflow.Discard("stop here")

    with pytest.raises(StepFailed) as caught:
        pgflow.execute(flow, [0, 1, 2, 3], max_parallel=1)
    assert isinstance(caught.value.reason, pgflow.Discard)
    assert calls == [0]


def test_map_element_logs_carry_the_element(caplog: pytest.LogCaptureFixture) -> None:
    flow = pgflow.Flow("logged_map")

    @flow.map
    def ident(n: int) -> int:
        return n

    with caplog.at_level(logging.DEBUG, logger="pgflow"):
        assert pgflow.execute(flow, [5, 6], workflow_id="logged-1") == {"ident": [5, 6]}
    started = [r for r in caplog.records if getattr(r, "element", None) is not None]
    assert sorted(r.element for r in started) == [0, 1]  # type: ignore[attr-defined]
    assert {r.workflow_id for r in started} == {"logged-1"}  # type: ignore[attr-defined]
    assert {r.step for r in started} == {"ident"}  # type: ignore[attr-defined]


def test_skipped_steps_are_recorded_with_their_reason(backend: Any) -> None:
    flow = _conditional_flow("recorded_skip")
    executor = Executor(backend)
    assert executor.execute(flow, "free", workflow_id="skip-1") == {"with_default": 1}
    skipped = {
        s.step: s.error["message"]
        for s in backend.get_steps("skip-1")
        if s.outcome is StepOutcome.SKIPPED and s.error is not None
    }
    assert skipped["bonus"] == "when returned false"
    assert "has no default" in skipped["without_default"]


def test_a_workflow_id_names_one_stored_run(backend: Any) -> None:
    calls: list[int] = []
    fail = [True]
    flow = pgflow.Flow("stored_once")

    @flow.map
    def inc(n: int) -> int:
        calls.append(n)
        if fail[0]:
            raise pgflow.Discard("not this time")
        return n + 1

    executor = Executor(backend)
    with pytest.raises(StepFailed):
        executor.execute(flow, [1], workflow_id="once-1")
    fail[0] = False
    # A failed run runs again (as its next attempt), then its stored output is the answer.
    assert executor.execute(flow, [1], workflow_id="once-1") == {"inc": [2]}
    assert executor.execute(flow, [1], workflow_id="once-1") == {"inc": [2]}
    assert calls == [1, 1]
    stored = backend.get_run("once-1")
    assert stored.attempt == 2 and stored.state is pgflow.RunState.COMPLETED
    with pytest.raises(pgflow.WorkflowError, match="another input"):
        executor.execute(flow, [5], workflow_id="once-1")


def test_start_delay_is_waited_on_the_clock() -> None:
    clock = FakeClock()
    flow = pgflow.Flow("delayed")

    @flow.step
    def root(input: int) -> int:
        return input

    @flow.step(depends_on=["root"], start_delay=7.0)
    def later(root: int) -> int:
        return root + 1

    start = clock.now()
    assert Executor(clock=clock).execute(flow, 1) == {"later": 2}
    assert (clock.now() - start).total_seconds() == 7.0


def test_an_error_in_when_fails_the_step() -> None:
    flow = pgflow.Flow("bad_when_call")

    @flow.step
    def root(input: int) -> int:
        return input

    @flow.step(depends_on=["root"], when=lambda root: 1 / root > 0)
    def guarded(root: int) -> int:
        return root

    with pytest.raises(StepFailed) as caught:
        pgflow.execute(flow, 0)
    assert caught.value.step == "guarded"
    assert isinstance(caught.value.reason, ZeroDivisionError)


def test_an_output_that_is_not_json_fails_the_recorded_run() -> None:
    flow = pgflow.Flow("not_json")

    @flow.map
    def opaque(n: int) -> object:
        return object()

    executor = Executor("memory://")
    try:
        with pytest.raises(pgflow.SerializationError):
            executor.execute(flow, [1], workflow_id="json-1")
        store = executor.backend
        assert store is not None
        stored = store.get_run("json-1")
        assert stored is not None and stored.state is pgflow.RunState.FAILED
    finally:
        executor.close()


def test_an_async_step_past_its_timeout_is_cancelled() -> None:
    cancelled = threading.Event()
    flow = pgflow.Flow("async_slow")

    @flow.map(timeout=0.2)
    async def slow(n: int) -> int:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return n

    with pytest.raises(StepTimedOut):
        pgflow.execute(flow, [1], max_attempts=1)
    assert cancelled.wait(5)


def _threads_flow(name: str, seen: dict[str, int], **root_options: Any) -> Any:
    """a -> (b, c) -> d, each step noting the thread it ran on."""
    flow = pgflow.Flow(name)

    @flow.step(**root_options)
    def a(input: int) -> int:
        seen["a"] = threading.get_ident()
        return input

    @flow.step(depends_on=["a"])
    def b(a: int) -> int:
        seen["b"] = threading.get_ident()
        return a

    @flow.step(depends_on=["a"])
    def c(a: int) -> int:
        seen["c"] = threading.get_ident()
        return a

    @flow.step(depends_on=["b", "c"])
    def d(b: int, c: int) -> int:
        seen["d"] = threading.get_ident()
        return b + c

    return flow


def test_steps_nothing_could_wait_on_run_in_the_callers_thread() -> None:
    seen: dict[str, int] = {}
    assert pgflow.execute(_threads_flow("alone_inline", seen), 2) == {"d": 4}
    caller = threading.get_ident()
    # a and d run alone; c, started last, while b (which only feeds d too) is on a runner.
    assert (seen["a"], seen["c"], seen["d"]) == (caller, caller, caller)


def test_a_step_whose_sibling_feeds_other_steps_does_not_hold_them_up() -> None:
    after_fast_ran = threading.Event()
    flow = pgflow.Flow("not_held_up")

    @flow.step
    def a(input: int) -> int:
        return input

    @flow.step(depends_on=["a"])
    def fast(a: int) -> int:
        return a

    @flow.step(depends_on=["a"])
    def slow(a: int) -> int:
        # Run in the scheduler's thread, this would wait for a step that cannot start.
        if not after_fast_ran.wait(5):
            raise TimeoutError("after_fast did not start while slow ran")
        return a

    @flow.step(depends_on=["fast"])
    def after_fast(fast: int) -> int:
        after_fast_ran.set()
        return fast

    assert pgflow.execute(flow, 1, max_attempts=1) == {"slow": 1, "after_fast": 1}


@pytest.mark.parametrize("option", ["timeout", "step_timeout"])
def test_with_a_timeout_to_watch_no_step_runs_in_the_callers_thread(option: str) -> None:
    seen: dict[str, int] = {}
    flow = _threads_flow(f"watched_{option}", seen)
    assert pgflow.execute(flow, 2, **{option: 30.0}) == {"d": 4}
    assert threading.get_ident() not in seen.values()


def test_a_step_with_its_own_timeout_runs_on_a_runner() -> None:
    seen: dict[str, int] = {}
    assert pgflow.execute(_threads_flow("own_timeout", seen, timeout=30.0), 2) == {"d": 4}
    assert seen["a"] != threading.get_ident()
    assert seen["d"] == threading.get_ident()


def test_an_inline_sync_step_may_return_a_coroutine() -> None:
    flow = pgflow.Flow("inline_coroutine")

    async def later(value: int) -> int:
        await asyncio.sleep(0)
        return value + 1

    @flow.step
    def root(input: int) -> Any:
        return later(input)

    @flow.step(depends_on=["root"])
    def after(root: int) -> int:
        return root * 10

    assert pgflow.execute(flow, 1) == {"after": 20}


def test_an_inline_step_raising_base_exception_propagates_it() -> None:
    flow = pgflow.Flow("inline_interrupt")

    @flow.step
    def root(input: int) -> int:
        raise KeyboardInterrupt

    @flow.step(depends_on=["root"])
    def after(root: int) -> int:
        return root

    with pytest.raises(KeyboardInterrupt):
        pgflow.execute(flow, 1)


def test_an_inline_step_is_retried_and_fails_with_its_run_id(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls: list[int] = []
    flow = pgflow.Flow("inline_retry")

    @flow.step
    def root(input: int) -> int:
        calls.append(threading.get_ident())
        raise ValueError("no")

    @flow.step(depends_on=["root"])
    def after(root: int) -> int:
        return root

    with (
        caplog.at_level(logging.DEBUG, logger="pgflow"),
        pytest.raises(MaxAttemptsExceeded) as caught,
    ):
        pgflow.execute(flow, 1, max_attempts=2, backoff=Backoff(factor=0.0))
    assert calls == [threading.get_ident()] * 2  # no backoff to wait: both in the caller
    made = caught.value.workflow_id
    assert len(made) == 36  # a uuid, made on first use
    ids = {r.workflow_id for r in caplog.records if hasattr(r, "workflow_id")}  # type: ignore[attr-defined]
    assert ids == {made}
