"""FlowStore contract: distributed flow runs settled by the backend, driven task by task.

No runtime runs here: tests claim task jobs and report them through `complete_tasks` or
`fail_job`, so every settle rule of `pgflow.backend.FlowStore` is checked on its own.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest

import pgflow
from pgflow.graph.ready import plan_fingerprint
from pgflow.graph.shape import FlowPlan
from pgflow.records import (
    InstanceInfo,
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

chain = pgflow.Flow("contract_flow_chain")


@chain.step
def first(value: Any) -> Any: ...


@chain.step
def second(value: Any) -> Any: ...


@chain.step
def third(value: Any) -> Any: ...


diamond = pgflow.Flow("contract_flow_diamond")


@diamond.step
def fetch(input: Any) -> Any: ...


@diamond.step(depends_on=["fetch"])
def left(fetch: Any) -> Any: ...


@diamond.step(depends_on=["fetch"])
def right(fetch: Any) -> Any: ...


@diamond.step(depends_on=["left", "right"])
def join(left: Any, right: Any) -> Any: ...


mapped = pgflow.Flow("contract_flow_map")


@mapped.step
def pages(input: Any) -> Any: ...


@mapped.map(over="pages")
def score(item: Any) -> Any: ...


@mapped.step(depends_on=["score"])
def total(score: Any) -> Any: ...


over_input = pgflow.Flow("contract_flow_map_input")


@over_input.map
def double(item: Any) -> Any: ...


guarded = pgflow.Flow("contract_flow_when")


@guarded.step
def account(input: Any) -> Any: ...


@guarded.step(depends_on=["account"], when=lambda account: account["plan"] == "premium")
def premium(account: Any) -> Any: ...


@guarded.step(depends_on=["premium"])
def premium_mail(premium: Any) -> Any: ...


@guarded.step(depends_on=["account", "premium"])
def welcome(account: Any, premium: Any = "basic") -> Any: ...


# -- helpers -------------------------------------------------------------------------------


@pytest.fixture
def store(backend: Any) -> Any:
    """The backend under test: every bundled backend is a FlowStore."""
    return backend


def start(store: Any, flow: pgflow.Flow, workflow_id: str, input: Any) -> Any:
    started = store.start_flow_run(flow.plan, workflow_id=workflow_id, input=input, max_attempts=3)
    assert started.created
    return started.run


def claim_all(store: Any, expect: int) -> list[Job]:
    jobs: list[Job] = store.claim_jobs("default", "node-a", 100)
    assert len(jobs) == expect, [job.task for job in jobs]
    return sorted(jobs, key=lambda job: (job.task.step, job.task.index))


def finish(
    store: Any, plan: FlowPlan, job: Job, output: Any = None, *, skipped: str | None = None
) -> list[int]:
    assert job.task is not None
    completion = TaskCompletion(
        job.ref, job.task, None if skipped else dumps(output, what="output"), skipped
    )
    counted: list[int] = store.complete_tasks([completion], {plan_fingerprint(plan): plan})
    return counted


def only(store: Any, step: str, expect_args: list[Any] | None = None) -> Job:
    (job,) = claim_all(store, 1)
    assert job.task is not None and job.task.step == step
    if expect_args is not None:
        assert job.args["args"] == expect_args
    return job


def states(store: Any, workflow_id: str) -> dict[str, StepStatus]:
    return {name: s.state for name, s in store.get_step_states(workflow_id).items()}


# -- shapes --------------------------------------------------------------------------------


def test_chain_of_three_runs_step_by_step_and_returns_the_last_output(store: Any) -> None:
    run = start(store, chain, "c1", {"n": 1})
    assert run.state is RunState.RUNNING and run.workflow == "contract_flow_chain"
    assert run.fingerprint == plan_fingerprint(chain.plan)
    job = only(store, "first", [{"n": 1}])
    assert finish(store, chain.plan, job, 2) == [job.id]
    job = only(store, "second", [2])
    finish(store, chain.plan, job, 3)
    assert store.get_run("c1").state is RunState.RUNNING
    job = only(store, "third", [3])
    finish(store, chain.plan, job, 4)
    done = store.get_run("c1")
    assert (done.state, done.output) == (RunState.COMPLETED, 4)
    assert store.get_job(job.id).state is JobState.COMPLETED
    assert store.running_flows() == []


def test_diamond_fans_out_and_joins_with_keyword_outputs(store: Any) -> None:
    start(store, diamond, "d1", "u")
    finish(store, diamond.plan, only(store, "fetch"), "text")
    left_job, right_job = claim_all(store, 2)
    assert left_job.args["kwargs"] == {"fetch": "text"}
    finish(store, diamond.plan, right_job, "R")
    assert claim_all(store, 0) == []  # join waits for both
    finish(store, diamond.plan, left_job, "L")
    join_job = only(store, "join")
    assert join_job.args["kwargs"] == {"left": "L", "right": "R"}
    finish(store, diamond.plan, join_job, "LR")
    assert store.get_run("d1").output == {"join": "LR"}


def test_map_of_five_collects_outputs_in_index_order(store: Any) -> None:
    start(store, mapped, "m5", None)
    finish(store, mapped.plan, only(store, "pages"), ["a", "bb", "ccc", "dddd", "eeeee"])
    elements = claim_all(store, 5)
    assert [job.task.index for job in elements] == [0, 1, 2, 3, 4]
    assert [job.args["args"] for job in elements] == [["a"], ["bb"], ["ccc"], ["dddd"], ["eeeee"]]
    for job in reversed(elements):  # finishing out of order still gives index order
        finish(store, mapped.plan, job, len(job.args["args"][0]) * 10)
    state = store.get_step_states("m5")["score"]
    assert (state.state, state.tasks_total, state.tasks_done) == (StepStatus.COMPLETED, 5, 5)
    assert state.output == [10, 20, 30, 40, 50]
    total_job = only(store, "total")
    assert total_job.args["kwargs"] == {"score": [10, 20, 30, 40, 50]}
    finish(store, mapped.plan, total_job, 150)
    assert store.get_run("m5").output == {"total": 150}


def test_map_of_zero_completes_at_once_and_cascades(store: Any) -> None:
    start(store, mapped, "m0", None)
    finish(store, mapped.plan, only(store, "pages"), [])
    state = store.get_step_states("m0")["score"]
    assert (state.state, state.output, state.tasks_total) == (StepStatus.COMPLETED, [], 0)
    assert only(store, "total").args["kwargs"] == {"score": []}


def test_map_over_the_run_input_and_an_empty_input_finishes_the_run_at_start(
    store: Any,
) -> None:
    start(store, over_input, "mi", [1, 2])
    jobs = claim_all(store, 2)
    assert [job.args["args"] for job in jobs] == [[1], [2]]
    for job in jobs:
        finish(store, over_input.plan, job, job.args["args"][0] * 2)
    assert store.get_run("mi").output == {"double": [2, 4]}
    empty = start(store, over_input, "mi0", [])
    assert empty.state is RunState.COMPLETED and empty.output == {"double": []}
    assert claim_all(store, 0) == []


def test_map_over_a_non_list_fails_the_run_naming_the_step(store: Any) -> None:
    run = start(store, over_input, "bad", {"not": "a list"})
    assert run.state is RunState.FAILED
    assert run.error["step"] == "double" and "must be a list" in run.error["message"]
    assert states(store, "bad") == {"double": StepStatus.FAILED}
    assert claim_all(store, 0) == []


# -- when / skip ---------------------------------------------------------------------------


def test_skip_propagates_to_a_step_without_default_and_feeds_the_default(store: Any) -> None:
    start(store, guarded, "w1", {"plan": "free"})
    finish(store, guarded.plan, only(store, "account"), {"plan": "free"})
    counted = finish(store, guarded.plan, only(store, "premium"), skipped="when was false")
    assert len(counted) == 1
    assert states(store, "w1") == {
        "account": StepStatus.COMPLETED,
        "premium": StepStatus.SKIPPED,
        "premium_mail": StepStatus.SKIPPED,
        "welcome": StepStatus.STARTED,
    }
    assert store.get_step_states("w1")["premium"].skip_reason == "when was false"
    welcome_job = only(store, "welcome")
    assert welcome_job.args["kwargs"] == {"account": {"plan": "free"}}  # default applies
    finish(store, guarded.plan, welcome_job, "hi")
    assert store.get_run("w1").output == {"welcome": "hi"}  # skipped leaf left out


# -- failures ------------------------------------------------------------------------------


def test_final_failure_cancels_queued_siblings_and_flags_executing_ones(store: Any) -> None:
    start(store, mapped, "f1", None)
    finish(store, mapped.plan, only(store, "pages"), [1, 2, 3])
    running = store.claim_jobs("default", "node-a", 2)
    assert len(running) == 2
    culprit, sibling = running
    assert store.fail_job(culprit.ref, error(1, "bad page"), retry_in=None) is JobState.DISCARDED
    run = store.get_run("f1")
    assert run.state is RunState.FAILED
    assert run.error["step"] == "score" and "bad page" in run.error["message"]
    assert set(run.error) >= {"kind", "message", "step", "traceback"}
    flagged = store.get_job(sibling.id)
    assert flagged.state is JobState.EXECUTING and flagged.cancel_requested
    queued = [j for j in store.list_jobs(state=JobState.CANCELLED) if j.task is not None]
    assert [j.task.index for j in queued] == [2]
    step_states = store.get_step_states("f1")
    assert step_states["score"].state is StepStatus.FAILED
    assert step_states["score"].error["message"] == "bad page"
    assert step_states["total"].state is StepStatus.CANCELLED
    # The flagged sibling finishing later counts nothing and leaves the run failed.
    assert finish(store, mapped.plan, flagged, 5) == []
    assert store.get_run("f1").state is RunState.FAILED


def test_cancel_job_of_a_queued_task_fails_the_run(store: Any) -> None:
    start(store, chain, "cx", 1)
    (job,) = store.list_jobs(state=JobState.AVAILABLE)
    store.cancel_job(job.id)
    run = store.get_run("cx")
    assert run.state is RunState.FAILED and run.error["step"] == "first"


def test_rescue_of_an_exhausted_task_fails_the_run(store: Any) -> None:
    started = store.start_flow_run(chain.plan, workflow_id="r1", input=1, max_attempts=1)
    assert started.created
    only(store, "first")
    report = store.rescue_stale(0.0)
    assert len(report.discarded) == 1
    run = store.get_run("r1")
    assert run.state is RunState.FAILED and run.error["step"] == "first"
    assert states(store, "r1")["second"] is StepStatus.CANCELLED


def test_retry_job_refuses_a_task_job(store: Any) -> None:
    start(store, chain, "rj", 1)
    (job,) = store.list_jobs(state=JobState.AVAILABLE)
    with pytest.raises(pgflow.JobStateError, match="task"):
        store.retry_job(job.id)


def test_fail_run_sweeps_a_live_run_once(store: Any) -> None:
    start(store, diamond, "fr", 1)
    only(store, "fetch")
    assert store.fail_run("fr", {"kind": "NoServer", "message": "nobody", "step": None})
    assert store.get_run("fr").state is RunState.FAILED
    assert set(states(store, "fr").values()) == {StepStatus.CANCELLED}
    assert not store.fail_run("fr", {"kind": "x", "message": "again"})
    assert not store.fail_run("unknown", {"kind": "x", "message": "none"})


# -- fencing, idempotence, reads -----------------------------------------------------------


def test_a_duplicate_or_fenced_completion_counts_nothing(store: Any) -> None:
    start(store, mapped, "dup", None)
    job = only(store, "pages")
    assert finish(store, mapped.plan, job, [1, 2]) == [job.id]
    assert finish(store, mapped.plan, job, [1, 2, 3]) == []  # fence: job already completed
    state = store.get_step_states("dup")["pages"]
    assert (state.tasks_done, state.output) == (1, [1, 2])
    assert len(claim_all(store, 2)) == 2


def test_start_is_idempotent_per_workflow_id(store: Any) -> None:
    start(store, chain, "same", 1)
    again = store.start_flow_run(chain.plan, workflow_id="same", input=2, max_attempts=3)
    assert not again.created and again.run.input == 1
    assert len(store.list_jobs()) == 1


def test_step_state_fields_and_running_flows(store: Any) -> None:
    start(store, chain, "sf", 1)
    job = only(store, "first")
    before = store.get_step_states("sf")
    assert list(before) == ["first", "second", "third"]
    assert before["first"].state is StepStatus.STARTED
    assert before["first"].attempts == 1 and before["first"].tasks_total == 1
    assert before["second"].tasks_total is None and before["second"].started_at is None
    assert store.running_flows() == [("contract_flow_chain", plan_fingerprint(chain.plan), 1)]
    finish(store, chain.plan, job, 7)
    after = store.get_step_states("sf")["first"]
    assert (after.state, after.output, after.tasks_done) == (StepStatus.COMPLETED, 7, 1)
    assert after.completed_at is not None
    assert store.get_step_states("nope") == {}


def test_wait_for_run_wakes_when_the_run_finishes(store: Any) -> None:
    start(store, chain, "wait", 1)
    assert store.wait_for_run("wait", 0.0).state is RunState.RUNNING
    seen: list[Any] = []
    waiter = threading.Thread(target=lambda: seen.append(store.wait_for_run("wait", 30.0)))
    waiter.start()
    for step in ("first", "second", "third"):
        finish(store, chain.plan, only(store, step), step)
    waiter.join(30.0)
    assert not waiter.is_alive()
    assert seen[0].state is RunState.COMPLETED and seen[0].output == "third"
    assert store.wait_for_run("unknown", 0.0) is None


def test_instances_keep_the_flows_they_serve(store: Any) -> None:
    served = (("contract_flow_chain", plan_fingerprint(chain.plan)),)
    store.register_instance(InstanceInfo(instance_id="node-f", flows=served))
    (instance,) = store.list_instances()
    assert instance.flows == served


def test_a_flagged_task_that_snoozes_ends_cancelled_and_fails_the_run(store: Any) -> None:
    start(store, chain, "sn", 1)
    job = only(store, "first")
    assert store.cancel_job(job.id).cancel_requested
    assert store.get_run("sn").state is RunState.RUNNING  # still executing: not ended yet
    assert store.snooze_job(job.ref, 10.0)
    assert store.get_job(job.id).state is JobState.CANCELLED
    run = store.get_run("sn")
    assert run.state is RunState.FAILED and run.error["step"] == "first"


def test_a_retryable_failure_keeps_the_run_going(store: Any) -> None:
    start(store, chain, "rt", 1)
    job = only(store, "first")
    assert store.fail_job(job.ref, error(1), retry_in=0.0) is JobState.RETRYABLE
    assert store.get_run("rt").state is RunState.RUNNING
    store.stage_jobs()
    again = only(store, "first")
    assert again.attempt == 2
    assert store.get_step_states("rt")["first"].attempts == 2


def test_prune_forgets_finished_runs_step_states(store: Any) -> None:
    start(store, over_input, "pr", [])
    assert store.get_step_states("pr") != {}
    store.prune_jobs(-1.0)
    assert store.get_run("pr") is None
    assert store.get_step_states("pr") == {}


def test_bad_input_or_workflow_id_writes_nothing(store: Any) -> None:
    with pytest.raises(pgflow.SerializationError):
        store.start_flow_run(chain.plan, workflow_id="bad-in", input={1j}, max_attempts=3)
    with pytest.raises(pgflow.DefinitionError):
        store.start_flow_run(chain.plan, workflow_id="x" * 65, input=1, max_attempts=3)
    assert store.get_run("bad-in") is None
    assert store.list_jobs() == [] and store.running_flows() == []


def test_a_map_output_over_the_size_limit_fails_the_step_and_run(store: Any) -> None:
    limit = store.max_payload_bytes
    start(store, over_input, "big", [0, 1])
    half = "x" * (limit // 2 + 16)  # each element fits; the list of both does not
    for job in claim_all(store, 2):
        assert finish(store, over_input.plan, job, half) == [job.id]
    run = store.get_run("big")
    assert run.state is RunState.FAILED and run.error["kind"] == "SerializationError"
    assert store.get_step_states("big")["double"].state is StepStatus.FAILED


def test_new_tasks_wake_their_queue_at_start_and_at_each_completion(store: Any) -> None:
    listener = store.listener()
    try:
        start(store, chain, "wake", 1)
        assert listener.wait(5.0) == {"default"}
        job = only(store, "first")
        assert listener.wait(0.0) == set()  # nothing new until the completion commits
        finish(store, chain.plan, job, 2)
        assert listener.wait(5.0) == {"default"}
    finally:
        listener.close()


def test_a_completed_task_naming_no_step_of_its_flow_fails_the_run(store: Any) -> None:
    start(store, chain, "forged", 1)
    only(store, "first")
    forged = pgflow.NewJob(
        worker=chain.plan.worker,
        args={"fingerprint": plan_fingerprint(chain.plan), "args": [1], "kwargs": {}},
        task=TaskKey("forged", "nope", 0),
    )
    store.insert_jobs([forged])
    (job,) = store.claim_jobs("default", "node-b", 1)
    assert finish(store, chain.plan, job, 5) == []
    run = store.get_run("forged")
    assert run.state is RunState.FAILED and run.error["step"] == "nope"
    assert "does not have" in run.error["message"]


def test_running_flow_runs_pages_one_definition_oldest_first(store: Any) -> None:
    for workflow_id in ("p1", "p2", "p3"):
        start(store, chain, workflow_id, 1)
    start(store, diamond, "other", 1)
    fingerprint = plan_fingerprint(chain.plan)
    assert store.running_flow_runs("contract_flow_chain", fingerprint, 2) == ["p1", "p2"]
    store.fail_run("p1", {"kind": "x", "message": "gone", "step": None})
    assert store.running_flow_runs("contract_flow_chain", fingerprint) == ["p2", "p3"]
    assert store.running_flow_runs("contract_flow_chain", "0" * 64) == []


def test_one_batch_settles_many_runs_and_both_branches_of_a_join(store: Any) -> None:
    for workflow_id in ("b1", "b2"):
        start(store, diamond, workflow_id, {"id": workflow_id})
    fetches = claim_all(store, 2)
    store.complete_tasks(
        [TaskCompletion(j.ref, j.task, dumps(j.task.workflow_id, what="output")) for j in fetches],
        {plan_fingerprint(diamond.plan): diamond.plan},
    )
    branches = claim_all(store, 4)  # left and right of both runs
    counted = store.complete_tasks(
        [TaskCompletion(j.ref, j.task, dumps(j.task.step, what="output")) for j in branches],
        {plan_fingerprint(diamond.plan): diamond.plan},
    )
    assert counted == sorted(j.id for j in branches)
    joins = claim_all(store, 2)  # exactly one join per run, made ready by the one batch
    assert sorted(j.task.workflow_id for j in joins) == ["b1", "b2"]
    assert all(j.args["kwargs"] == {"left": "left", "right": "right"} for j in joins)
    store.complete_tasks(
        [TaskCompletion(j.ref, j.task, dumps(j.task.workflow_id, what="output")) for j in joins],
        {plan_fingerprint(diamond.plan): diamond.plan},
    )
    assert store.get_run("b1").output == {"join": "b1"}
    assert store.get_run("b2").output == {"join": "b2"}


def test_one_batch_finishes_a_map_and_counts_a_repeated_element_once(store: Any) -> None:
    start(store, over_input, "mb", [1, 2, 3])
    elements = claim_all(store, 3)
    completions = [
        TaskCompletion(j.ref, j.task, dumps(j.task.index * 10, what="output")) for j in elements
    ]
    plans = {plan_fingerprint(over_input.plan): over_input.plan}
    assert store.complete_tasks(completions + completions[:1], plans) == sorted(
        j.id for j in elements
    )
    assert store.get_run("mb").output == {"double": [0, 10, 20]}
    assert store.get_step_states("mb")["double"].tasks_done == 3


def test_a_successor_claim_takes_the_next_task_in_the_completing_transaction(
    store: Any,
) -> None:
    from pgflow.records import SuccessorClaim

    store.register_instance(InstanceInfo(instance_id="node-a", incarnation="inc-1"))
    start(store, diamond, "sc", {"id": 1})
    fetch_job = only(store, "fetch")
    claim = SuccessorClaim(queue="default", instance_id="node-a", limit=1, incarnation="inc-1")
    counted = store.complete_tasks(
        [TaskCompletion(fetch_job.ref, fetch_job.task, dumps("text", what="output"))],
        {plan_fingerprint(diamond.plan): diamond.plan},
        claim=claim,
    )
    assert counted == [fetch_job.id]
    (taken,) = claim.claimed  # one of left/right, already executing here at attempt 1
    assert taken.task.step in {"left", "right"} and taken.state is JobState.EXECUTING
    assert taken.attempt == 1 and taken.reserved_by == "node-a"
    assert store.get_job(taken.id).state is JobState.EXECUTING
    (other,) = claim_all(store, 1)  # the other branch stayed available for anyone
    assert {taken.task.step, other.task.step} == {"left", "right"}
    # The claimed task completes like any claimed job (its fence is the claim's).
    finish(store, diamond.plan, taken, "x")
    finish(store, diamond.plan, other, "y")
    expected = {taken.task.step: "x", other.task.step: "y"}
    assert only(store, "join").args["kwargs"] == expected


def test_a_successor_claim_is_fenced_by_the_incarnation(store: Any) -> None:
    from pgflow.records import SuccessorClaim

    store.register_instance(InstanceInfo(instance_id="node-a", incarnation="new"))
    start(store, chain, "scf", 1)
    job = only(store, "first")
    claim = SuccessorClaim(queue="default", instance_id="node-a", limit=5, incarnation="old")
    store.complete_tasks(
        [TaskCompletion(job.ref, job.task, dumps(2, what="output"))],
        {plan_fingerprint(chain.plan): chain.plan},
        claim=claim,
    )
    assert claim.claimed == []  # displaced: nothing taken, the next task stays available
    assert only(store, "second").attempt == 1


# -- cancelling ------------------------------------------------------------------------------


def test_cancel_run_ends_the_run_cancelled_and_settles_every_task(store: Any) -> None:
    start(store, mapped, "cx1", None)
    finish(store, mapped.plan, only(store, "pages"), [1, 2, 3])
    running = store.claim_jobs("default", "node-a", 1)  # one element executing, two queued
    run = store.cancel_run("cx1")
    assert run.state is RunState.CANCELLED and run.finished_at is not None
    assert run.error["kind"] == "RunCancelled"
    assert set(states(store, "cx1").values()) == {StepStatus.COMPLETED, StepStatus.CANCELLED}
    assert states(store, "cx1")["score"] is StepStatus.CANCELLED
    (executing,) = running
    assert store.get_job(executing.id).cancel_requested
    tasks = [j for j in store.list_jobs() if j.task is not None and j.task.step == "score"]
    assert sorted(j.state.value for j in tasks) == ["cancelled", "cancelled", "executing"]
    # A late completion of the running element counts nothing and the run stays cancelled.
    assert finish(store, mapped.plan, executing, 9) == []
    assert store.get_run("cx1").state is RunState.CANCELLED
    assert store.running_flows() == []


def test_cancel_run_refuses_a_finished_run_naming_its_state(store: Any) -> None:
    start(store, over_input, "cx2", [])  # an empty map: completed at start
    with pytest.raises(pgflow.RunStateError, match=r"'cx2'.*is completed"):
        store.cancel_run("cx2")
    start(store, chain, "cx3", 1)
    store.cancel_run("cx3")
    with pytest.raises(pgflow.RunStateError, match=r"'cx3'.*is cancelled"):
        store.cancel_run("cx3")
    assert store.cancel_run("no-such-run") is None


def test_cancel_run_refuses_an_in_process_run(store: Any) -> None:
    store.start_run(workflow_id="ip1", workflow="inproc", input=1, max_attempts=1)
    with pytest.raises(pgflow.RunStateError, match="not started with start_run"):
        store.cancel_run("ip1")
    assert store.get_run("ip1").state is RunState.RUNNING


def _race_cancel_and_completion(store: Any, workflow_id: str, last: Job) -> dict[str, Any]:
    """Complete `last` and cancel its run from two threads released at once."""
    barrier = threading.Barrier(2)
    results: dict[str, Any] = {}

    def complete() -> None:
        barrier.wait(5)
        results["counted"] = finish(store, chain.plan, last, "done")

    def cancel() -> None:
        barrier.wait(5)
        try:
            results["cancelled"] = store.cancel_run(workflow_id)
        except pgflow.RunStateError as exc:
            results["refused"] = exc

    threads = [threading.Thread(target=complete), threading.Thread(target=cancel)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    return results


def test_cancel_racing_the_last_completion_one_wins_and_the_state_says_which(
    store: Any,
) -> None:
    for attempt in range(20):
        workflow_id = f"race-{attempt}"
        start(store, chain, workflow_id, 1)
        for step in ("first", "second"):
            finish(store, chain.plan, only(store, step), step)
        last = only(store, "third")
        results = _race_cancel_and_completion(store, workflow_id, last)
        run = store.get_run(workflow_id)
        if run.state is RunState.COMPLETED:  # the completion won: the cancel was refused
            assert results["counted"] == [last.id] and "refused" in results
            assert "is completed" in str(results["refused"]) and run.output == "done"
        else:  # the cancel won: the completion counted nothing
            assert run.state is RunState.CANCELLED and results["counted"] == []
            assert results["cancelled"].state is RunState.CANCELLED
            assert states(store, workflow_id)["third"] is StepStatus.CANCELLED
