"""What happens to a step once its dependencies have settled, and what a run returns: pure
functions of the plan and the stored outputs, applied inside each backend's transaction so
memory, SQLite and PostgreSQL settle runs by the same rules.

A task's job args are an envelope, `{"fingerprint", "args", "kwargs"}`: `args` holds at most
one positional value (a chain step's input, a root's run input, a map's element) and
`kwargs` the dependencies' outputs by name (and `input` when the step declares it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from pgflow.errors import RunStateError
from pgflow.graph.shape import FlowPlan, StepPlan
from pgflow.graph.signature import INPUT
from pgflow.records import NewJob, RunRecord, RunState, StepStatus, TaskCompletion, TaskKey


@attrs.frozen
class Settled:
    """A finished dependency as a dependent sees it: completed with an output, or skipped."""

    state: StepStatus
    output: Any = None


@attrs.frozen
class Start:
    """Create one task per entry of `arguments` (index order): the step becomes started
    with tasks_total = len(arguments) (always > 0)."""

    arguments: tuple[dict[str, Any], ...]


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


Decision = Start | Complete | Skip | Fail


def decide(plan: FlowPlan, step: StepPlan, deps: Mapping[str, Settled], run_input: Any) -> Decision:
    """What `step` becomes now that every dependency in `deps` (all of `step.deps`) has
    settled, completed or skipped. A step whose dependencies failed is never asked: the
    failure already ended the run."""
    skipped = [name for name in step.deps if deps[name].state is StepStatus.SKIPPED]
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
) -> list[NewJob]:
    """The jobs of a started step, one per task in index order: on the step's queue (else
    the flow's), with its own max_attempts (else the run's) and its start_delay."""
    queue = step.queue or plan.queue
    attempts = step.max_attempts or max_attempts
    delay = step.start_delay or None
    worker = plan.worker
    return [
        NewJob(
            worker=worker,
            args=args,
            queue=queue,
            priority=priority,
            max_attempts=attempts,
            schedule_in=delay,
            task=TaskKey(workflow_id, step.name, index),
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
