"""What happens to a step once its dependencies have settled, and what a run returns: pure
functions of the plan and the stored outputs, applied inside each backend's transaction so
memory, SQLite and PostgreSQL settle runs by the same rules.

A task's job args are an envelope, `{"fingerprint", "args", "kwargs"}`: `args` holds at most
one positional value (a chain step's input, a root's run input, a map's element) and
`kwargs` the dependencies' outputs by name (and `input` when the step declares it).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import attrs

from pgflow.errors import DefinitionError, RunStateError, SignalError
from pgflow.graph.shape import SLEEP, SUBFLOW, WAIT, FlowPlan, StepPlan, task_worker_name
from pgflow.graph.signature import INPUT
from pgflow.records import NewJob, RunRecord, RunState, StepStatus, TaskCompletion, TaskKey
from pgflow.telemetry import hooks


@attrs.frozen
class Settled:
    """A finished dependency as a dependent sees it: completed with an output, or skipped."""

    state: StepStatus
    output: Any = None


@attrs.frozen
class Start:
    """Create one task per entry of `arguments` (index order): the step becomes started
    with tasks_total = len(arguments) (always > 0). `at` (a sleep's end) schedules them."""

    arguments: tuple[dict[str, Any], ...]
    at: datetime | None = None


@attrs.frozen
class Wait:
    """A wait_for step became ready: complete it at once with a signal already stored for
    it; otherwise it becomes started (tasks_total 1, nothing running) and, with a timeout,
    gets its timeout task (`timeout_jobs`), which a signal cancels."""

    envelope: dict[str, Any]


@attrs.frozen
class StartChild:
    """A sub-flow step became ready: start a run of `step.child` on `input` in the same
    transaction (`parent_id`, `parent_step`, `parent_queue` set); the step becomes started
    (tasks_total 1) until the child's end inserts its relay task (`relay_job`)."""

    input: Any


@attrs.frozen
class Complete:
    """The step completes at once, with no task (a map over an empty list gives [])."""

    output: Any


@attrs.frozen
class Skip:
    """The step is skipped; `reason` is stored as its skip_reason."""

    reason: str


@attrs.frozen
class Fail:
    """The step fails at once, without retries, and with it the run (`error` as stored)."""

    error: dict[str, Any]


Decision = Start | Complete | Skip | Fail | Wait | StartChild

#: A sub-flow's relay task retries only if its worker dies (it only reads the child run).
RELAY_ATTEMPTS = 3


def decide(plan: FlowPlan, step: StepPlan, deps: Mapping[str, Settled], run_input: Any) -> Decision:
    """What `step` becomes now that every dependency in `deps` (all of `step.deps`) has
    settled, completed or skipped. A step whose dependencies failed is never asked: the
    failure already ended the run."""
    skipped = [name for name in step.deps if deps[name].state is StepStatus.SKIPPED]
    if step.handlerless:
        return _decide_handlerless(plan, step, deps, run_input, skipped)
    if step.is_map:
        if skipped:
            return Skip(f"skipped because the step it maps over, {skipped[0]!r}, was skipped")
        source = run_input if step.over is None else deps[step.over].output
        if not isinstance(source, list):
            where = "the run's input" if step.over is None else f"step {step.over!r}'s output"
            return Fail(
                {
                    "kind": "TypeError",
                    "message": (
                        f"map step {step.name!r} of flow {plan.flow!r} maps over {where}, "
                        f"which must be a list, got {type(source).__name__}"
                    ),
                    "step": step.name,
                    "traceback": "",
                }
            )
        if not source:
            return Complete([])
        extra = {INPUT: run_input} if step.takes_input else {}
        return Start(tuple(envelope(plan, [element], extra) for element in source))
    needed = [name for name in skipped if name not in step.defaults]
    if needed and step.keyword_deps:
        return Skip(
            f"skipped because dependency {needed[0]!r} was skipped and parameter "
            f"{needed[0]!r} has no default"
        )
    if not step.deps:
        return Start((envelope(plan, [run_input], {}),))
    if not step.keyword_deps:  # a chain step: the previous output, positionally
        return Start((envelope(plan, [deps[step.deps[0]].output], {}),))
    kwargs = {
        name: deps[name].output for name in step.deps if deps[name].state is StepStatus.COMPLETED
    }
    if step.takes_input:
        kwargs[INPUT] = run_input
    return Start((envelope(plan, [], kwargs),))


def handlerless_value(step: StepPlan, deps: Mapping[str, Settled], run_input: Any) -> Any:
    """What a wait, sleep or sub-flow takes as its value: the run's input (no dependency),
    its one dependency's output, or a dict of its dependencies' outputs by name."""
    if not step.deps:
        return run_input
    if len(step.deps) == 1:
        return deps[step.deps[0]].output
    return {name: deps[name].output for name in step.deps}


def _decide_handlerless(
    plan: FlowPlan,
    step: StepPlan,
    deps: Mapping[str, Settled],
    run_input: Any,
    skipped: list[str],
) -> Decision:
    if skipped:
        return Skip(f"skipped because dependency {skipped[0]!r} was skipped")
    value = handlerless_value(step, deps, run_input)
    if step.kind == WAIT:
        return Wait(envelope(plan, [value], {}))
    if step.kind == SUBFLOW:
        return StartChild(value)
    if step.until is None:
        return Start((envelope(plan, [value], {}),))
    try:
        at = _call_until(step, deps, run_input)
    except Exception as exc:  # user code: the step fails, like a step raising
        return Fail(
            {
                "kind": type(exc).__name__,
                "message": f"sleep step {step.name!r}: until raised: {exc}",
                "step": step.name,
                "traceback": "",
            }
        )
    return Start((envelope(plan, [value], {}),), at=at)


def _call_until(step: StepPlan, deps: Mapping[str, Settled], run_input: Any) -> datetime:
    """Call a sleep's `until` like `when`: the run's input positionally for a root, else
    the dependencies' outputs (and `input`) by the names it declares."""
    from pgflow.graph.signature import read_signature

    assert step.until is not None
    if not step.deps:
        at = step.until(run_input)
    else:
        available = {name: deps[name].output for name in step.deps}
        available[INPUT] = run_input
        signature = read_signature(step.until)
        if signature.known and not signature.var_keyword:
            available = {k: v for k, v in available.items() if k in signature.names}
        at = step.until(**available)
    if not isinstance(at, datetime):
        raise TypeError(f"until must return a datetime, got {type(at).__name__}")
    if at.tzinfo is None:
        raise ValueError(f"until must return an aware datetime, got naive {at!r}")
    return at.astimezone(UTC)


def timeout_jobs(
    plan: FlowPlan, step: StepPlan, workflow_id: str, wait: Wait, *, priority: int = 0
) -> list[NewJob]:
    """A waiting step's timeout task (none without a timeout), due when the timeout passes;
    the worker that runs it fails (discarding it, no retry) or skips the step."""
    if step.wait_timeout is None:
        return []
    return [
        NewJob(
            worker=plan.worker,
            args=wait.envelope,
            queue=step.queue or plan.queue,
            priority=priority,
            # The timeout itself never retries (its task fails or skips the step at once);
            # attempts only let a rescue re-run it after its worker died.
            max_attempts=RELAY_ATTEMPTS,
            schedule_in=step.wait_timeout,
            task=TaskKey(workflow_id, step.name, 0),
        )
    ]


def relay_job(
    *,
    parent_id: str,
    parent_step: str,
    parent_flow: str,
    parent_fingerprint: str,
    parent_queue: str,
    child_id: str,
) -> NewJob:
    """The task that settles a sub-flow step once its child run ended: a worker serving the
    parent flow reads the child and completes the step with its result (or fails it)."""
    return NewJob(
        worker=task_worker_name(parent_flow),
        args={"fingerprint": parent_fingerprint, "args": [], "kwargs": {}, "child": child_id},
        queue=parent_queue,
        max_attempts=RELAY_ATTEMPTS,
        task=TaskKey(parent_id, parent_step, 0),
    )


def check_signal(
    plan: FlowPlan | None,
    workflow_id: str,
    step: str,
    *,
    flow: str | None,
    state: RunState | str | None,
) -> StepPlan:
    """The wait step `step` of run `workflow_id` (of flow `flow`, in `state`; both None for
    an unknown run), or SignalError naming the run and the step: unknown run, not a
    distributed run (`plan` None), no such step, not a wait, or a run no longer running."""
    if flow is None or state is None:
        raise SignalError(f"signal {step!r}: run {workflow_id!r} is not stored")
    if plan is None:
        raise SignalError(
            f"signal {step!r}: run {workflow_id!r} of {flow!r} was not started with "
            "start_run; only distributed runs take signals"
        )
    if not plan.has_step(step):
        waits = sorted(s.name for s in plan.steps if s.kind == WAIT)
        raise SignalError(
            f"signal {step!r}: flow {plan.flow!r} of run {workflow_id!r} has no step {step!r} "
            f"(its wait_for steps: {', '.join(waits) or 'none'})"
        )
    wait = plan.step(step)
    if wait.kind != WAIT:
        raise SignalError(
            f"signal {step!r}: step {step!r} of run {workflow_id!r} is a {wait.kind} step, "
            "not a wait_for step"
        )
    if RunState(state) is not RunState.RUNNING:
        raise SignalError(
            f"signal {step!r}: run {workflow_id!r} of flow {flow!r} is "
            f"{RunState(state).value}; only a running run takes signals"
        )
    return wait


def refused_signal(workflow_id: str, step: str, status: StepStatus, reason: str | None) -> str:
    """Why a signal to a wait that no longer waits is refused (SignalError's message)."""
    if status is StepStatus.COMPLETED:
        return (
            f"signal {step!r}: step {step!r} of run {workflow_id!r} was already signalled "
            "(a wait keeps its first signal)"
        )
    how = {
        StepStatus.SKIPPED: f"was skipped ({reason})" if reason else "was skipped",
        StepStatus.FAILED: "failed (its timeout passed)",
        StepStatus.CANCELLED: "was cancelled",
    }.get(status, f"is {status.value}")
    return f"signal {step!r}: step {step!r} of run {workflow_id!r} {how}; nothing was delivered"


def wait_timed_out(step: StepPlan) -> dict[str, Any]:
    """The error a wait's timeout fails its step with (on_timeout="fail")."""
    return {
        "kind": "WaitTimedOut",
        "message": (f"step {step.name!r} received no signal within {step.wait_timeout or 0:g}s"),
        "step": step.name,
        "traceback": "",
    }


def check_deadline(owner: str, deadline: object) -> float:
    """A run's deadline: a finite number of seconds > 0 (DefinitionError naming `owner`,
    e.g. "start_run" or the run, otherwise)."""
    if (
        isinstance(deadline, bool)
        or not isinstance(deadline, (int, float))
        or not math.isfinite(deadline)
        or deadline <= 0
    ):
        raise DefinitionError(
            f"{owner}: deadline must be a positive number of seconds, got {deadline!r}"
        )
    return float(deadline)


def deadline_error(run: RunRecord) -> dict[str, Any]:
    """What a run past its deadline stores as its error (RunHandle raises DeadlineExceeded)."""
    return {
        "kind": "DeadlineExceeded",
        "message": f"run {run.workflow_id!r} of flow {run.workflow!r} passed its deadline",
        "step": None,
        "traceback": "",
    }


def restart_steps(plan: FlowPlan, from_step: str | None, new_input: bool) -> frozenset[str]:
    """The steps a restart runs again: `from_step` and everything downstream of it; with a
    new input, also the steps that read the input (roots, root maps, `input` parameters)
    and everything downstream of them; with neither, every step."""
    if from_step is None and not new_input:
        return frozenset(step.name for step in plan.steps)
    seeds: set[str] = set()
    if from_step is not None:
        if not plan.has_step(from_step):
            names = ", ".join(step.name for step in plan.steps)
            raise DefinitionError(
                f"restart_run: flow {plan.flow!r} has no step {from_step!r} (steps: {names})"
            )
        seeds.add(from_step)
    if new_input:
        seeds |= {step.name for step in plan.steps if _reads_input(step)}
    rerun: set[str] = set()
    for step in plan.steps:  # topological order: a dependency is seen before its dependents
        if step.name in seeds or any(dep in rerun for dep in step.deps):
            rerun.add(step.name)
    return frozenset(rerun)


def _reads_input(step: StepPlan) -> bool:
    return not step.deps or step.takes_input or (step.is_map and step.over is None)


def envelope(plan: FlowPlan, args: list[Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    """A task job's args: the definition it was made for, and what to call the step with."""
    return {"fingerprint": plan_fingerprint(plan), "args": args, "kwargs": kwargs}


def plan_fingerprint(plan: FlowPlan) -> str:
    from pgflow.definition import definition_fingerprint

    cached = _FINGERPRINTS.get(id(plan))
    if cached is not None and cached[0] is plan:
        return cached[1]
    fingerprint = definition_fingerprint(plan.definition)
    _FINGERPRINTS[id(plan)] = (plan, fingerprint)
    return fingerprint


# Plans are few and long-lived (one per definition); fingerprints are cached by identity.
_FINGERPRINTS: dict[int, tuple[FlowPlan, str]] = {}


def task_jobs(
    plan: FlowPlan,
    step: StepPlan,
    workflow_id: str,
    arguments: Sequence[dict[str, Any]],
    *,
    max_attempts: int,
    priority: int = 0,
    at: datetime | None = None,
) -> list[NewJob]:
    """The jobs of a started step, one per task in index order: on the step's queue (else
    the flow's), with its own max_attempts (else the run's) and its start_delay."""
    queue = step.queue or plan.queue
    attempts = step.max_attempts or max_attempts
    delay = step.start_delay or None
    if step.kind == SLEEP and at is None:
        delay = step.sleep_seconds or None
    worker = plan.worker
    # With tracing on, every task carries its run's trace context (pgflow.telemetry).
    meta = hooks.task_meta(workflow_id) if hooks.OBSERVER is not None else None
    return [
        NewJob(
            worker=worker,
            args=args,
            queue=queue,
            priority=priority,
            max_attempts=attempts,
            schedule_in=None if at is not None else delay,
            scheduled_at=at,
            task=TaskKey(workflow_id, step.name, index),
            meta=dict(meta) if meta else {},
        )
        for index, args in enumerate(arguments)
    ]


def unknown_step_error(plan: FlowPlan, completion: TaskCompletion) -> dict[str, Any]:
    """The run error for a completed task job naming a step its run's flow does not have
    (a job written by hand): the run fails rather than waiting for a step that never ends."""
    task = completion.task
    return {
        "kind": "DefinitionError",
        "message": (
            f"task job {completion.ref.id} of run {task.workflow_id!r} names step "
            f"{task.step!r}, which flow {plan.flow!r} does not have"
        ),
        "step": task.step,
        "traceback": "",
    }


def check_cancellable(run: RunRecord, *, is_flow: bool) -> None:
    """RunStateError unless `run` is a running distributed run (what cancel_run ends)."""
    if not is_flow:
        raise RunStateError(
            f"run {run.workflow_id!r} of {run.workflow!r} was not started with start_run; "
            "only distributed runs can be cancelled"
        )
    if run.state is not RunState.RUNNING:
        raise RunStateError(
            f"run {run.workflow_id!r} of flow {run.workflow!r} is {run.state.value}; "
            "only a running run can be cancelled"
        )


def cancelled_error(run: RunRecord) -> dict[str, Any]:
    """What a cancelled run stores as its error (read back by RunHandle as RunCancelled)."""
    return {
        "kind": "RunCancelled",
        "message": f"run {run.workflow_id!r} of flow {run.workflow!r} was cancelled",
        "step": None,
        "traceback": "",
    }


def run_output(plan: FlowPlan, outputs: Mapping[str, Settled]) -> Any:
    """A finished run's result: a chain's last output, or a graph's leaf outputs by name
    (a skipped leaf left out). `outputs` holds at least every leaf."""
    if not plan.is_graph:
        return outputs[plan.leaves[0]].output
    return {
        leaf: outputs[leaf].output
        for leaf in plan.leaves
        if outputs[leaf].state is StepStatus.COMPLETED
    }
