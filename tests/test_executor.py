"""The executor without a backend: chaining, async steps, retries from the failed step,
backoff on the clock, Discard, the error classes and option validation."""

from __future__ import annotations

import asyncio
import copy
import pickle
import threading
from collections import Counter
from typing import Any

import pytest

import pgflow
from pgflow.executor import Executor


def make_flow(name: str = "chain") -> pgflow.Flow:
    flow = pgflow.Flow(name)

    @flow.step
    def add(state: int) -> int:
        return state + 1

    @flow.step
    async def double(state: int) -> int:
        await asyncio.sleep(0)
        return state * 2

    @flow.step
    def show(state: int) -> str:
        return f"result={state}"

    return flow


class Flaky:
    """Seed-form workflow whose middle step fails `failures` times, counting every call."""

    calls: Counter[str]
    failures: int

    @classmethod
    def __workflow_steps__(cls) -> list[tuple[str, Any]]:
        return [("first", cls.first), ("middle", cls.middle), ("last", cls.last)]

    @classmethod
    def first(cls, state: int) -> int:
        cls.calls["first"] += 1
        return state + 1

    @classmethod
    def middle(cls, state: int) -> int:
        cls.calls["middle"] += 1
        if cls.calls["middle"] <= cls.failures:
            raise ValueError(f"flaky #{cls.calls['middle']}")
        return state * 10

    @classmethod
    def last(cls, state: int) -> int:
        cls.calls["last"] += 1
        return state + 5


def flaky(failures: int) -> type[Flaky]:
    """A fresh Flaky class (its own counters and cached definition)."""
    return type("Flaky", (Flaky,), {"calls": Counter(), "failures": failures})


@pytest.mark.parametrize("timeout", [None, 30.0])
def test_steps_chain_sync_and_async(timeout: float | None) -> None:
    assert pgflow.execute(make_flow(), 4, timeout=timeout) == "result=10"


def test_executor_object_and_module_function_agree() -> None:
    flow = make_flow()
    assert Executor().execute(flow, 1) == pgflow.execute(flow, 1) == "result=4"


def test_execute_from_inside_a_running_event_loop() -> None:
    async def main() -> Any:
        return pgflow.execute(make_flow(), 1, timeout=None)

    assert asyncio.run(main()) == "result=4"


def test_retries_resume_at_the_failed_step_with_fake_clock() -> None:
    workflow = flaky(2)
    clock = pgflow.FakeClock()
    assert Executor(clock=clock).execute(workflow, 1) == 25
    assert clock.sleeps == [10.0, 100.0]  # the default backoff, never really slept
    # Completed steps are checkpoints: "first" ran once, "middle" three times.
    assert workflow.calls == Counter({"first": 1, "middle": 3, "last": 1})


def test_short_real_backoff() -> None:
    workflow = flaky(2)
    result = pgflow.execute(workflow, 1, backoff=pgflow.Backoff(base=0.01), timeout=None)
    assert result == 25
    assert workflow.calls["middle"] == 3


def test_custom_backoff_on_the_clock() -> None:
    clock = pgflow.FakeClock()
    policy = pgflow.Backoff(base=2.0, factor=3.0, max_delay=10.0)
    Executor(clock=clock).execute(flaky(3), 1, max_attempts=4, backoff=policy)
    assert clock.sleeps == [6.0, 10.0, 10.0]


def test_max_attempts_exceeded_carries_the_last_failure() -> None:
    clock = pgflow.FakeClock()
    workflow = flaky(99)
    with pytest.raises(pgflow.MaxAttemptsExceeded) as info:
        Executor(clock=clock).execute(workflow, 1, max_attempts=3, workflow_id="run-1")
    error = info.value
    assert error.attempts == 3
    assert error.workflow_id == "run-1"
    assert isinstance(error.reason, pgflow.StepFailed)
    assert error.reason.step == "middle"
    assert error.reason.attempt == 3
    assert error.reason.workflow_id == "run-1"
    assert isinstance(error.reason.reason, ValueError)
    assert str(error.reason.reason) == "flaky #3"
    assert error.__cause__ is error.reason
    assert clock.sleeps == [10.0, 100.0]
    assert workflow.calls["last"] == 0


def test_max_attempts_one_raises_the_step_error() -> None:
    clock = pgflow.FakeClock()
    with pytest.raises(pgflow.StepFailed) as info:
        Executor(clock=clock).execute(flaky(1), 1, max_attempts=1)
    error = info.value
    assert (error.step, error.attempt) == ("middle", 1)
    assert isinstance(error.reason, ValueError)
    assert error.__cause__ is error.reason
    uuid_text = error.workflow_id
    assert len(uuid_text) == 36 and uuid_text.count("-") == 4
    assert clock.sleeps == []


def test_discard_fails_at_once_without_retry() -> None:
    calls = Counter[str]()
    flow = pgflow.Flow("discarding")

    @flow.step
    def refuse(state: Any) -> Any:
        calls["refuse"] += 1
        raise pgflow.Discard("bad input")

    clock = pgflow.FakeClock()
    with pytest.raises(pgflow.StepFailed) as info:
        Executor(clock=clock).execute(flow, {}, max_attempts=5)
    assert isinstance(info.value.reason, pgflow.Discard)
    assert info.value.reason.reason == "bad input"
    assert calls["refuse"] == 1
    assert clock.sleeps == []


def test_discard_after_retries_still_raises_the_step_error() -> None:
    attempts = Counter[str]()
    flow = pgflow.Flow("late_discard")

    @flow.step
    def step(state: Any) -> Any:
        attempts["n"] += 1
        if attempts["n"] == 1:
            raise RuntimeError("transient")
        raise pgflow.Discard("give up")

    with pytest.raises(pgflow.StepFailed) as info:
        Executor(clock=pgflow.FakeClock()).execute(flow, None, max_attempts=5)
    assert info.value.attempt == 2
    assert isinstance(info.value.reason, pgflow.Discard)


def test_step_max_attempts_overrides_the_run() -> None:
    calls = Counter[str]()
    flow = pgflow.Flow("override")

    @flow.step(max_attempts=5)
    def patient(state: int) -> int:
        calls["patient"] += 1
        if calls["patient"] < 5:
            raise ValueError("not yet")
        return state

    @flow.step(max_attempts=1)
    def strict(state: int) -> int:
        calls["strict"] += 1
        raise ValueError("never")

    clock = pgflow.FakeClock()
    with pytest.raises(pgflow.MaxAttemptsExceeded) as info:
        Executor(clock=clock).execute(flow, 0, max_attempts=2)
    # "patient" got its 5 attempts despite the run's 2; "strict" failed for good at once.
    assert calls == Counter({"patient": 5, "strict": 1})
    assert info.value.attempts == 5
    assert info.value.reason.step == "strict"
    assert len(clock.sleeps) == 4


def test_steps_may_return_anything() -> None:
    marker = object()
    flow = pgflow.Flow("anything")
    flow.add_step("none", lambda state: None)
    flow.add_step("obj", lambda state: marker)
    assert pgflow.execute(flow, 1) is marker
    lock = threading.Lock()  # not JSON, not copyable: fine without a backend
    assert pgflow.execute(_single(lambda state: lock), 1, timeout=None) is lock


def _single(fn: Any) -> pgflow.Flow:
    flow = pgflow.Flow("single")
    flow.add_step("only", fn)
    return flow


def test_async_step_returning_awaitable_from_sync_function() -> None:
    async def later(state: int) -> int:
        return state + 100

    # A plain function that returns a coroutine (e.g. a lambda around an async def).
    assert pgflow.execute(_single(lambda state: later(state)), 1, timeout=None) == 101
    assert pgflow.execute(_single(lambda state: later(state)), 1) == 101


def test_cancelled_error_raised_by_a_step_is_a_failure() -> None:
    async def cancel_self(state: int) -> int:
        raise asyncio.CancelledError

    with pytest.raises(pgflow.StepFailed) as info:
        pgflow.execute(_single(cancel_self), 1, max_attempts=1)
    # The loop reports a self-cancelled task as cancelled: either CancelledError class is fine.
    assert type(info.value.reason).__name__ == "CancelledError"


@pytest.mark.parametrize("timeout", [None, 5.0])
@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit])
def test_base_exceptions_propagate_and_do_not_corrupt_the_executor(
    exc_type: type[BaseException], timeout: float | None
) -> None:
    def interrupt(state: int) -> int:
        raise exc_type()

    with pytest.raises(exc_type):
        pgflow.execute(_single(interrupt), 1, timeout=timeout)
    # The executor (and its runner threads) still work afterwards.
    assert pgflow.execute(make_flow(), 1, timeout=timeout) == "result=4"


@pytest.mark.parametrize("timeout", [None, 5.0])
def test_exotic_exceptions_are_step_failures(timeout: float | None) -> None:
    class Weird(Exception):
        def __str__(self) -> str:
            raise RuntimeError("cannot even print me")

    def weird(state: int) -> int:
        raise Weird

    with pytest.raises(pgflow.StepFailed) as info:
        pgflow.execute(_single(weird), 1, max_attempts=1, timeout=timeout)
    assert isinstance(info.value.reason, Weird)


def test_error_classes_copy_and_pickle() -> None:
    with pytest.raises(pgflow.MaxAttemptsExceeded) as info:
        Executor(clock=pgflow.FakeClock()).execute(flaky(9), 1, workflow_id="w-1")
    error = info.value
    for clone in (copy.copy(error), pickle.loads(pickle.dumps(error))):
        assert isinstance(clone, pgflow.MaxAttemptsExceeded)
        assert clone.attempts == 3 and clone.workflow_id == "w-1"
        assert clone.reason.step == "middle"
        assert str(clone) == str(error)


def test_input_is_passed_through_untouched_without_a_backend() -> None:
    sentinel = {"not": {"json", "set"}}
    assert pgflow.execute(_single(lambda state: state), sentinel) is sentinel


@pytest.mark.parametrize(
    ("options", "pattern"),
    [
        ({"max_attempts": 0}, "max_attempts must be an int >= 1"),
        ({"max_attempts": "3"}, "max_attempts must be an int >= 1"),
        ({"max_attempts": True}, "max_attempts must be an int >= 1"),
        ({"timeout": 0}, "timeout must be None or a number of seconds > 0"),
        ({"timeout": -1.0}, "timeout must be None"),
        ({"timeout": float("inf")}, "timeout must be None"),
        ({"timeout": "30"}, "timeout must be None"),
        ({"step_timeout": -2}, "step_timeout must be None"),
        ({"backoff": 10}, "backoff must be a pgflow.Backoff"),
        ({"workflow_id": ""}, "invalid workflow_id ''"),
        ({"workflow_id": "x" * 65}, "invalid workflow_id 'x+' \\(65 characters\\)"),
        ({"log_context": {"message": "x"}}, "log_context keys must be among"),
    ],
)
def test_option_validation(options: dict[str, Any], pattern: str) -> None:
    with pytest.raises(pgflow.DefinitionError, match=pattern):
        pgflow.execute(make_flow(), 1, **options)


def test_unknown_option_names_it() -> None:
    with pytest.raises(TypeError, match="retries"):
        pgflow.execute(make_flow(), 1, retries=3)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="retries"):
        Executor().execute(make_flow(), 1, retries=3)  # type: ignore[call-arg]


def test_backend_must_look_like_a_run_store() -> None:
    with pytest.raises(
        pgflow.DefinitionError,
        match="backend must be a RunStore, a URL string or an SQLAlchemy Engine",
    ):
        Executor(backend=object())


def test_concurrent_callers_share_the_engine() -> None:
    flow = make_flow()
    results: list[Any] = []
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            for i in range(50):
                results.append(pgflow.execute(flow, n * 1000 + i))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors
    assert sorted(results) == sorted(
        f"result={(n * 1000 + i + 1) * 2}" for n in range(4) for i in range(50)
    )


def test_nested_execute_from_an_async_step_fails_clearly_without_retry() -> None:
    inner = pgflow.Flow("inner")

    async def inner_step(state: int) -> int:
        return state

    inner.add_step("inner_step", inner_step)

    async def outer_step(state: int) -> int:
        result: int = pgflow.execute(inner, state)
        return result

    clock = pgflow.FakeClock()
    with pytest.raises(RuntimeError, match="called from inside an async step"):
        Executor(clock=clock).execute(_single(outer_step), 1)
    assert clock.sleeps == []


def test_nested_execute_from_a_sync_step() -> None:
    inner = make_flow("inner_sync")
    outer = _single(lambda state: pgflow.execute(inner, state))
    assert pgflow.execute(outer, 1) == "result=4"
    assert pgflow.execute(outer, 1, timeout=None) == "result=4"
