"""Steered runs through the app, on memory with pgflow.testing and its FakeClock: waits and
their signals and timeouts, sleeps, sub-flows, cancel, resume, restart and deadlines; and
the worker's tasks of handlerless steps (sleep, wait timeout, sub-flow relay)."""

from __future__ import annotations

import gc
import json
import sys
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import attrs
import pytest
from click.testing import CliRunner

import pgflow
from pgflow import testing
from pgflow.errors import DefinitionError, RunStateError, SignalError, StepFailed
from pgflow.graph.shape import task_worker_name
from pgflow.records import Job, JobState, RunState, StepStatus
from pgflow.runtime.execution import Outcome, OutcomeKind, record_outcomes
from pgflow.runtime.flow_tasks import RUNNING_CHILD_SNOOZE, execute_task
from pgflow.runtime.leader import Leader
from pgflow_backends.memory import InMemoryBackend
from tests.waiting import wait_or_fail

DAY = 86400.0
CALLS: list[str] = []


@pytest.fixture(autouse=True)
def _calls() -> Iterator[None]:
    CALLS.clear()
    FAILING.clear()
    yield


@pytest.fixture
def t() -> Iterator[testing.TestQueue]:
    with testing.manual() as harness:
        yield harness


def _clock(t: testing.TestQueue) -> pgflow.FakeClock:
    assert isinstance(t.clock, pgflow.FakeClock)
    return t.clock


def _name(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


# -- flows ------------------------------------------------------------------------------------

#: Steps named here raise (a "bug"), until the test removes them: the fix being deployed.
FAILING: set[str] = set()


def _maybe_fail(step: str) -> None:
    CALLS.append(step)
    if step in FAILING:
        raise RuntimeError(f"bug in {step}")


approval = pgflow.Flow("st_approval")


@approval.step
def draft(input: dict[str, str]) -> dict[str, str]:
    CALLS.append("draft")
    return {"doc": input["doc"]}


approval.wait_for("approve", depends_on=["draft"], timeout=DAY, on_timeout="skip")


@approval.step(depends_on=["approve"])
def publish(approve: dict[str, Any]) -> str:
    CALLS.append("publish")
    return f"published by {approve['by']}"


@approval.step(depends_on=["draft", "approve"], when=lambda approve=None: approve is None)
def escalate(draft: dict[str, str], approve: Any = None) -> str:
    CALLS.append("escalate")
    return f"nobody approved {draft['doc']}"


strict = pgflow.Flow("st_strict_approval")


@strict.step
def submit(input: int) -> int:
    return input


strict.wait_for("manager", depends_on=["submit"], timeout=3600)


@strict.step(depends_on=["manager"])
def pay(manager: Any) -> str:
    return f"paid {manager}"


reminder = pgflow.Flow("st_reminder")


@reminder.step
def signup(input: dict[str, str]) -> str:
    CALLS.append("signup")
    return input["email"]


reminder.sleep("cool_off", 3 * DAY, depends_on=["signup"])


@reminder.step(depends_on=["cool_off"])
def remind(cool_off: str) -> str:
    CALLS.append("remind")
    return f"reminded {cool_off}"


scheduled = pgflow.Flow("st_scheduled")
scheduled.sleep("until_due", until=lambda input: datetime.fromisoformat(input["due"]))


@scheduled.step(depends_on=["until_due"])
def act(until_due: dict[str, str]) -> str:
    return f"acted at {until_due['due']}"


shipping = pgflow.Flow("st_shipping")


@shipping.step
def label(input: dict[str, Any]) -> str:
    _maybe_fail("label")
    return f"label for {input['order']}"


@shipping.step
def dispatch(label: str) -> dict[str, str]:
    _maybe_fail("dispatch")
    return {"label": label, "carrier": "ups"}


order = pgflow.Flow("st_order")


@order.step
def charge(input: dict[str, Any]) -> dict[str, Any]:
    _maybe_fail("charge")
    return {"order": input["order"], "paid": True}


order.subflow("ship", shipping, depends_on=["charge"])


@order.step(depends_on=["ship"])
def notify(ship: dict[str, str]) -> str:
    _maybe_fail("notify")
    return f"shipped via {ship['carrier']}"


held = pgflow.Flow("st_held_child")
held.wait_for("go")

holding = pgflow.Flow("st_holding_parent")


@holding.step
def prepare(input: int) -> int:
    return input


holding.subflow("child", held, depends_on=["prepare"])


pipeline = pgflow.Flow("st_pipeline")


@pipeline.step
def extract(input: int) -> list[int]:
    _maybe_fail("extract")
    return list(range(input))


@pipeline.map(over="extract")
def transform(item: int) -> int:
    _maybe_fail(f"transform[{item}]")
    return item * 10


@pipeline.step(depends_on=["transform"])
def load(transform: list[int]) -> int:
    _maybe_fail("load")
    return sum(transform)


def _buggy_total(values: list[int]) -> int:
    return sum(values) // (len(values) - len(values))  # ZeroDivisionError: the bug


#: What `report` calls: a test swaps it for a fixed function, as a deploy would.
total = _buggy_total

audit = pgflow.Flow("st_audit")


@audit.step
def gather(input: int) -> list[int]:
    CALLS.append("gather")
    return list(range(input))


@audit.step(depends_on=["gather"])
def report(gather: list[int]) -> int:
    CALLS.append("report")
    return total(gather)


# -- waits and signals ------------------------------------------------------------------------


def test_a_signal_completes_the_wait_and_the_run_goes_on(t: testing.TestQueue) -> None:
    handle = t.app.start_run(approval, {"doc": "plan"})
    run_id = handle.workflow_id
    t.drain()
    t.assert_step(run_id, "approve", state="started", kind="wait")
    t.assert_step(run_id, "publish", state="pending")
    begun = _clock(t).now()

    assert t.signal(run_id, "approve", {"by": "ada"}) is True
    t.assert_step(run_id, "approve", state="completed", output={"by": "ada"})
    t.drain(with_scheduled=True)
    assert handle.result() == {"publish": "published by ada"}
    # The timeout task was cancelled with the signal: a day did not pass.
    assert _clock(t).now() - begun < timedelta(hours=1)
    assert CALLS.count("escalate") == 0
    assert not t.all_enqueued()
    timeouts = t.backend.list_jobs(worker=task_worker_name(approval.name))
    assert [job.state for job in timeouts if job.task and job.task.step == "approve"] == [
        JobState.CANCELLED
    ]


def test_without_a_signal_the_timeout_skips_the_wait_and_the_other_branch_runs(
    t: testing.TestQueue,
) -> None:
    handle = t.app.start_run(approval, {"doc": "plan"})
    run_id = handle.workflow_id
    t.drain()
    begun = _clock(t).now()
    t.drain(with_scheduled=True)
    assert _clock(t).now() - begun >= timedelta(seconds=DAY)
    t.assert_step(run_id, "approve", state="skipped")
    state = t.assert_step(run_id, "approve")
    assert state.skip_reason == "no signal within 86400s"
    t.assert_step(run_id, "publish", state="skipped")
    assert handle.result() == {"escalate": "nobody approved plan"}
    with pytest.raises(SignalError, match="is completed; only a running run"):
        t.signal(run_id, "approve", {"by": "late"})


def test_a_timeout_that_fails_fails_the_run_without_retrying(t: testing.TestQueue) -> None:
    handle = t.app.start_run(strict, 5, max_attempts=3)
    t.drain(with_scheduled=True)
    t.assert_run(handle.workflow_id, state="failed")
    step = t.assert_step(handle.workflow_id, "manager", state="failed")
    assert step.error is not None and step.error["kind"] == "WaitTimedOut"
    with pytest.raises(StepFailed) as caught:
        handle.result()
    assert caught.value.step == "manager"
    assert "received no signal within 3600s" in str(caught.value.reason)
    jobs = [
        job
        for job in t.backend.list_jobs(worker=task_worker_name(strict.name))
        if job.task and job.task.step == "manager"
    ]
    assert [(job.state, job.attempt, job.max_attempts) for job in jobs] == [
        (JobState.DISCARDED, 1, 1)
    ]


def test_a_signal_sent_before_the_wait_is_kept_for_it(t: testing.TestQueue) -> None:
    handle = t.app.start_run(strict, 7)
    run_id = handle.workflow_id
    t.assert_step(run_id, "manager", state="pending")
    assert t.signal(run_id, "manager", "ok") is False
    with pytest.raises(SignalError, match="already signalled"):
        t.signal(run_id, "manager", "again")
    t.drain()
    t.assert_step(run_id, "manager", state="completed", output="ok")
    assert handle.result() == {"pay": "paid ok"}


def test_signal_errors_name_the_run_and_the_step(t: testing.TestQueue) -> None:
    handle = t.app.start_run(strict, 1)
    run_id = handle.workflow_id
    t.drain()
    with pytest.raises(SignalError, match=r"'nope'.*is not stored"):
        t.app.signal("nope", "manager", 1)
    with pytest.raises(SignalError, match=r"has no step 'boss'.*wait_for steps: manager"):
        t.app.signal(run_id, "boss", 1)
    with pytest.raises(SignalError, match="is a step step, not a wait_for step"):
        t.app.signal(run_id, "submit", 1)
    with pytest.raises(pgflow.SerializationError):
        t.app.signal(run_id, "manager", object())
    t.assert_step(run_id, "manager", state="started")  # nothing was delivered
    assert t.app.signal(run_id, "manager", "yes") is True
    with pytest.raises(SignalError, match="already signalled"):
        t.app.signal(run_id, "manager", "twice")
    t.drain()
    with pytest.raises(SignalError, match="is completed"):
        t.app.signal(run_id, "manager", "after")


def test_signal_to_a_run_whose_definition_is_unknown_says_what_changed(
    t: testing.TestQueue,
) -> None:
    name = _name("st_gone")

    def started() -> str:
        old = pgflow.Flow(name)

        @old.step
        def first(input: int) -> int:
            return input

        old.wait_for("ok", depends_on=["first"])
        plan = old.workflow.plan
        run_id = "gone-1"
        t.backend.start_flow_run(plan, workflow_id=run_id, input=1, max_attempts=1)  # type: ignore[attr-defined]
        return run_id

    run_id = started()
    gc.collect()  # the old definition is gone from this process
    with pytest.raises(SignalError, match=f"flow {name!r}.*not known in this process"):
        t.app.signal(run_id, "ok", True)

    new = pgflow.Flow(name, version=2)

    @new.step
    def first(input: int) -> int:
        return input

    new.wait_for("ok", depends_on=["first"])
    new.wait_for("also", depends_on=["first"])
    with pytest.raises(SignalError, match=r"step 'also' \(wait, depends on \['first'\]\) added"):
        t.app.signal(run_id, "ok", True)
    t.backend.cancel_run(run_id)  # type: ignore[attr-defined]
    with pytest.raises(DefinitionError, match=r"resume_run: .*not known in this process.*'also'"):
        t.app.resume_run(run_id)
    with pytest.raises(DefinitionError, match=r"restart_run: .*not known in this process"):
        t.app.restart_run(run_id)


# -- sleeps ------------------------------------------------------------------------------------


def test_a_reminder_goes_out_after_the_sleep_and_not_before(t: testing.TestQueue) -> None:
    handle = t.app.start_run(reminder, {"email": "ada@example.com"})
    run_id = handle.workflow_id
    begun = _clock(t).now()
    t.drain()
    t.assert_step(run_id, "cool_off", state="started", kind="sleep")
    _clock(t).advance(2 * DAY)
    assert t.drain().total == 0  # still sleeping: no thread, no task due
    t.assert_step(run_id, "remind", state="pending")
    t.drain(with_scheduled=True)
    assert _clock(t).now() - begun >= timedelta(seconds=3 * DAY)
    t.assert_step(run_id, "cool_off", state="completed", output="ada@example.com")
    assert handle.result() == {"remind": "reminded ada@example.com"}
    assert CALLS == ["signup", "remind"]


def test_a_sleep_until_a_time_given_by_the_input(t: testing.TestQueue) -> None:
    due = _clock(t).now() + timedelta(hours=5)
    handle = t.app.start_run(scheduled, {"due": due.isoformat()})
    t.drain()
    t.assert_step(handle.workflow_id, "until_due", state="started")
    [job] = t.all_enqueued()
    assert job.scheduled_at == due
    t.drain(with_scheduled=True)
    assert _clock(t).now() == due
    assert handle.result() == {"act": f"acted at {due.isoformat()}"}


# -- sub-flows --------------------------------------------------------------------------------


def test_a_sub_flow_step_completes_with_its_child_runs_result(t: testing.TestQueue) -> None:
    handle = t.app.start_run(order, {"order": 42})
    run_id = handle.workflow_id
    t.drain()
    assert handle.result() == {"notify": "shipped via ups"}
    ship = t.assert_step(run_id, "ship", state="completed", kind="subflow")
    assert ship.child_id is not None
    assert ship.output == {"label": "label for 42", "carrier": "ups"}
    child = t.assert_run(ship.child_id, state="completed", output=ship.output)
    assert (child.parent_id, child.parent_step, child.workflow) == (run_id, "ship", shipping.name)
    assert child.input == {"order": 42, "paid": True}
    assert CALLS == ["charge", "label", "dispatch", "notify"]


def test_a_failed_child_fails_its_sub_flow_step_naming_the_child(t: testing.TestQueue) -> None:
    FAILING.add("dispatch")
    handle = t.app.start_run(order, {"order": 7}, max_attempts=2)
    run_id = handle.workflow_id
    t.drain(with_scheduled=True, raise_on_failure=False)
    assert CALLS.count("dispatch") == 2  # the child's step retried, the sub-flow did not
    ship = t.assert_step(run_id, "ship", state="failed")
    assert ship.child_id is not None
    t.assert_run(ship.child_id, state="failed")
    t.assert_step(run_id, "notify", state="cancelled")
    run = t.assert_run(run_id, state="failed", error_kind="SubflowFailed")
    assert run.error is not None
    message = run.error["message"]
    assert f"sub-flow step 'ship' failed: child run {ship.child_id} of flow 'st_shipping'" in (
        message
    )
    assert "bug in dispatch" in message
    with pytest.raises(StepFailed) as caught:
        handle.result()
    assert caught.value.step == "ship"


def test_cancelling_a_parent_cancels_its_running_child(t: testing.TestQueue) -> None:
    handle = t.app.start_run(holding, 1)
    run_id = handle.workflow_id
    t.drain()
    child_id = t.assert_step(run_id, "child", state="started").child_id
    assert child_id is not None
    t.assert_run(child_id, state="running")
    t.app.cancel_run(run_id)
    t.assert_run(run_id, state="cancelled")
    t.assert_run(child_id, state="cancelled")
    t.assert_step(child_id, "go", state="cancelled")
    with pytest.raises(pgflow.RunCancelled):
        handle.result()
    with pytest.raises(SignalError, match="is cancelled"):
        t.app.signal(child_id, "go", True)
    assert t.drain(with_scheduled=True).total == 0  # no relay, nothing left behind
    assert not t.all_enqueued()


def test_signalling_a_child_run_completes_its_parent(t: testing.TestQueue) -> None:
    handle = t.app.start_run(holding, 1)
    t.drain()
    child_id = t.assert_step(handle.workflow_id, "child").child_id
    assert child_id is not None
    assert t.signal(child_id, "go", {"went": True}) is True
    t.drain()
    assert handle.result() == {"child": {"go": {"went": True}}}


# -- resume -----------------------------------------------------------------------------------


def test_resume_after_a_fix_reruns_only_what_did_not_complete(t: testing.TestQueue) -> None:
    FAILING.add("transform[2]")
    handle = t.app.start_run(pipeline, 5, max_attempts=1)
    run_id = handle.workflow_id
    t.drain(raise_on_failure=False)
    t.assert_run(run_id, state="failed")
    done_before = {call for call in CALLS if call not in FAILING}
    assert "extract" in done_before and "load" not in CALLS
    FAILING.clear()  # the fix is deployed
    CALLS.clear()
    resumed = t.app.resume_run(run_id)
    assert resumed.workflow_id == run_id
    t.assert_run(run_id, state="running")
    t.drain()
    assert resumed.result() == {"load": 100}
    # Nothing that completed before ran again; every element ran exactly once in all.
    assert not done_before & set(CALLS)
    elements = sorted(c for c in [*done_before, *CALLS] if c.startswith("transform"))
    assert elements == [f"transform[{i}]" for i in range(5)]
    assert CALLS.count("load") == 1
    t.assert_step(run_id, "transform", state="completed", tasks_done=5)
    with pytest.raises(RunStateError, match="is completed"):
        t.app.resume_run(run_id)


def test_resume_after_swapping_the_buggy_function(
    t: testing.TestQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    handle = t.app.start_run(audit, 4, max_attempts=2)
    t.drain(with_scheduled=True, raise_on_failure=False)
    step = t.assert_step(handle.workflow_id, "report", state="failed", attempts=2)
    assert step.error is not None and "ZeroDivisionError" in step.error["kind"]
    assert CALLS == ["gather", "report", "report"]
    monkeypatch.setattr(sys.modules[__name__], "total", sum)  # the fix, deployed
    t.app.resume_run(handle.workflow_id)
    t.drain()
    assert handle.result() == {"report": 6}
    assert CALLS == ["gather", "report", "report", "report"]  # gather did not run again


def test_resume_of_a_failed_sub_flow_resumes_its_child(t: testing.TestQueue) -> None:
    FAILING.add("dispatch")
    handle = t.app.start_run(order, {"order": 1}, max_attempts=1)
    run_id = handle.workflow_id
    t.drain(raise_on_failure=False)
    child_id = t.assert_step(run_id, "ship", state="failed").child_id
    assert child_id is not None
    FAILING.clear()
    CALLS.clear()
    t.app.resume_run(run_id)
    t.drain()
    assert handle.result() == {"notify": "shipped via ups"}
    # The child run was resumed too: its label step was kept, only dispatch ran again.
    assert CALLS == ["dispatch", "notify"]
    t.assert_step(run_id, "ship", child_id=child_id)
    t.assert_run(child_id, state="completed")


def test_resume_of_a_cancelled_run(t: testing.TestQueue) -> None:
    cancelled = t.app.start_run(holding, 3)
    t.drain()
    t.app.cancel_run(cancelled.workflow_id)
    t.app.resume_run(cancelled.workflow_id)
    t.drain()
    child_id = t.assert_step(cancelled.workflow_id, "child", state="started").child_id
    assert child_id is not None
    assert t.signal(child_id, "go", 1) is True
    t.drain()
    assert cancelled.result() == {"child": {"go": 1}}


def test_resume_refuses_unknown_and_running_runs(t: testing.TestQueue) -> None:
    with pytest.raises(RunStateError, match="'nope' is not stored"):
        t.app.resume_run("nope")
    handle = t.app.start_run(strict, 1)
    with pytest.raises(RunStateError, match="is running; only a failed or cancelled"):
        t.app.resume_run(handle.workflow_id)


# -- restart ----------------------------------------------------------------------------------


def test_restart_from_a_step_keeps_the_steps_before_it(t: testing.TestQueue) -> None:
    handle = t.app.start_run(pipeline, 3)
    t.drain()
    assert handle.result() == {"load": 30}
    CALLS.clear()
    again = t.app.restart_run(handle.workflow_id, from_step="load")
    assert again.workflow_id != handle.workflow_id
    t.drain()
    assert again.result() == {"load": 30}
    assert CALLS == ["load"]
    run = t.assert_run(again.workflow_id, state="completed")
    assert run.restart_of == handle.workflow_id
    assert run.input == 3
    t.assert_step(again.workflow_id, "transform", state="completed", output=[0, 10, 20])

    CALLS.clear()
    everything = t.app.restart_run(handle.workflow_id)
    t.drain()
    assert everything.result() == {"load": 30}
    assert sorted(CALLS) == sorted(["extract", "load", *(f"transform[{i}]" for i in range(3))])


def test_restart_with_a_new_input_reruns_what_reads_it(t: testing.TestQueue) -> None:
    handle = t.app.start_run(pipeline, 2)
    t.drain()
    again = t.app.restart_run(handle.workflow_id, input=4)
    t.drain()
    assert again.result() == {"load": 60}
    assert t.assert_run(again.workflow_id).input == 4
    assert t.assert_run(handle.workflow_id, output={"load": 10}).restart_of is None


def test_restart_of_a_failed_run_and_its_errors(t: testing.TestQueue) -> None:
    FAILING.add("load")
    handle = t.app.start_run(pipeline, 2, max_attempts=1)
    t.drain(raise_on_failure=False)
    t.assert_run(handle.workflow_id, state="failed")
    FAILING.clear()
    CALLS.clear()
    with pytest.raises(DefinitionError, match=r"has no step 'nope'.*extract, transform, load"):
        t.app.restart_run(handle.workflow_id, from_step="nope")
    again = t.app.restart_run(handle.workflow_id, from_step="load")
    t.drain()
    assert again.result() == {"load": 10}
    assert CALLS == ["load"]
    with pytest.raises(RunStateError, match="not stored"):
        t.app.restart_run("nope")
    running = t.app.start_run(strict, 1)
    with pytest.raises(RunStateError, match="is running"):
        t.app.restart_run(running.workflow_id)


def test_runs_of_a_restart_and_of_a_child_are_linked(t: testing.TestQueue) -> None:
    handle = t.app.start_run(order, {"order": 5})
    t.drain()
    again = t.app.restart_run(handle.workflow_id, from_step="ship")
    t.drain()
    run = t.assert_run(again.workflow_id, state="completed")
    assert run.restart_of == handle.workflow_id
    new_child = t.assert_step(again.workflow_id, "ship").child_id
    old_child = t.assert_step(handle.workflow_id, "ship").child_id
    assert new_child is not None and new_child != old_child
    assert t.assert_run(new_child).parent_id == again.workflow_id


# -- deadlines --------------------------------------------------------------------------------


def test_a_run_past_its_deadline_fails_with_deadline_exceeded(t: testing.TestQueue) -> None:
    handle = t.app.start_run(holding, 1, deadline=3600)
    run_id = handle.workflow_id
    t.drain()
    run = t.assert_run(run_id, state="running")
    assert run.deadline_at == _clock(t).now() + timedelta(seconds=3600)
    child_id = t.assert_step(run_id, "child").child_id
    assert child_id is not None
    t.drain(with_scheduled=True)  # nothing else is due: time runs to the deadline
    t.assert_run(run_id, state="failed", error_kind="DeadlineExceeded")
    t.assert_run(child_id, state="cancelled")
    with pytest.raises(pgflow.DeadlineExceeded, match="passed its deadline"):
        handle.result()


def test_a_run_that_ends_in_time_is_not_expired(t: testing.TestQueue) -> None:
    handle = t.app.start_run(reminder, {"email": "x@example.com"}, deadline=4 * DAY)
    begun = _clock(t).now()
    t.drain(with_scheduled=True)
    assert handle.result() == {"remind": "reminded x@example.com"}
    assert _clock(t).now() - begun < timedelta(seconds=4 * DAY)


@pytest.mark.parametrize("deadline", [0, -5, True, "60", float("inf"), float("nan")])
def test_start_run_refuses_a_bad_deadline(t: testing.TestQueue, deadline: Any) -> None:
    with pytest.raises(DefinitionError, match="deadline must be a positive number of seconds"):
        t.app.start_run(strict, 1, deadline=deadline)
    assert t.backend.list_runs() == []


def test_deadline_interval_is_validated() -> None:
    with pytest.raises(DefinitionError, match="deadline_interval"):
        pgflow.Pgflow("memory://", deadline_interval=0)


# -- inline mode ------------------------------------------------------------------------------


def test_inline_mode_runs_signals_and_sub_flows_at_once() -> None:
    with testing.inline() as t:
        handle = t.app.start_run(holding, 2)
        child_id = t.assert_step(handle.workflow_id, "child", state="started").child_id
        assert child_id is not None
        assert t.signal(child_id, "go", "now") is True
        assert handle.result() == {"child": {"go": "now"}}
        shipped = t.app.start_run(order, {"order": 3})
        assert shipped.result() == {"notify": "shipped via ups"}


# -- the worker's tasks of handlerless steps ---------------------------------------------------


def _claim_task(t: testing.TestQueue, step: str) -> Job:
    t.backend.stage_jobs()
    claimed = t.backend.claim_jobs("default", "w", 100)
    ours = [job for job in claimed if job.task is not None and job.task.step == step]
    for job in claimed:
        if job not in ours:
            t.backend.snooze_job(job.ref, 0)
    assert len(ours) == 1, claimed
    return ours[0]


def _run(t: testing.TestQueue, job: Job, **args: Any) -> Outcome:
    if args:
        job = attrs.evolve(job, args={**job.args, **args})
    return execute_task(job, instance_id="w", backend=t.backend, clock=t.clock)


def test_the_sleep_task_completes_with_its_value_calling_nothing(t: testing.TestQueue) -> None:
    handle = t.app.start_run(reminder, {"email": "s@example.com"})
    t.drain()
    _clock(t).advance(3 * DAY)
    job = _claim_task(t, "cool_off")
    outcome = _run(t, job)
    assert outcome.kind is OutcomeKind.COMPLETED
    assert outcome.completion is not None and outcome.completion.output == '"s@example.com"'
    assert CALLS == ["signup"]
    record_outcomes(t.backend, [outcome])
    t.drain()
    assert handle.result() == {"remind": "reminded s@example.com"}


def test_the_wait_timeout_task_skips_or_fails_at_once(t: testing.TestQueue) -> None:
    t.app.start_run(approval, {"doc": "d"})
    t.drain()
    _clock(t).advance(DAY)
    outcome = _run(t, _claim_task(t, "approve"))
    assert outcome.kind is OutcomeKind.COMPLETED and outcome.completion is not None
    assert outcome.completion.skipped == "no signal within 86400s"
    assert outcome.completion.output is None

    failing = t.app.start_run(strict, 1)
    t.drain()
    _clock(t).advance(3600)
    job = _claim_task(t, "manager")
    outcome = _run(t, job)
    assert outcome.kind is OutcomeKind.DISCARDED and outcome.retry_in is None
    assert outcome.error is not None
    assert outcome.error["kind"] == "WaitTimedOut"
    assert outcome.error["message"] == "step 'manager' received no signal within 3600s"
    assert outcome.error["step"] == "manager"
    assert outcome.error["attempt"] == 1 and outcome.error["instance_id"] == "w"
    record_outcomes(t.backend, [outcome])
    t.assert_run(failing.workflow_id, state="failed", error_kind="WaitTimedOut")


def test_the_relay_task_reads_the_child_run(t: testing.TestQueue) -> None:
    handle = t.app.start_run(holding, 1)
    run_id = handle.workflow_id
    t.drain()
    child_id = t.assert_step(run_id, "child").child_id
    assert child_id is not None
    assert t.signal(child_id, "go", "done") is True
    job = _claim_task(t, "child")  # the relay task the child's end inserted
    assert job.args["child"] == child_id and job.max_attempts == 3

    unknown = _run(t, job, child="no-such-run")
    assert unknown.kind is OutcomeKind.DISCARDED and unknown.retry_in is None
    assert unknown.error is not None and unknown.error["kind"] == "SubflowFailed"
    assert "child run no-such-run is not stored" in unknown.error["message"]

    other = t.app.start_run(strict, 1)
    running = _run(t, job, child=other.workflow_id)
    assert running.kind is OutcomeKind.SNOOZED and running.snooze == RUNNING_CHILD_SNOOZE

    t.app.cancel_run(other.workflow_id)
    cancelled = _run(t, job, child=other.workflow_id)
    assert cancelled.kind is OutcomeKind.DISCARDED and cancelled.error is not None
    assert cancelled.error["message"].startswith(
        f"sub-flow step 'child' failed: child run {other.workflow_id} of flow "
        f"'st_strict_approval' cancelled: run {other.workflow_id!r}"
    )
    assert _run(t, job, child=5).kind is OutcomeKind.DISCARDED

    done = _run(t, job)
    assert done.kind is OutcomeKind.COMPLETED and done.completion is not None
    assert json.loads(done.completion.output or "") == {"go": "done"}
    record_outcomes(t.backend, [done])
    assert handle.result() == {"child": {"go": "done"}}


# -- a real instance: producers, leader and relays on memory -----------------------------------


def test_a_running_instance_relays_sub_flows_sleeps_and_expires_deadlines() -> None:
    app = pgflow.Pgflow(
        "memory://",
        queues={"default": 4},
        poll_interval=0.05,
        stage_interval=0.05,
        deadline_interval=0.05,
        instance_id="steered",
    )
    app.start()
    try:
        wait_or_fail(lambda: app.is_leader, "leadership")
        shipped = app.start_run(order, {"order": 9})
        assert shipped.result(timeout=20) == {"notify": "shipped via ups"}
        expiring = app.start_run(strict, 1, deadline=0.2)
        with pytest.raises(pgflow.DeadlineExceeded):
            expiring.result(timeout=20)
        napping = pgflow.Flow(_name("st_nap"))
        napping.sleep("nap", 0.1)
        assert app.start_run(napping, {"a": 1}).result(timeout=20) == {"nap": {"a": 1}}
        waiting = app.start_run(strict, 2)

        def started() -> bool:
            run = app.get_run(waiting.workflow_id)
            return run is not None and run.steps["manager"].state is StepStatus.STARTED

        wait_or_fail(started, "the wait to start")
        assert app.signal(waiting.workflow_id, "manager", "boss") is True
        assert waiting.result(timeout=20) == {"pay": "paid boss"}
    finally:
        app.close()


# -- the leader's deadline sweep --------------------------------------------------------------


def test_the_leader_expires_runs_past_their_deadline_every_interval() -> None:
    clock = pgflow.FakeClock()
    backend = InMemoryBackend(clock=clock)
    ticks = iter(float(n) for n in range(1000))
    woken: list[object] = []
    leader = Leader(
        backend=backend,
        instance_id="lead",
        clock=clock,
        interval=1.0,
        stale_timeout=300.0,
        rescue_interval=100.0,
        prune_after=None,
        prune_interval=60.0,
        cron=None,
        on_staged=woken.append,
        deadline_interval=10.0,
        monotonic=lambda: next(ticks),
    )
    plan = strict.workflow.plan
    backend.start_flow_run(plan, workflow_id="soon", input=1, max_attempts=1, deadline=5)
    backend.start_flow_run(plan, workflow_id="later", input=1, max_attempts=1, deadline=50)
    leader.tick()
    assert _state(backend, "soon") is RunState.RUNNING
    clock.advance(6)
    leader.tick()  # the sweep ran at the first tick: not due again yet
    assert _state(backend, "soon") is RunState.RUNNING
    for _ in range(5):
        leader.tick()
    assert _state(backend, "soon") is RunState.FAILED
    assert _state(backend, "later") is RunState.RUNNING
    run = backend.get_run("soon")
    assert run is not None and run.error is not None
    assert run.error["kind"] == "DeadlineExceeded"
    backend.close()


def _state(backend: InMemoryBackend, workflow_id: str) -> RunState | None:
    run = backend.get_run(workflow_id)
    return None if run is None else run.state


def test_worker_cli_passes_the_deadline_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    import pgflow.app
    from pgflow import cli

    created: list[dict[str, Any]] = []

    class Recording:
        def __init__(self, url: str, **options: Any) -> None:
            created.append(options)

        def run(self) -> None:
            pass

    monkeypatch.setattr(pgflow.app, "Pgflow", Recording)
    runner = CliRunner()
    base = ["worker", "--url", "memory://"]
    assert runner.invoke(cli.cli, base).exit_code == 0
    assert created[-1]["deadline_interval"] == 1.0
    assert runner.invoke(cli.cli, [*base, "--deadline-interval", "0.25"]).exit_code == 0
    assert created[-1]["deadline_interval"] == 0.25
    bad = runner.invoke(cli.cli, [*base, "--deadline-interval", "0"])
    assert bad.exit_code == 2 and "--deadline-interval" in bad.output


def test_a_signal_in_the_callers_transaction_commits_with_it(sqlite_url: str) -> None:
    """On SQLite (memory has no transactions to join): start and signal in one transaction,
    nothing read outside it; a rollback leaves neither."""
    from sqlalchemy import create_engine

    from pgflow.backend import FlowStore

    engine = create_engine(sqlite_url)
    app = pgflow.Pgflow(engine, instance_id="in-tx")
    try:
        if not isinstance(app.backend, FlowStore):
            pytest.skip("this branch's SQLite backend does not store steered runs yet")
        app.migrate()
        with engine.begin() as conn:
            handle = app.start_run(strict, 1, connection=conn)
            assert app.signal(handle.workflow_id, "manager", "boss", connection=conn) is False
        run = app.get_run(handle.workflow_id)
        assert run is not None and run.steps["manager"].state is StepStatus.PENDING
        with pytest.raises(SignalError, match="already"):
            app.signal(handle.workflow_id, "manager", "again")
        with pytest.raises(RuntimeError, match="rolled back"), engine.begin() as conn:
            other = app.start_run(strict, 2, connection=conn)
            app.signal(other.workflow_id, "manager", "x", connection=conn)
            raise RuntimeError("rolled back")
        assert app.get_run(other.workflow_id) is None
    finally:
        app.close()
        engine.dispose()
