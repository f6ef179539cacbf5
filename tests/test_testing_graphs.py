"""pgflow.testing runs distributed graph runs: start_run, then drain runs every task."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

import pgflow
from pgflow import testing
from pgflow.graph.shape import TASK_WORKER_PREFIX
from pgflow.records import JobState, NewJob, TaskKey

CALLS: list[tuple[str, Any]] = []


@pytest.fixture(autouse=True)
def no_sleeping(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every test here must run without a real sleep: time.sleep fails the test (except
    where the test itself waits for a subprocess, which polls with time.sleep)."""
    CALLS.clear()
    if request.node.get_closest_marker("slow") is not None:
        yield
        return

    def forbidden(seconds: float) -> None:
        raise AssertionError(f"pgflow.testing slept for {seconds}s")

    monkeypatch.setattr(time, "sleep", forbidden)
    yield


def _fake_clock(t: testing.TestQueue) -> pgflow.FakeClock:
    assert isinstance(t.clock, pgflow.FakeClock)
    return t.clock


# -- flows ------------------------------------------------------------------------------------

chain = pgflow.Flow("tg_chain")


@chain.step
def double(state: int) -> int:
    CALLS.append(("double", state))
    return state * 2


@chain.step
def plus_one(state: int) -> int:
    CALLS.append(("plus_one", state))
    return state + 1


@chain.step
def square(state: int) -> int:
    CALLS.append(("square", state))
    return state * state


diamond = pgflow.Flow("tg_diamond")


@diamond.step
def fetch(input: dict[str, str]) -> dict[str, str]:
    return {"text": f"text of {input['url']}"}


@diamond.step(depends_on=["fetch"])
def summarize(fetch: dict[str, str]) -> str:
    CALLS.append(("summarize", fetch["text"]))
    return fetch["text"][:4]


@diamond.step(depends_on=["fetch"])
def words(fetch: dict[str, str]) -> int:
    CALLS.append(("words", fetch["text"]))
    return len(fetch["text"].split())


@diamond.step(depends_on=["summarize", "words"])
def publish(summarize: str, words: int, input: Any = None) -> dict[str, Any]:
    return {"summary": summarize, "words": words, "url": input["url"]}


mapped = pgflow.Flow("tg_map")


@mapped.step
def numbers(input: list[int]) -> list[int]:
    return input


@mapped.map(over="numbers")
def scaled(item: int) -> int:
    CALLS.append(("scaled", item))
    return item * 10


@mapped.step(depends_on=["scaled"])
def listed(scaled: list[int]) -> list[int]:
    return scaled


conditional = pgflow.Flow("tg_when")


@conditional.step
def account(input: dict[str, str]) -> dict[str, Any]:
    return {"id": 7, "plan": input["plan"]}


@conditional.step(depends_on=["account"], when=lambda account: account["plan"] == "premium")
def premium_setup(account: dict[str, Any]) -> str:
    CALLS.append(("premium_setup", account["id"]))
    return "premium ready"


@conditional.step(depends_on=["premium_setup"])
def premium_mail(premium_setup: str) -> str:
    CALLS.append(("premium_mail", premium_setup))
    return f"mail: {premium_setup}"


@conditional.step(depends_on=["account", "premium_setup"])
def welcome(account: dict[str, Any], premium_setup: str = "basic") -> str:
    return f"welcome {account['id']} ({premium_setup})"


flaky = pgflow.Flow("tg_flaky")


@flaky.step
def prepare(input: dict[str, int]) -> int:
    return input["n"]


@flaky.step(depends_on=["prepare"], max_attempts=3, backoff=pgflow.Backoff(base=2, factor=1))
def call_api(prepare: int) -> int:
    CALLS.append(("call_api", prepare))
    if len([c for c in CALLS if c[0] == "call_api"]) < 3:
        raise ConnectionError("try again")
    return prepare * 10


doomed = pgflow.Flow("tg_doomed")


@doomed.step
def begin(input: int) -> int:
    return input


@doomed.step(depends_on=["begin"], max_attempts=2, backoff=pgflow.Backoff(base=3, factor=1))
def breaks(begin: int) -> int:
    CALLS.append(("breaks", begin))
    raise ValueError(f"broken {begin}")


@doomed.step(depends_on=["begin"], start_delay=3600)
def later(begin: int) -> int:
    CALLS.append(("later", begin))
    return begin


@doomed.step(depends_on=["breaks", "later"])
def after(breaks: int, later: int) -> int:
    CALLS.append(("after", breaks))
    return breaks + later


fragile_map = pgflow.Flow("tg_fragile_map")


@fragile_map.step
def elements(input: int) -> list[int]:
    return list(range(input))


@fragile_map.map(over="elements", max_attempts=1)
def invert(item: int) -> float:
    CALLS.append(("invert", item))
    return 1 / item


once = pgflow.Flow("tg_once")


@once.step
def first(input: int) -> int:
    return input


@once.step(depends_on=["first"], max_attempts=1)
def fails_once(first: int) -> int:
    raise KeyError(f"missing {first}")


delayed = pgflow.Flow("tg_delayed")


@delayed.step
def kick(input: str) -> str:
    return input


@delayed.step(depends_on=["kick"], start_delay=60)
def wait_a_minute(kick: str) -> str:
    CALLS.append(("wait_a_minute", kick))
    return kick.upper()


gpu = pgflow.Flow("tg_queues", queue="default")


@gpu.step
def frames(input: int) -> list[int]:
    return list(range(input))


@gpu.map(over="frames", queue="gpu")
async def render(item: int) -> int:  # async steps run in the test's thread too
    CALLS.append(("render", item))
    return item * 2


# -- running ----------------------------------------------------------------------------------


def test_chain_of_three_runs_as_tasks_in_order() -> None:
    with testing.manual() as t:
        handle = t.app.start_run(chain, 5, workflow_id="chain-1")
        t.assert_enqueued(worker=TASK_WORKER_PREFIX + "tg_chain", count=1)
        assert CALLS == []
        assert t.drain() == testing.DrainResult(completed=3)
        assert CALLS == [("double", 5), ("plus_one", 10), ("square", 11)]
        assert handle.result() == 121
        run = t.app.get_run("chain-1")
        assert run is not None and run.state is pgflow.RunState.COMPLETED
        assert [run.steps[name].output for name in ("double", "plus_one", "square")] == [
            10,
            11,
            121,
        ]
        assert all(step.attempts == 1 for step in run.steps.values())
        assert t.drain().total == 0


def test_drain_without_recursion_runs_only_the_ready_steps() -> None:
    with testing.manual() as t:
        t.app.start_run(chain, 1, workflow_id="chain-2")
        assert t.drain(with_recursion=False).completed == 1
        assert CALLS == [("double", 1)]
        t.assert_step("chain-2", "double", state="completed", output=2)
        t.assert_step("chain-2", "plus_one", state="started", attempts=0)
        t.assert_step("chain-2", "square", state="pending")


def test_diamond_runs_both_branches_then_the_join() -> None:
    with testing.manual() as t:
        handle = t.app.start_run(diamond, {"url": "u1"}, workflow_id="diamond-1")
        assert t.drain(with_recursion=False).completed == 1  # fetch only
        waiting = t.all_enqueued(worker=TASK_WORKER_PREFIX + "tg_diamond")
        assert sorted(job.task.step for job in waiting if job.task) == ["summarize", "words"]
        assert t.drain().completed == 3
        assert sorted(CALLS) == [("summarize", "text of u1"), ("words", "text of u1")]
        assert handle.result() == {"publish": {"summary": "text", "words": 3, "url": "u1"}}
        t.assert_step("diamond-1", "publish", state="completed", attempts=1)


def test_map_of_five_fans_out_and_keeps_element_order() -> None:
    with testing.manual() as t:
        handle = t.app.start_run(mapped, [4, 1, 5, 2, 3], workflow_id="map-5")
        t.drain(with_recursion=False)
        t.assert_enqueued(worker=TASK_WORKER_PREFIX + "tg_map", count=5)
        assert t.drain() == testing.DrainResult(completed=6)
        assert sorted(item for _, item in CALLS) == [1, 2, 3, 4, 5]
        assert handle.result() == {"listed": [40, 10, 50, 20, 30]}
        step = t.assert_step("map-5", "scaled", state="completed", tasks_done=5)
        assert step.tasks_total == 5
        assert step.output == [40, 10, 50, 20, 30]


def test_map_of_zero_completes_without_a_task() -> None:
    with testing.manual() as t:
        handle = t.app.start_run(mapped, [], workflow_id="map-0")
        assert t.drain() == testing.DrainResult(completed=2)  # numbers and listed
        assert CALLS == []
        assert handle.result() == {"listed": []}
        step = t.assert_step("map-0", "scaled", state="completed", output=[], tasks_done=0)
        assert step.tasks_total == 0


def test_when_false_skips_the_step_and_its_dependents_without_default() -> None:
    with testing.manual() as t:
        free = t.app.start_run(conditional, {"plan": "free"}, workflow_id="when-free")
        t.drain()
        assert CALLS == []
        assert free.result() == {"welcome": "welcome 7 (basic)"}
        skipped = t.assert_step("when-free", "premium_setup", state="skipped")
        assert skipped.skip_reason
        t.assert_step("when-free", "premium_mail", state=pgflow.StepOutcome.SKIPPED)

        premium = t.app.start_run(conditional, {"plan": "premium"}, workflow_id="when-premium")
        t.drain()
        assert premium.result() == {
            "premium_mail": "mail: premium ready",
            "welcome": "welcome 7 (premium ready)",
        }
        t.assert_step("when-premium", "premium_setup", state="completed", output="premium ready")


# -- retries, failures and delays -------------------------------------------------------------


def test_a_failing_step_is_retried_with_its_backoff_on_the_fake_clock() -> None:
    with testing.manual() as t:
        clock = _fake_clock(t)
        start = clock.now()
        handle = t.app.start_run(flaky, {"n": 4}, workflow_id="flaky-1")
        with pytest.raises(ConnectionError, match="try again") as caught:
            t.drain()
        assert any("task=flaky-1/call_api[0]" in note for note in caught.value.__notes__)
        t.assert_step("flaky-1", "call_api", state="started", attempts=1)
        (retry,) = t.all_enqueued(state="retryable")
        assert retry.scheduled_at == start + timedelta(seconds=2)  # Backoff: 2**1

        clock.advance(1.5)
        assert t.drain().total == 0  # not due yet
        clock.advance(0.5)
        with pytest.raises(ConnectionError):
            t.drain()
        assert len(CALLS) == 2
        (retry,) = t.all_enqueued(state="retryable")
        assert retry.scheduled_at == clock.now() + timedelta(seconds=4)  # 2**2

        assert t.drain() == testing.DrainResult()
        assert t.drain(with_scheduled=True) == testing.DrainResult(completed=1)
        assert clock.now() - start == timedelta(seconds=6)
        assert clock.sleeps == []
        assert handle.result() == {"call_api": 40}
        t.assert_step("flaky-1", "call_api", state="completed", attempts=3, output=40)


def test_exhausted_attempts_fail_the_run_with_max_attempts_exceeded() -> None:
    with testing.manual() as t:
        clock = _fake_clock(t)
        handle = t.app.start_run(doomed, 1, workflow_id="doomed-1")
        assert t.drain(raise_on_failure=False) == testing.DrainResult(completed=1, retried=1)
        clock.advance(3)  # the retry is due; `later` waits an hour
        assert t.drain(raise_on_failure=False) == testing.DrainResult(discarded=1)
        assert CALLS == [("breaks", 1), ("breaks", 1)]
        with pytest.raises(pgflow.MaxAttemptsExceeded) as caught:
            handle.result()
        assert caught.value.attempts == 2
        assert isinstance(caught.value.reason, pgflow.StepFailed)
        assert caught.value.reason.step == "breaks"
        assert "broken 1" in str(caught.value.reason)

        run = t.app.get_run("doomed-1")
        assert run is not None and run.state is pgflow.RunState.FAILED
        assert run.steps["breaks"].state == "failed"
        assert run.steps["later"].state == "cancelled"
        assert run.steps["after"].state == "cancelled"
        assert t.all_enqueued() == []  # the delayed task was cancelled with the run
        (later_job,) = t.all_enqueued(state="cancelled")
        assert later_job.task is not None and later_job.task.step == "later"


def test_tasks_of_a_run_that_failed_meanwhile_end_cancelled_without_running() -> None:
    with testing.manual() as t:
        handle = t.app.start_run(fragile_map, 3, workflow_id="fragile-1")
        result = t.drain(raise_on_failure=False)
        assert result == testing.DrainResult(completed=1, discarded=1, cancelled=2)
        assert CALLS == [("invert", 0)]
        with pytest.raises(pgflow.StepFailed, match="division by zero"):
            handle.result()
        error = t.assert_step("fragile-1", "invert", state="failed", tasks_done=0).error
        assert error is not None and error["kind"] == "ZeroDivisionError"
        assert "running event loop" not in error["traceback"]
        assert len(t.all_enqueued(state="cancelled")) == 2


def test_a_single_attempt_step_fails_the_run_with_step_failed() -> None:
    with testing.manual() as t:
        handle = t.app.start_run(once, 3, workflow_id="once-1")
        with pytest.raises(KeyError, match="missing 3"):
            t.drain()
        with pytest.raises(pgflow.StepFailed) as caught:
            handle.result()
        assert not isinstance(caught.value, pgflow.MaxAttemptsExceeded)
        assert caught.value.step == "fails_once"
        t.assert_step("once-1", "fails_once", state="failed", attempts=1)
        assert t.drain(with_scheduled=True).total == 0


def test_start_delay_waits_on_the_fake_clock() -> None:
    with testing.manual() as t:
        clock = _fake_clock(t)
        handle = t.app.start_run(delayed, "go", workflow_id="delayed-1")
        assert t.drain().completed == 1  # kick; wait_a_minute is scheduled
        t.assert_enqueued(state="scheduled", count=1)
        clock.advance(59)
        assert t.drain().total == 0
        assert CALLS == []
        clock.advance(1)
        assert t.drain().completed == 1
        assert handle.result() == {"wait_a_minute": "GO"}

        start = clock.now()
        again = t.app.start_run(delayed, "again", workflow_id="delayed-2")
        assert t.drain(with_scheduled=True).completed == 2
        assert clock.now() - start == timedelta(seconds=60)
        assert again.result() == {"wait_a_minute": "AGAIN"}


def test_drain_one_queue_runs_only_that_queues_tasks() -> None:
    with testing.manual() as t:
        handle = t.app.start_run(gpu, 3, workflow_id="gpu-1")
        assert t.drain("default").completed == 1  # frames; the render tasks are on "gpu"
        t.assert_enqueued(queue="gpu", count=3)
        assert CALLS == []
        assert t.drain("gpu").completed == 3
        assert sorted(CALLS) == [("render", 0), ("render", 1), ("render", 2)]
        assert handle.result() == {"render": [0, 2, 4]}


def test_drain_called_from_async_code_runs_async_steps() -> None:
    async def test_body() -> Any:
        with testing.manual() as t:
            handle = t.app.start_run(gpu, 2, workflow_id="gpu-async")
            assert t.drain() == testing.DrainResult(completed=3)
            return handle.result()

    assert asyncio.run(test_body()) == {"render": [0, 2]}


# -- inline mode ------------------------------------------------------------------------------


def test_inline_start_run_runs_the_whole_run_at_once() -> None:
    with testing.inline() as t:
        handle = t.app.start_run(diamond, {"url": "u2"}, workflow_id="inline-1")
        assert sorted(CALLS) == [("summarize", "text of u2"), ("words", "text of u2")]
        assert handle.result() == {"publish": {"summary": "text", "words": 3, "url": "u2"}}
        assert t.all_enqueued() == []


def test_inline_start_run_raises_the_first_failure_and_drain_finishes_the_run() -> None:
    with testing.inline() as t:
        with pytest.raises(ConnectionError, match="try again"):
            t.app.start_run(flaky, {"n": 2}, workflow_id="inline-flaky")
        t.assert_step("inline-flaky", "call_api", state="started", attempts=1)
        t.assert_enqueued(state="retryable", count=1)
        result = t.drain(with_scheduled=True, raise_on_failure=False)
        assert result == testing.DrainResult(retried=1, completed=1)
        assert t.app.start_run(flaky, {"n": 2}, workflow_id="inline-flaky").result() == {
            "call_api": 20
        }


def test_inline_start_run_leaves_delayed_steps_to_drain() -> None:
    with testing.inline() as t:
        handle = t.app.start_run(delayed, "later", workflow_id="inline-delayed")
        t.assert_step("inline-delayed", "kick", state="completed")
        t.assert_enqueued(state="scheduled", count=1)
        assert t.drain(with_scheduled=True).completed == 1
        assert handle.result() == {"wait_a_minute": "LATER"}


def test_inline_on_a_users_app_runs_only_the_run_it_starts() -> None:
    with testing.manual() as owner:
        owner.app.start_run(chain, 1, workflow_id="stored-only")
        with testing.inline(owner.app):
            mine = owner.app.start_run(chain, 2, workflow_id="mine")
            assert mine.result() == 25
        other = owner.assert_enqueued(state="available", count=1)
        assert other.task is not None and other.task.workflow_id == "stored-only"
        assert other.attempt == 0  # handed back, attempt not counted
        owner.app.start_run(chain, 3, workflow_id="after-the-block")
        owner.assert_enqueued(state="available", count=2)  # stored only again
        assert owner.drain().completed == 6


snoozing = pgflow.Flow("tg_snoozing")


@snoozing.step
def snooze_now(input: int) -> int:
    CALLS.append(("snooze_now", input))
    raise pgflow.Snooze(0)


def test_inline_stops_a_step_that_snoozes_forever() -> None:
    with testing.inline() as t, pytest.raises(RuntimeError, match="snoozing forever"):
        t.app.start_run(snoozing, 1, workflow_id="snooze-forever")
    assert len(CALLS) == testing.DEFAULT_DRAIN_LIMIT


# -- bad task jobs ----------------------------------------------------------------------------


def _task_job(flow_name: str, fingerprint: str, step: str) -> NewJob:
    return NewJob(
        worker=TASK_WORKER_PREFIX + flow_name,
        args={"fingerprint": fingerprint, "args": [1], "kwargs": {}},
        task=TaskKey("no-such-run", step, 0),
    )


def test_a_task_job_naming_an_unknown_step_is_discarded() -> None:
    with testing.manual() as t:
        t.app.start_run(chain, 1, workflow_id="chain-known")  # registers the definition
        t.drain()
        (job,) = t.backend.insert_jobs([_task_job("tg_chain", chain.workflow.fingerprint, "nope")])
        with pytest.raises(LookupError, match="has no step 'nope'"):
            t.drain()
        stored = t.backend.get_job(job.id)
        assert stored is not None and stored.state is JobState.DISCARDED


def test_a_task_job_naming_an_unknown_step_of_a_live_run_fails_that_run() -> None:
    with testing.manual() as t:
        clock = _fake_clock(t)
        t.app.start_run(delayed, "x", workflow_id="live-run")
        t.drain()  # kick done, wait_a_minute waits on its start_delay: the run is live
        job = NewJob(
            worker=TASK_WORKER_PREFIX + "tg_delayed",
            args={"fingerprint": delayed.workflow.fingerprint, "args": ["x"], "kwargs": {}},
            task=TaskKey("live-run", "nope", 0),
        )
        t.backend.insert_jobs([job])
        assert t.drain(raise_on_failure=False) == testing.DrainResult(discarded=1)
        run = t.app.get_run("live-run")
        assert run is not None and run.state is pgflow.RunState.FAILED
        clock.advance(60)
        assert t.drain().total == 0


def test_a_task_job_of_an_unknown_flow_fails_at_once_instead_of_snoozing() -> None:
    with testing.manual() as t:
        t.backend.insert_jobs([_task_job("tg_never_defined", "f" * 64, "a")])
        with pytest.raises(pgflow.DefinitionError, match=r"'tg_never_defined'.*not known"):
            t.drain()
        (job,) = t.backend.list_jobs()
        assert job.state is JobState.DISCARDED
        assert job.errors[0]["kind"] == "pgflow.errors.DefinitionError"

        t.backend.insert_jobs([_task_job("tg_chain", "0" * 64, "double")])  # another shape
        assert t.drain(raise_on_failure=False) == testing.DrainResult(discarded=1)


# -- assertions and waiting -------------------------------------------------------------------


def test_result_of_a_run_still_running_raises_at_once() -> None:
    with testing.manual() as t:
        handle = t.app.start_run(delayed, "x", workflow_id="still-running")
        with pytest.raises(TimeoutError, match="only drain"):
            handle.result(timeout=5.0)
        t.drain(with_scheduled=True)
        assert handle.result(timeout=5.0) == {"wait_a_minute": "X"}


def test_assert_step_names_what_it_found() -> None:
    with testing.manual() as t:
        t.app.start_run(chain, 2, workflow_id="chain-msg")
        t.drain()
        with pytest.raises(AssertionError) as caught:
            t.assert_step("chain-msg", "plus_one", output=99)
        message = str(caught.value)
        assert "expected step 'plus_one' of run 'chain-msg' with output=99" in message
        assert re.search(r"plus_one: completed attempts=1 tasks=1/1 output=5", message)
        with pytest.raises(AssertionError, match="has no step 'nope'"):
            t.assert_step("chain-msg", "nope")
        with pytest.raises(AssertionError, match=r"no run 'other' is stored \(runs: 'chain-msg'"):
            t.assert_step("other", "double")
        with pytest.raises(ValueError):
            t.assert_step("chain-msg", "double", state="done")


def test_enqueued_listing_names_the_task() -> None:
    with testing.manual() as t:
        t.app.start_run(chain, 2, workflow_id="chain-list")
        with pytest.raises(AssertionError, match=r"task=chain-list/double\[0\]"):
            t.refute_enqueued()


# -- steered runs in the harness ------------------------------------------------------------

SEEN_AT: dict[str, Any] = {}
HARNESS_CLOCK: list[pgflow.FakeClock] = []

timed = pgflow.Flow("tg_timed")


@timed.step
def kickoff(input: int) -> int:
    return input


timed.sleep("nap", 3600, depends_on=["kickoff"])
timed.wait_for("answer", depends_on=["kickoff"], timeout=7200, on_timeout="skip")


@timed.step(depends_on=["nap"])
def after_nap(nap: int) -> int:
    SEEN_AT["after_nap"] = HARNESS_CLOCK[0].now()
    return nap


@timed.step(depends_on=["answer"])
def after_answer(answer: Any) -> Any:
    return answer


def test_drain_with_scheduled_moves_time_to_each_due_task_in_turn() -> None:
    with testing.manual() as t:
        clock = _fake_clock(t)
        HARNESS_CLOCK[:] = [clock]
        begun = clock.now()
        handle = t.app.start_run(timed, 1)
        t.drain(with_scheduled=True)
        # The nap's task ran at its own time, before the answer's timeout moved time on.
        assert SEEN_AT["after_nap"] == begun + timedelta(seconds=3600)
        assert clock.now() == begun + timedelta(seconds=7200)
        t.assert_step(handle.workflow_id, "answer", state="skipped", kind="wait")
        t.assert_step(handle.workflow_id, "after_answer", state="skipped")
        assert handle.result() == {"after_nap": 1}


def test_signal_and_deadline_in_the_harness() -> None:
    with testing.manual() as t:
        handle = t.app.start_run(timed, 2, deadline=1800)
        t.drain()
        assert t.signal(handle.workflow_id, "answer", "yes") is True
        t.assert_step(handle.workflow_id, "answer", state="completed", output="yes")
        t.drain()
        t.assert_step(handle.workflow_id, "after_answer", state="completed", output="yes")
        t.drain(with_scheduled=True)  # the deadline comes before the nap ends
        t.assert_run(handle.workflow_id, state="failed", error_kind="DeadlineExceeded")
        t.assert_step(handle.workflow_id, "nap", state="cancelled")
        with pytest.raises(AssertionError, match=r"expected run .* with state=completed"):
            t.assert_run(handle.workflow_id, state="completed")
        with pytest.raises(AssertionError, match="kind='map'"):
            t.assert_step(handle.workflow_id, "nap", kind="map")


# -- the documentation's example --------------------------------------------------------------

DOCS = Path(__file__).resolve().parent.parent / "docs" / "testing.md"


def _docs_examples() -> list[str]:
    section = DOCS.read_text(encoding="utf-8").split("## Testing graph flows", 1)[1]
    return re.findall(r"```python\n(.*?)\n```", section.split("\n## ", 1)[0], re.S)


@pytest.mark.slow  # a subprocess per example: waiting for it polls with time.sleep
@pytest.mark.parametrize("index", range(len(_docs_examples())))
def test_the_testing_docs_graph_examples_run(index: int, tmp_path: Path) -> None:
    """tests/test_readme.py skips examples that call start_run (issue 10 in progress); these
    run on the memory backend, so they run here, each a script in its own process."""
    script = tmp_path / "example.py"
    script.write_text(_docs_examples()[index], encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(DOCS.parent.parent)}
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr


def test_the_testing_docs_have_graph_examples() -> None:
    assert len(_docs_examples()) == 2
