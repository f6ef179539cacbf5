"""FlowStore contract for steered runs: waits and signals, durable sleeps, sub-flows with
their relays, resume, restart and deadlines, on every bundled backend.

No runtime runs here: tests claim task jobs and report them as the workers of
`pgflow.runtime.flow_tasks` would (a sleep completes with its value, a wait's timeout skips
or is discarded at once, a relay completes with the child's output or is discarded), so
every rule of `pgflow.backend.FlowStore` is checked on its own.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import pgflow
from pgflow.graph.ready import RELAY_ATTEMPTS, plan_fingerprint, restart_steps, wait_timed_out
from pgflow.graph.shape import FlowPlan
from pgflow.records import (
    WAITING_STATES,
    Job,
    JobState,
    RunState,
    StepStatus,
    TaskCompletion,
    TaskKey,
)
from pgflow.serialization import dumps
from tests.contract.support import error

# -- flows (their functions never run here: tests report each task's result) --------------

approval = pgflow.Flow("steer_approval")


@approval.step
def prep(input: Any) -> Any: ...


approval.wait_for("approve", depends_on=["prep"])


@approval.step(depends_on=["approve"])
def after(approve: Any) -> Any: ...


timed_skip = pgflow.Flow("steer_timed_skip")
timed_skip.wait_for("answer", timeout=0.05, on_timeout="skip")


@timed_skip.step(depends_on=["answer"])
def use(answer: Any = "no answer") -> Any: ...


timed_fail = pgflow.Flow("steer_timed_fail")
timed_fail.wait_for("answer", timeout=0.05)


@timed_fail.step(depends_on=["answer"])
def consume(answer: Any) -> Any: ...


long_wait = pgflow.Flow("steer_long_wait")
long_wait.wait_for("answer", timeout=30)


@long_wait.step(depends_on=["answer"])
def read(answer: Any) -> Any: ...


napping = pgflow.Flow("steer_napping")


@napping.step
def before_nap(input: Any) -> Any: ...


napping.sleep("nap", 30, depends_on=["before_nap"])


@napping.step(depends_on=["nap"])
def wake(nap: Any) -> Any: ...


dated = pgflow.Flow("steer_dated")


@dated.step
def schedule(input: Any) -> Any: ...


def _nap_until(schedule: Any) -> datetime:
    return datetime.fromisoformat(schedule["at"])


dated.sleep("nap", until=_nap_until, depends_on=["schedule"])


@dated.step(depends_on=["nap"])
def rise(nap: Any) -> Any: ...


child = pgflow.Flow("steer_child")


@child.step
def child_work(value: Any) -> Any: ...


parent = pgflow.Flow("steer_parent")


@parent.step
def p_prep(input: Any) -> Any: ...


parent.subflow("sub", child, depends_on=["p_prep"])


@parent.step(depends_on=["sub"])
def p_after(sub: Any) -> Any: ...


over_input = pgflow.Flow("steer_map_input")


@over_input.map
def double(item: Any) -> Any: ...


instant = pgflow.Flow("steer_instant")  # its child completes as it starts (an empty map)


@instant.step
def items(input: Any) -> Any: ...


instant.subflow("each", over_input, depends_on=["items"])


outer = pgflow.Flow("steer_outer")  # a sub-flow whose child has a sub-flow
outer.subflow("mid", parent)


chain = pgflow.Flow("steer_chain")


@chain.step
def first(value: Any) -> Any: ...


@chain.step
def second(value: Any) -> Any: ...


@chain.step
def third(value: Any) -> Any: ...


mapped = pgflow.Flow("steer_map")


@mapped.step
def pages(input: Any) -> Any: ...


@mapped.map(over="pages")
def score(item: Any) -> Any: ...


@mapped.step(depends_on=["score"])
def total(score: Any) -> Any: ...


diamond = pgflow.Flow("steer_diamond")


@diamond.step
def fetch(input: Any) -> Any: ...


@diamond.step(depends_on=["fetch"])
def left(fetch: Any) -> Any: ...


@diamond.step(depends_on=["fetch"])
def right(fetch: Any) -> Any: ...


@diamond.step(depends_on=["left", "right"])
def join(left: Any, right: Any, input: Any) -> Any: ...


# -- helpers -------------------------------------------------------------------------------


@pytest.fixture
def store(backend: Any) -> Any:
    """The backend under test: every bundled backend is a FlowStore."""
    assert isinstance(backend, pgflow.FlowStore)
    return backend


def plans(*flows: pgflow.Flow) -> dict[str, FlowPlan]:
    return {plan_fingerprint(flow.plan): flow.plan for flow in flows}


ALL_PLANS = plans(approval, timed_skip, timed_fail, long_wait, napping, dated, child, parent)


def start(store: Any, flow: pgflow.Flow, workflow_id: str, input: Any, **options: Any) -> Any:
    started = store.start_flow_run(
        flow.plan, workflow_id=workflow_id, input=input, max_attempts=3, **options
    )
    assert started.created
    return started.run


def claim_all(store: Any, expect: int) -> list[Job]:
    jobs: list[Job] = store.claim_jobs("default", "node-a", 100)
    assert len(jobs) == expect, [job.task for job in jobs]
    return sorted(jobs, key=lambda job: (job.task.workflow_id, job.task.step, job.task.index))


def only(store: Any, step: str, expect_args: list[Any] | None = None) -> Job:
    (job,) = claim_all(store, 1)
    assert job.task is not None and job.task.step == step, job.task
    if expect_args is not None:
        assert job.args["args"] == expect_args
    return job


def finish(
    store: Any, plan: FlowPlan, job: Job, output: Any = None, *, skipped: str | None = None
) -> list[int]:
    assert job.task is not None
    completion = TaskCompletion(
        job.ref, job.task, None if skipped else dumps(output, what="output"), skipped
    )
    counted: list[int] = store.complete_tasks([completion], {plan_fingerprint(plan): plan})
    return counted


def states(store: Any, workflow_id: str) -> dict[str, StepStatus]:
    return {name: s.state for name, s in store.get_step_states(workflow_id).items()}


def signal(store: Any, workflow_id: str, step: str, payload: Any, **options: Any) -> bool:
    delivered: bool = store.signal_run(ALL_PLANS, workflow_id, step, payload, **options)
    return delivered


def claim_when_due(store: Any, step: str, within: float = 10.0) -> Job:
    """Claim the one task of `step` once its scheduled time has come (staging it)."""
    end = time.monotonic() + within
    while True:
        store.stage_jobs()
        jobs = store.claim_jobs("default", "node-a", 10)
        if jobs:
            (job,) = jobs
            assert job.task is not None and job.task.step == step, job.task
            return job
        assert time.monotonic() < end, f"no task of {step!r} became due within {within}s"
        time.sleep(0.01)


@contextmanager
def refused(kind: type[Exception], *words: str) -> Iterator[None]:
    """Expect `kind` raised with a message naming each of `words` (in any order)."""
    with pytest.raises(kind) as raised:
        yield
    for word in words:
        assert word in str(raised.value), (word, str(raised.value))


def live_jobs(store: Any) -> list[Job]:
    """Jobs still waiting to run (available, scheduled, retryable)."""
    return [job for job in store.list_jobs(limit=1000) if job.state in WAITING_STATES]


def about(actual: datetime, expected: datetime, slack: float = 5.0) -> bool:
    return abs((actual - expected).total_seconds()) <= slack


def subflow_failed(step: str, child_id: str) -> dict[str, Any]:
    """The error a relay worker discards its job with when the child did not complete."""
    return {
        "kind": "SubflowFailed",
        "message": f"sub-flow step {step!r} failed: child run {child_id} of flow "
        f"'steer_child' failed: boom",
        "step": step,
        "traceback": "",
    }


# -- wait_for and signals --------------------------------------------------------------------


def test_a_signal_completes_the_waiting_step_and_its_dependents_get_the_payload(
    store: Any,
) -> None:
    start(store, approval, "w1", {"order": 7})
    finish(store, approval.plan, only(store, "prep", [{"order": 7}]), "prepared")
    waiting = store.get_step_states("w1")["approve"]
    assert (waiting.state, waiting.kind, waiting.tasks_total) == (StepStatus.STARTED, "wait", 1)
    assert claim_all(store, 0) == []  # no timeout: nothing is queued while it waits
    assert signal(store, "w1", "approve", {"by": "ann"}) is True
    done = store.get_step_states("w1")["approve"]
    assert (done.state, done.output, done.tasks_done) == (
        StepStatus.COMPLETED,
        {"by": "ann"},
        1,
    )
    after_job = only(store, "after")
    assert after_job.args["kwargs"] == {"approve": {"by": "ann"}}
    finish(store, approval.plan, after_job, "shipped")
    assert store.get_run("w1").output == {"after": "shipped"}


def test_a_signal_sent_before_the_run_reaches_the_wait_is_kept_and_used(store: Any) -> None:
    start(store, approval, "w2", 1)
    prep_job = only(store, "prep")
    assert signal(store, "w2", "approve", "early") is False
    assert states(store, "w2")["approve"] is StepStatus.PENDING
    finish(store, approval.plan, prep_job, "prepared")
    approve = store.get_step_states("w2")["approve"]
    assert (approve.state, approve.output) == (StepStatus.COMPLETED, "early")
    assert only(store, "after").args["kwargs"] == {"approve": "early"}


def test_a_second_signal_is_refused_and_changes_nothing(store: Any) -> None:
    start(store, approval, "w3", 1)
    finish(store, approval.plan, only(store, "prep"), "p")
    assert signal(store, "w3", "approve", "first")
    with pytest.raises(pgflow.SignalError, match=r"'approve'.*'w3'.*already signalled"):
        signal(store, "w3", "approve", "second")
    assert store.get_step_states("w3")["approve"].output == "first"
    assert only(store, "after").args["kwargs"] == {"approve": "first"}
    # A second signal kept for later is refused the same way.
    start(store, approval, "w3b", 1)
    assert signal(store, "w3b", "approve", "first") is False
    with pytest.raises(pgflow.SignalError, match="already signalled"):
        signal(store, "w3b", "approve", "second")
    finish(store, approval.plan, only(store, "prep"), "p")
    assert store.get_step_states("w3b")["approve"].output == "first"


def test_signals_to_an_unknown_run_or_step_a_non_wait_or_a_finished_run_are_refused(
    store: Any,
) -> None:
    with pytest.raises(pgflow.SignalError, match=r"'approve'.*'ghost'.*not stored"):
        signal(store, "ghost", "approve", 1)
    start(store, approval, "w4", 1)
    with pytest.raises(pgflow.SignalError, match=r"'w4'.*no step 'nope'.*approve"):
        signal(store, "w4", "nope", 1)
    with pytest.raises(pgflow.SignalError, match=r"step 'prep' of run 'w4' is a step step"):
        signal(store, "w4", "prep", 1)
    store.cancel_run("w4")
    with pytest.raises(pgflow.SignalError, match=r"'approve'.*'w4'.*cancelled"):
        signal(store, "w4", "approve", 1)
    store.start_run(workflow_id="inproc", workflow="steer_approval", input=1, max_attempts=1)
    with pytest.raises(pgflow.SignalError, match=r"'inproc'.*not started with start_run"):
        signal(store, "inproc", "approve", 1)
    assert states(store, "w4")["approve"] is StepStatus.CANCELLED


def test_a_signal_for_a_flow_this_process_does_not_define_is_refused(store: Any) -> None:
    start(store, approval, "w5", 1)
    with refused(pgflow.SignalError, "'w5'", "steer_approval"):
        store.signal_run(plans(chain), "w5", "approve", 1)
    assert signal(store, "w5", "approve", 1) is False  # nothing was stored by the refusal


def test_a_payload_not_json_or_too_big_is_refused_and_nothing_is_stored(store: Any) -> None:
    start(store, approval, "w6", 1)
    finish(store, approval.plan, only(store, "prep"), "p")
    with pytest.raises(pgflow.SerializationError):
        signal(store, "w6", "approve", {1j})
    with pytest.raises(pgflow.SerializationError):
        signal(store, "w6", "approve", "x" * (store.max_payload_bytes + 1))
    assert states(store, "w6")["approve"] is StepStatus.STARTED
    assert claim_all(store, 0) == []
    assert signal(store, "w6", "approve", "fits") is True


def test_a_wait_with_a_timeout_gets_one_timeout_task_due_then(store: Any) -> None:
    now = store.database_time()
    start(store, long_wait, "t0", "the value")
    (job,) = [j for j in store.list_jobs() if j.task is not None]
    assert job.task == TaskKey("t0", "answer", 0) and job.state is JobState.SCHEDULED
    assert job.max_attempts == 1
    assert about(job.scheduled_at, now + timedelta(seconds=30))
    assert job.args["args"] == ["the value"]  # a root wait's value is the run's input
    assert signal(store, "t0", "answer", "yes") is True
    assert store.get_job(job.id).state is JobState.CANCELLED  # the signal cancels it
    assert store.get_run("t0").state is RunState.RUNNING
    assert only(store, "read").args["kwargs"] == {"answer": "yes"}


def test_a_timeout_that_skips_skips_the_step_and_a_dependent_with_a_default_runs(
    store: Any,
) -> None:
    start(store, timed_skip, "t1", None)
    job = claim_when_due(store, "answer")
    assert finish(store, timed_skip.plan, job, skipped="no signal within 0.05s") == [job.id]
    answer = store.get_step_states("t1")["answer"]
    assert (answer.state, answer.skip_reason) == (StepStatus.SKIPPED, "no signal within 0.05s")
    use_job = only(store, "use")
    assert use_job.args["kwargs"] == {}  # its default applies
    with pytest.raises(pgflow.SignalError, match=r"'answer'.*'t1'.*skipped"):
        signal(store, "t1", "answer", "late")
    finish(store, timed_skip.plan, use_job, "defaulted")
    assert store.get_run("t1").output == {"use": "defaulted"}


def test_a_timeout_that_fails_fails_the_step_and_run_without_retry(store: Any) -> None:
    start(store, timed_fail, "t2", None)
    job = claim_when_due(store, "answer")
    assert job.max_attempts == 1
    timed_out = wait_timed_out(timed_fail.plan.step("answer"))
    assert store.fail_job(job.ref, timed_out, retry_in=None) is JobState.DISCARDED
    run = store.get_run("t2")
    assert run.state is RunState.FAILED and run.error["step"] == "answer"
    assert run.error["kind"] == "WaitTimedOut"
    answer = store.get_step_states("t2")["answer"]
    assert answer.state is StepStatus.FAILED and answer.error["kind"] == "WaitTimedOut"
    assert live_jobs(store) == []
    with pytest.raises(pgflow.SignalError, match=r"'t2'.*failed"):
        signal(store, "t2", "answer", "late")


def test_a_signal_beating_a_running_timeout_makes_the_timeout_count_nothing(store: Any) -> None:
    start(store, timed_skip, "r1", None)
    skip_job = claim_when_due(store, "answer")
    assert signal(store, "r1", "answer", "in time") is True
    assert store.get_job(skip_job.id).cancel_requested  # its worker is told to stop
    assert finish(store, timed_skip.plan, skip_job, skipped="no signal within 0.05s") == []
    answer = store.get_step_states("r1")["answer"]
    assert (answer.state, answer.output) == (StepStatus.COMPLETED, "in time")
    assert only(store, "use").args["kwargs"] == {"answer": "in time"}
    # The failing kind: its discarded (here cancelled) timeout does not fail the run.
    start(store, timed_fail, "r2", None)
    fail_job = claim_when_due(store, "answer")
    assert signal(store, "r2", "answer", "in time") is True
    timed_out = wait_timed_out(timed_fail.plan.step("answer"))
    assert store.fail_job(fail_job.ref, timed_out, retry_in=None) is JobState.CANCELLED
    assert store.get_run("r2").state is RunState.RUNNING
    assert states(store, "r2")["answer"] is StepStatus.COMPLETED
    assert only(store, "consume").args["kwargs"] == {"answer": "in time"}


def test_a_timeout_beating_the_signal_refuses_the_signal(store: Any) -> None:
    start(store, timed_skip, "r3", None)
    job = claim_when_due(store, "answer")
    assert finish(store, timed_skip.plan, job, skipped="no signal within 0.05s") == [job.id]
    with pytest.raises(pgflow.SignalError, match="skipped"):
        signal(store, "r3", "answer", "too late")
    assert states(store, "r3")["answer"] is StepStatus.SKIPPED


def _race_signal_and_timeout(store: Any, workflow_id: str, job: Job) -> dict[str, Any]:
    """Complete the timeout task `job` (skipping) and signal its wait from two threads
    released at once."""
    barrier = threading.Barrier(2)
    results: dict[str, Any] = {}

    def complete() -> None:
        barrier.wait(5)
        results["counted"] = finish(store, timed_skip.plan, job, skipped="no signal")

    def send() -> None:
        barrier.wait(5)
        try:
            results["delivered"] = signal(store, workflow_id, "answer", "yes")
        except pgflow.SignalError as exc:
            results["refused"] = exc

    threads = [threading.Thread(target=complete), threading.Thread(target=send)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    return results


def test_a_signal_racing_the_timeout_completion_one_wins(store: Any) -> None:
    for attempt in range(10):
        workflow_id = f"race-{attempt}"
        start(store, timed_skip, workflow_id, None)
        job = claim_when_due(store, "answer")
        results = _race_signal_and_timeout(store, workflow_id, job)
        answer = store.get_step_states(workflow_id)["answer"]
        if answer.state is StepStatus.COMPLETED:  # the signal won
            assert results["delivered"] is True and results["counted"] == []
            assert answer.output == "yes"
        else:  # the timeout won: the signal was refused
            assert answer.state is StepStatus.SKIPPED
            assert results["counted"] == [job.id] and "refused" in results
            assert "skipped" in str(results["refused"])
        (use_job,) = claim_all(store, 1)  # exactly one dependent task either way
        assert use_job.task.step == "use"
        store.cancel_run(workflow_id)


def test_a_delivered_signal_and_a_relay_wake_their_queues(store: Any) -> None:
    listener = store.listener()
    try:
        start(store, approval, "wk1", 1)
        assert listener.wait(5.0) == {"default"}
        finish(store, approval.plan, only(store, "prep"), "p")
        assert listener.wait(0.0) == set()  # the wait queues nothing
        assert signal(store, "wk1", "approve", "go")
        assert listener.wait(5.0) == {"default"}  # after's task
        finish(store, approval.plan, only(store, "after"), "x")
        start(store, parent, "wk2", 1)
        assert listener.wait(5.0) == {"default"}
        finish(store, parent.plan, only(store, "p_prep"), 1)
        assert listener.wait(5.0) == {"default"}  # the child's task
        finish(store, child.plan, only(store, "child_work"), 2)
        assert listener.wait(5.0) == {"default"}  # the relay
    finally:
        listener.close()


class _Rollback(Exception):
    """Raised inside a transaction to make SQLAlchemy roll it back."""


def test_a_signal_in_a_rolled_back_transaction_leaves_nothing(
    store: Any, backend_kind: str
) -> None:
    if backend_kind == "memory":
        pytest.skip("memory has no SQL transaction to join (it refuses connection=)")
    start(store, approval, "tx1", 1)
    finish(store, approval.plan, only(store, "prep"), "p")
    with pytest.raises(_Rollback), store.engine.begin() as connection:
        assert signal(store, "tx1", "approve", "rolled back", connection=connection) is True
        raise _Rollback
    assert states(store, "tx1")["approve"] is StepStatus.STARTED
    assert claim_all(store, 0) == []
    assert signal(store, "tx1", "approve", "kept") is True  # nothing was stored before
    assert only(store, "after").args["kwargs"] == {"approve": "kept"}


def test_a_store_without_sql_refuses_a_signal_in_a_callers_transaction(
    store: Any, backend_kind: str
) -> None:
    if backend_kind != "memory":
        pytest.skip("the SQL backends join the caller's transaction")
    start(store, approval, "tx2", 1)
    with pytest.raises(pgflow.BackendError, match="connection"):
        signal(store, "tx2", "approve", 1, connection=object())
    assert signal(store, "tx2", "approve", 1) is False


# -- sleep -------------------------------------------------------------------------------------


def test_a_sleep_of_seconds_is_a_task_scheduled_that_far_ahead(store: Any) -> None:
    start(store, napping, "s1", 1)
    finish(store, napping.plan, only(store, "before_nap"), {"v": 1})
    now = store.database_time()
    (nap,) = [j for j in store.list_jobs() if j.task is not None and j.task.step == "nap"]
    assert nap.state is JobState.SCHEDULED and about(nap.scheduled_at, now + timedelta(seconds=30))
    assert nap.args["args"] == [{"v": 1}]
    state = store.get_step_states("s1")["nap"]
    assert (state.state, state.kind) == (StepStatus.STARTED, "sleep")


def test_a_sleep_until_a_dependencys_time_is_scheduled_then_and_passes_its_value(
    store: Any,
) -> None:
    later = (store.database_time() + timedelta(hours=1)).replace(microsecond=0)
    start(store, dated, "s2", 1)
    finish(store, dated.plan, only(store, "schedule"), {"at": later.isoformat()})
    (nap,) = [j for j in store.list_jobs() if j.task is not None and j.task.step == "nap"]
    assert nap.state is JobState.SCHEDULED and nap.scheduled_at == later
    # A time already past: due at once; the worker completes it with its value.
    earlier = datetime(2020, 1, 1, tzinfo=UTC).isoformat()
    start(store, dated, "s3", 1)
    finish(store, dated.plan, only(store, "schedule"), {"at": earlier})
    nap_job = only(store, "nap", [{"at": earlier}])
    finish(store, dated.plan, nap_job, nap_job.args["args"][0])
    assert store.get_step_states("s3")["nap"].output == {"at": earlier}
    assert only(store, "rise").args["kwargs"] == {"nap": {"at": earlier}}


def test_until_raising_fails_the_run_naming_the_step(store: Any) -> None:
    start(store, dated, "s4", 1)
    finish(store, dated.plan, only(store, "schedule"), {"no": "time"})
    run = store.get_run("s4")
    assert run.state is RunState.FAILED and run.error["step"] == "nap"
    assert "until raised" in run.error["message"] and run.error["kind"] == "KeyError"
    assert states(store, "s4") == {
        "schedule": StepStatus.COMPLETED,
        "nap": StepStatus.FAILED,
        "rise": StepStatus.CANCELLED,
    }
    assert live_jobs(store) == []


# -- sub-flows -------------------------------------------------------------------------------


def _child_of_step(store: Any, workflow_id: str, step: str) -> str:
    sub = store.get_step_states(workflow_id)[step]
    assert sub.kind == "subflow" and sub.child_id is not None
    child_id: str = sub.child_id
    return child_id


def _child_of(store: Any, workflow_id: str) -> str:
    return _child_of_step(store, workflow_id, "sub")


def test_a_subflow_starts_its_child_and_the_relay_completes_the_step(store: Any) -> None:
    start(store, parent, "p1", 1)
    finish(store, parent.plan, only(store, "p_prep"), {"n": 5})
    sub = store.get_step_states("p1")["sub"]
    assert (sub.state, sub.tasks_total) == (StepStatus.STARTED, 1)
    child_id = _child_of(store, "p1")
    run = store.get_run(child_id)
    assert (run.workflow, run.input, run.state) == ("steer_child", {"n": 5}, RunState.RUNNING)
    assert (run.parent_id, run.parent_step) == ("p1", "sub")
    assert run.fingerprint == plan_fingerprint(child.plan)
    assert store.get_run("p1").parent_id is None
    work = only(store, "child_work", [{"n": 5}])
    assert work.task.workflow_id == child_id
    finish(store, child.plan, work, {"doubled": 10})
    assert store.get_run(child_id).state is RunState.COMPLETED
    relay = only(store, "sub")
    assert relay.task == TaskKey("p1", "sub", 0) and relay.args["child"] == child_id
    assert relay.worker == parent.plan.worker and relay.max_attempts == RELAY_ATTEMPTS
    assert relay.args["fingerprint"] == plan_fingerprint(parent.plan)
    assert finish(store, parent.plan, relay, {"doubled": 10}) == [relay.id]
    assert store.get_step_states("p1")["sub"].output == {"doubled": 10}
    after_job = only(store, "p_after")
    assert after_job.args["kwargs"] == {"sub": {"doubled": 10}}
    finish(store, parent.plan, after_job, "end")
    assert store.get_run("p1").output == {"p_after": "end"}


def test_a_failed_child_inserts_the_relay_whose_discard_fails_the_parent(store: Any) -> None:
    start(store, parent, "p2", 1)
    finish(store, parent.plan, only(store, "p_prep"), 2)
    child_id = _child_of(store, "p2")
    work = only(store, "child_work")
    store.fail_job(work.ref, error(1), retry_in=None)
    assert store.get_run(child_id).state is RunState.FAILED
    assert store.get_run("p2").state is RunState.RUNNING  # until its relay runs
    relay = only(store, "sub")
    assert relay.args["child"] == child_id
    store.fail_job(relay.ref, subflow_failed("sub", child_id), retry_in=None)
    run = store.get_run("p2")
    assert run.state is RunState.FAILED and run.error["step"] == "sub"
    assert run.error["kind"] == "SubflowFailed"
    assert states(store, "p2")["p_after"] is StepStatus.CANCELLED


def test_cancelling_the_parent_cancels_its_child_and_leaves_nothing_to_run(store: Any) -> None:
    start(store, parent, "p3", 1)
    finish(store, parent.plan, only(store, "p_prep"), 2)
    child_id = _child_of(store, "p3")
    assert store.cancel_run("p3").state is RunState.CANCELLED
    child_run = store.get_run(child_id)
    assert child_run.state is RunState.CANCELLED and child_run.error["kind"] == "RunCancelled"
    assert "parent" in child_run.error["message"]
    assert set(states(store, child_id).values()) == {StepStatus.CANCELLED}
    assert live_jobs(store) == []  # no relay either: the parent ended first
    assert not [j for j in store.list_jobs() if j.state is JobState.EXECUTING]
    assert store.running_flows() == []


def test_cancelling_the_parent_flags_the_childs_running_task(store: Any) -> None:
    start(store, parent, "p3b", 1)
    finish(store, parent.plan, only(store, "p_prep"), 2)
    child_id = _child_of(store, "p3b")
    work = only(store, "child_work")
    store.cancel_run("p3b")
    assert store.get_job(work.id).cancel_requested
    assert finish(store, child.plan, work, "late") == []
    assert store.get_run(child_id).state is RunState.CANCELLED
    assert live_jobs(store) == []


def test_a_child_cancelled_alone_relays_to_its_parent(store: Any) -> None:
    start(store, parent, "p4", 1)
    finish(store, parent.plan, only(store, "p_prep"), 2)
    child_id = _child_of(store, "p4")
    store.cancel_run(child_id)
    assert store.get_run("p4").state is RunState.RUNNING
    relay = only(store, "sub")
    assert relay.task.workflow_id == "p4" and relay.args["child"] == child_id


def test_failing_the_parent_from_outside_cancels_its_child_without_a_relay(store: Any) -> None:
    start(store, parent, "p5", 1)
    finish(store, parent.plan, only(store, "p_prep"), 2)
    child_id = _child_of(store, "p5")
    assert store.fail_run("p5", {"kind": "NoServer", "message": "gone", "step": None})
    assert store.get_run(child_id).state is RunState.CANCELLED
    assert live_jobs(store) == []


def test_a_child_that_completes_as_it_starts_relays_in_the_same_call(store: Any) -> None:
    start(store, instant, "p6", 1)
    finish(store, instant.plan, only(store, "items"), [])
    child_id = _child_of_step(store, "p6", "each")
    child_run = store.get_run(child_id)
    assert (child_run.state, child_run.output) == (RunState.COMPLETED, {"double": []})
    relay = only(store, "each")
    assert relay.args["child"] == child_id
    finish(store, instant.plan, relay, {"double": []})
    assert store.get_run("p6").output == {"each": {"double": []}}


def test_cancelling_a_grandparent_cancels_every_descendant(store: Any) -> None:
    start(store, outer, "g1", {"deep": True})
    mid_id = _child_of_step(store, "g1", "mid")
    assert store.get_run(mid_id).input == {"deep": True}  # a root sub-flow takes the input
    finish(store, parent.plan, only(store, "p_prep", [{"deep": True}]), 4)
    grandchild_id = _child_of(store, mid_id)
    assert store.get_run(grandchild_id).parent_id == mid_id
    store.cancel_run("g1")
    for workflow_id in (mid_id, grandchild_id):
        assert store.get_run(workflow_id).state is RunState.CANCELLED
    assert live_jobs(store) == [] and store.running_flows() == []


# -- resume ----------------------------------------------------------------------------------


def test_resume_of_a_failed_map_reuses_completed_steps_and_stored_elements(store: Any) -> None:
    start(store, mapped, "rs1", None)
    finish(store, mapped.plan, only(store, "pages"), ["a", "b", "c"])
    elements = claim_all(store, 3)
    finish(store, mapped.plan, elements[0], 10)
    finish(store, mapped.plan, elements[2], 30)
    store.fail_job(elements[1].ref, error(1, "bad page"), retry_in=None)
    assert store.get_run("rs1").state is RunState.FAILED
    run = store.resume_run(mapped.plan, "rs1")
    assert run.state is RunState.RUNNING and run.error is None and run.finished_at is None
    score = store.get_step_states("rs1")["score"]
    assert (score.state, score.tasks_total, score.tasks_done) == (StepStatus.STARTED, 3, 2)
    assert score.error is None
    assert states(store, "rs1")["pages"] is StepStatus.COMPLETED
    again = only(store, "score", ["b"])  # only the missing element runs again
    assert again.task.index == 1 and again.attempt == 1
    finish(store, mapped.plan, again, 20)
    assert store.get_step_states("rs1")["score"].output == [10, 20, 30]
    finish(store, mapped.plan, only(store, "total"), 60)
    assert store.get_run("rs1").output == {"total": 60}


def test_resume_of_a_map_whose_elements_were_all_stored_completes_it_at_once(
    store: Any,
) -> None:
    start(store, mapped, "rs2", None)
    finish(store, mapped.plan, only(store, "pages"), ["a", "b"])
    elements = claim_all(store, 2)
    finish(store, mapped.plan, elements[0], 1)
    finish(store, mapped.plan, elements[1], 2)
    store.cancel_run("rs2")  # total was queued
    store.resume_run(mapped.plan, "rs2")
    assert store.get_step_states("rs2")["score"].state is StepStatus.COMPLETED
    assert only(store, "total").args["kwargs"] == {"score": [1, 2]}


def test_resume_of_a_cancelled_chain_continues_from_its_frontier(store: Any) -> None:
    start(store, chain, "rs3", 1)
    finish(store, chain.plan, only(store, "first"), "one")
    only(store, "second")
    store.cancel_run("rs3")
    assert store.resume_run(chain.plan, "rs3").state is RunState.RUNNING
    assert states(store, "rs3") == {
        "first": StepStatus.COMPLETED,
        "second": StepStatus.STARTED,
        "third": StepStatus.PENDING,
    }
    finish(store, chain.plan, only(store, "second", ["one"]), "two")
    finish(store, chain.plan, only(store, "third", ["two"]), "three")
    assert store.get_run("rs3").output == "three"


def test_resume_refuses_running_completed_unknown_and_another_definition(store: Any) -> None:
    start(store, chain, "rs4", 1)
    with refused(pgflow.RunStateError, "'rs4'", "running"):
        store.resume_run(chain.plan, "rs4")
    start(store, over_input, "rs5", [])  # completed at start
    with refused(pgflow.RunStateError, "'rs5'", "completed"):
        store.resume_run(over_input.plan, "rs5")
    with refused(pgflow.RunStateError, "'nothing'"):
        store.resume_run(chain.plan, "nothing")
    store.cancel_run("rs4")
    with refused(pgflow.DefinitionError, "'rs4'"):
        store.resume_run(mapped.plan, "rs4")
    assert store.get_run("rs4").state is RunState.CANCELLED
    store.resume_run(chain.plan, "rs4")
    with refused(pgflow.RunStateError, "'rs4'", "running"):
        store.resume_run(chain.plan, "rs4")  # the second of two resumes
    assert len(claim_all(store, 1)) == 1  # one resume, one task


def test_resume_of_a_parent_resumes_its_failed_child(store: Any) -> None:
    start(store, parent, "rs6", 1)
    finish(store, parent.plan, only(store, "p_prep"), 3)
    child_id = _child_of(store, "rs6")
    store.fail_job(only(store, "child_work").ref, error(1), retry_in=None)
    store.fail_job(only(store, "sub").ref, subflow_failed("sub", child_id), retry_in=None)
    assert store.get_run("rs6").state is RunState.FAILED
    store.resume_run(parent.plan, "rs6")
    assert _child_of(store, "rs6") == child_id  # the same child, resumed
    assert store.get_run(child_id).state is RunState.RUNNING
    assert states(store, "rs6")["sub"] is StepStatus.STARTED
    finish(store, child.plan, only(store, "child_work", [3]), 6)
    relay = only(store, "sub")
    assert relay.args["child"] == child_id
    finish(store, parent.plan, relay, 6)
    finish(store, parent.plan, only(store, "p_after", None), "end")
    assert store.get_run("rs6").state is RunState.COMPLETED


def test_resume_of_a_wait_uses_a_signal_kept_for_it(store: Any) -> None:
    start(store, approval, "rs7", 1)
    assert signal(store, "rs7", "approve", "kept") is False
    store.cancel_run("rs7")
    store.resume_run(approval.plan, "rs7")
    finish(store, approval.plan, only(store, "prep"), "p")
    assert store.get_step_states("rs7")["approve"].output == "kept"


def test_resume_of_a_timed_out_wait_waits_again_with_a_new_timeout(store: Any) -> None:
    start(store, timed_fail, "rs8", None)
    old = claim_when_due(store, "answer")
    store.fail_job(old.ref, wait_timed_out(timed_fail.plan.step("answer")), retry_in=None)
    assert store.get_run("rs8").state is RunState.FAILED
    store.resume_run(timed_fail.plan, "rs8")
    answer = store.get_step_states("rs8")["answer"]
    assert (answer.state, answer.error) == (StepStatus.STARTED, None)
    (timeout,) = live_jobs(store)
    assert timeout.id != old.id and timeout.task == TaskKey("rs8", "answer", 0)
    assert signal(store, "rs8", "answer", "finally") is True
    assert only(store, "consume").args["kwargs"] == {"answer": "finally"}


# -- restart ---------------------------------------------------------------------------------


def _finish_diamond(store: Any, workflow_id: str) -> None:
    start(store, diamond, workflow_id, "in")
    finish(store, diamond.plan, only(store, "fetch"), "F")
    left_job, right_job = claim_all(store, 2)
    finish(store, diamond.plan, left_job, "L")
    finish(store, diamond.plan, right_job, "R")
    finish(store, diamond.plan, only(store, "join"), "J")
    assert store.get_run(workflow_id).state is RunState.COMPLETED


def test_restart_from_a_step_copies_upstream_and_reruns_downstream(store: Any) -> None:
    _finish_diamond(store, "old")
    rerun = restart_steps(diamond.plan, "left", False)
    assert rerun == {"left", "join"}
    started = store.restart_run(diamond.plan, "old", new_id="new", rerun=rerun, input="in")
    assert started.created
    run = started.run
    assert (run.restart_of, run.state, run.input) == ("old", RunState.RUNNING, "in")
    assert store.get_run("old").restart_of is None
    copied = store.get_step_states("new")
    old_states = store.get_step_states("old")
    for name in ("fetch", "right"):
        assert copied[name].state is StepStatus.COMPLETED
        assert copied[name].output == old_states[name].output
        assert copied[name].completed_at == old_states[name].completed_at
    assert copied["join"].state is StepStatus.PENDING
    left_job = only(store, "left")
    assert left_job.task.workflow_id == "new" and left_job.args["kwargs"] == {"fetch": "F"}
    finish(store, diamond.plan, left_job, "L2")
    join_job = only(store, "join")
    assert join_job.args["kwargs"] == {"left": "L2", "right": "R", "input": "in"}
    finish(store, diamond.plan, join_job, "J2")
    assert store.get_run("new").output == {"join": "J2"}
    assert store.get_run("old").output == {"join": "J"}  # the old run is left as it was


def test_restart_with_a_new_input_reruns_the_steps_that_read_it(store: Any) -> None:
    _finish_diamond(store, "old2")
    rerun = restart_steps(diamond.plan, None, True)
    store.restart_run(diamond.plan, "old2", new_id="new2", rerun=rerun, input="other")
    assert store.get_run("new2").input == "other"
    assert only(store, "fetch", ["other"]).task.workflow_id == "new2"
    assert set(states(store, "new2").values()) == {StepStatus.STARTED, StepStatus.PENDING}


def test_restart_of_a_failed_run_copies_what_settled(store: Any) -> None:
    start(store, chain, "old3", 1)
    finish(store, chain.plan, only(store, "first"), "one")
    store.fail_job(only(store, "second").ref, error(1), retry_in=None)
    rerun = restart_steps(chain.plan, "third", False)
    store.restart_run(chain.plan, "old3", new_id="new3", rerun=rerun, input=1)
    assert states(store, "new3") == {
        "first": StepStatus.COMPLETED,
        "second": StepStatus.STARTED,
        "third": StepStatus.PENDING,
    }
    assert only(store, "second", ["one"]).task.workflow_id == "new3"


def test_restart_copies_a_skipped_step_with_its_reason_and_a_rerun_wait_waits_again(
    store: Any,
) -> None:
    start(store, timed_skip, "old5", None)
    finish(store, timed_skip.plan, claim_when_due(store, "answer"), skipped="no signal")
    finish(store, timed_skip.plan, only(store, "use"), "defaulted")
    rerun = restart_steps(timed_skip.plan, "use", False)
    store.restart_run(timed_skip.plan, "old5", new_id="new5", rerun=rerun, input=None)
    answer = store.get_step_states("new5")["answer"]
    assert (answer.state, answer.skip_reason) == (StepStatus.SKIPPED, "no signal")
    assert only(store, "use").args["kwargs"] == {}
    # Run again from the wait: the new run waits for a signal of its own.
    start(store, approval, "old6", 1)
    finish(store, approval.plan, only(store, "prep"), "p")
    signal(store, "old6", "approve", "first time")
    finish(store, approval.plan, only(store, "after"), "done")
    rerun = restart_steps(approval.plan, "approve", False)
    store.restart_run(approval.plan, "old6", new_id="new6", rerun=rerun, input=1)
    assert states(store, "new6")["approve"] is StepStatus.STARTED
    assert signal(store, "new6", "approve", "second time") is True
    assert only(store, "after").args["kwargs"] == {"approve": "second time"}


def test_restart_refuses_a_running_run_an_unknown_one_and_another_definition(
    store: Any,
) -> None:
    start(store, chain, "old4", 1)
    with refused(pgflow.RunStateError, "'old4'", "running"):
        store.restart_run(chain.plan, "old4", new_id="n4", rerun={"first"}, input=1)
    with refused(pgflow.RunStateError, "'missing'"):
        store.restart_run(chain.plan, "missing", new_id="n5", rerun={"first"}, input=1)
    store.cancel_run("old4")
    with refused(pgflow.DefinitionError, "'old4'"):
        store.restart_run(mapped.plan, "old4", new_id="n6", rerun={"pages"}, input=1)
    with pytest.raises(pgflow.SerializationError):
        store.restart_run(chain.plan, "old4", new_id="n7", rerun={"first"}, input={1j})
    for workflow_id in ("n4", "n5", "n6", "n7"):
        assert store.get_run(workflow_id) is None
    assert live_jobs(store) == []


# -- deadlines -------------------------------------------------------------------------------


def _expire_when_due(store: Any, within: float = 10.0) -> list[str]:
    end = time.monotonic() + within
    while True:
        expired: list[str] = store.expire_runs()
        if expired:
            return expired
        assert time.monotonic() < end, f"no run expired within {within}s"
        time.sleep(0.01)


def test_a_run_past_its_deadline_fails_and_its_children_are_cancelled(store: Any) -> None:
    before = store.database_time()
    run = start(store, parent, "dl1", 1, deadline=0.05)
    assert run.deadline_at is not None and about(run.deadline_at, before, slack=5.0)
    assert run.deadline_at > before
    finish(store, parent.plan, only(store, "p_prep", [1]), 1)
    child_id = _child_of(store, "dl1")
    start(store, chain, "no-deadline", 1)
    done = start(store, over_input, "done-early", [], deadline=0.05)
    assert done.state is RunState.COMPLETED
    assert _expire_when_due(store) == ["dl1"]
    failed = store.get_run("dl1")
    assert failed.state is RunState.FAILED and failed.error["kind"] == "DeadlineExceeded"
    assert store.get_run(child_id).state is RunState.CANCELLED
    assert states(store, "dl1")["sub"] is StepStatus.CANCELLED
    assert store.get_run("no-deadline").state is RunState.RUNNING
    assert store.get_run("done-early").state is RunState.COMPLETED
    assert [j.task.workflow_id for j in live_jobs(store)] == ["no-deadline"]
    assert store.expire_runs() == []


def test_expire_runs_takes_at_most_its_limit(store: Any) -> None:
    last = [start(store, chain, w, 1, deadline=0.01) for w in ("e1", "e2", "e3")][-1]
    end = time.monotonic() + 10
    while store.database_time() <= last.deadline_at:  # every deadline has passed
        assert time.monotonic() < end
        time.sleep(0.01)
    first = store.expire_runs(2)
    assert len(first) == 2
    rest = store.expire_runs(limit=2)
    assert sorted(first + rest) == ["e1", "e2", "e3"]
    assert store.expire_runs() == []
    assert {store.get_run(w).state for w in ("e1", "e2", "e3")} == {RunState.FAILED}


def test_expire_runs_leaves_runs_within_their_deadline(store: Any) -> None:
    run = start(store, chain, "dl2", 1, deadline=3600)
    assert about(run.deadline_at, store.database_time() + timedelta(hours=1))
    assert store.expire_runs() == []
    assert store.get_run("dl2").state is RunState.RUNNING
    assert start(store, chain, "dl3", 1).deadline_at is None


# -- reads -----------------------------------------------------------------------------------


def test_step_states_give_each_steps_kind(store: Any) -> None:
    start(store, parent, "k1", 1)
    assert {n: s.kind for n, s in store.get_step_states("k1").items()} == {
        "p_prep": "step",
        "sub": "subflow",
        "p_after": "step",
    }
    assert store.get_step_states("k1")["sub"].child_id is None  # not started yet
    start(store, mapped, "k2", None)
    assert store.get_step_states("k2")["score"].kind == "map"
    start(store, napping, "k3", None)
    assert store.get_step_states("k3")["nap"].kind == "sleep"
