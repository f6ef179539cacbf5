"""The graph-run half of `pgflow.testing`: running one task job, and describing a run's steps.

A task job runs exactly as a worker runs it (`pgflow.runtime.flow_tasks.execute_task`, then
`record_outcomes`, whose completions go to `complete_tasks` so the store settles the step and
enqueues its dependents). One difference, as for jobs of an unknown worker: a task of a flow
this process does not know fails at once instead of snoozing, since no deploy will bring it.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attrs

from pgflow.clock import Clock
from pgflow.errors import DefinitionError
from pgflow.graph.registry import flows
from pgflow.graph.shape import TASK_WORKER_PREFIX
from pgflow.records import Job, RunRecord, StepState
from pgflow.runtime.execution import (
    JobControl,
    Outcome,
    OutcomeKind,
    _Run,
    record_outcomes,
)
from pgflow.runtime.flow_tasks import execute_task

if TYPE_CHECKING:
    from pgflow.backend import Backend

__all__ = ["describe_run", "describe_task", "run_task", "step_matches"]

#: Marks an `assert_step` filter that was not given (None is a valid output to expect).
UNSET: Any = object()


def run_task(backend: Backend, job: Job, instance_id: str, clock: Clock) -> Outcome:
    """Run one claimed task job in this thread and record its outcome, as a worker would."""
    unknown = _unknown_definition(job)
    if unknown is not None:
        outcome = attrs.evolve(
            _Run(job, instance_id, clock, JobControl()).failed(unknown, None, honour_cancel=False),
            kind=OutcomeKind.DISCARDED,
            retry_in=None,
        )
    else:
        outcome = _off_the_loop(
            lambda: execute_task(job, instance_id=instance_id, backend=backend, clock=clock)
        )
    return record_outcomes(backend, [outcome], instance_id=instance_id)[0]


def _off_the_loop(call: Callable[[], Outcome]) -> Outcome:
    """`call()` here, or on a helper thread when this thread runs an event loop (`drain`
    called from an async test): an async step is run with asyncio.run, which needs none."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        in_loop = False  # called below, not here: a step's traceback would chain this error
    else:
        in_loop = True
    if not in_loop:
        return call()
    results: list[Outcome] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            results.append(call())
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target, name="pgflow-testing-task", daemon=True)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return results[0]


def _unknown_definition(job: Job) -> DefinitionError | None:
    """The error for a task whose flow definition is not registered here, else None.

    A definition that fails to build is left to `execute_task`, which fails the attempt.
    """
    name = job.worker.removeprefix(TASK_WORKER_PREFIX)
    fingerprint = job.args.get("fingerprint") if isinstance(job.args, dict) else None
    try:
        known = flows.find(name, str(fingerprint))
    except Exception:
        return None
    if known is not None:
        return None
    return DefinitionError(
        f"task job {job.id}: flow {name!r} with definition {fingerprint} is not known in this "
        "process; import the module that defines it (a worker would snooze the task, "
        "pgflow.testing fails it so that the mistake shows)"
    )


def step_matches(
    step: StepState,
    state: str | None,
    attempts: int | None,
    output: Any,
    tasks_done: int | None,
    *,
    kind: str | None = None,
    child_id: str | None = UNSET,
) -> bool:
    """True when `step` has every attribute that was given (`output` and `child_id`
    unless UNSET)."""
    if state is not None and step.state != state:
        return False
    if kind is not None and step.kind != kind:
        return False
    if child_id is not UNSET and step.child_id != child_id:
        return False
    if attempts is not None and step.attempts != attempts:
        return False
    if tasks_done is not None and step.tasks_done != tasks_done:
        return False
    return output is UNSET or step.output == output


def describe_run(run: RunRecord) -> str:
    """The run and each of its steps on one line, for an assertion's message."""
    lines = [f"Run {run.workflow_id!r} of flow {run.workflow!r} is {run.state.value}; steps:"]
    for step in run.steps.values():
        lines.append(f"  {describe_step(step)}")
    return "\n".join(lines)


def describe_step(step: StepState) -> str:
    parts = [f"{step.step}: {step.state.value}", f"attempts={step.attempts}"]
    if step.kind != "step":
        parts.append(f"kind={step.kind}")
    if step.child_id is not None:
        parts.append(f"child={step.child_id}")
    if step.tasks_total is not None:
        parts.append(f"tasks={step.tasks_done}/{step.tasks_total}")
    if step.skip_reason is not None:
        parts.append(f"skipped ({step.skip_reason})")
    if step.output is not None:
        parts.append(f"output={step.output!r}")
    if step.error is not None:
        parts.append(f"error={step.error!r}")
    return " ".join(parts)


def describe_task(job: Job) -> str:
    """What a task job is a task of, for job listings (empty for other jobs)."""
    if job.task is None:
        return ""
    return f" task={job.task.workflow_id}/{job.task.step}[{job.task.index}]"
