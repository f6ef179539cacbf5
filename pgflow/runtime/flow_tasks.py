"""Running one task of a distributed flow run: a claimed job whose `task` is set.

The job names its definition (flow name in the worker column, fingerprint in its args);
only a definition registered in this process (`pgflow.graph.registry.flows`) is run, never
code a row names. The outcome carries a TaskCompletion, which the producer records with
`complete_tasks` so the store settles the step in the same transaction.

Handlerless steps have tasks too, which call no function: a sleep's task (scheduled at its
end) completes with its value, a wait's timeout task skips or fails the wait, and a
sub-flow's relay task (inserted when the child run ends) settles the step from the child.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import logging
import threading
from typing import TYPE_CHECKING, Any

import attrs

from pgflow.clock import SYSTEM_CLOCK, Clock
from pgflow.definition import Step, Workflow
from pgflow.errors import SerializationError
from pgflow.graph import ready
from pgflow.graph.registry import flows
from pgflow.graph.shape import SLEEP, SUBFLOW, TASK_WORKER_PREFIX, WAIT, FlowPlan, StepPlan
from pgflow.records import Job, JobError, RunRecord, RunState, TaskCompletion
from pgflow.runtime.execution import JobControl, Outcome, OutcomeKind, _Run, job_log_extra
from pgflow.serialization import DEFAULT_MAX_PAYLOAD_BYTES, dumps
from pgflow.stored_errors import clean_error
from pgflow.telemetry import hooks
from pgflow.worker import backoff_delay

if TYPE_CHECKING:
    from pgflow.backend import Backend

logger = logging.getLogger("pgflow.runtime")

#: How long a task of a definition this process does not know waits before another try.
UNKNOWN_DEFINITION_SNOOZE = 30.0
SKIPPED_BY_WHEN = "when returned false"
#: How long a relay task waits when its child run is, unexpectedly, still running.
RUNNING_CHILD_SNOOZE = 60.0
#: The `kind` of the error a sub-flow step fails with when its child run did not complete.
SUBFLOW_FAILED = "SubflowFailed"


class _StepTimedOut(TimeoutError):
    pass


def execute_task(
    job: Job,
    *,
    instance_id: str | None = None,
    backend: Backend | None = None,
    clock: Clock = SYSTEM_CLOCK,
    control: JobControl | None = None,
) -> Outcome:
    """Run the step `job` is a task of and return its outcome, writing nothing."""
    observer = hooks.OBSERVER
    if observer is None:
        return _execute_task(job, instance_id, backend, clock, control)
    scope = observer.job_started(job, instance_id)
    try:
        outcome = _execute_task(job, instance_id, backend, clock, control)
    except BaseException as exc:
        scope.finish(None, exc)
        raise
    scope.finish(outcome)
    return outcome


def _execute_task(
    job: Job,
    instance_id: str | None,
    backend: Backend | None,
    clock: Clock,
    control: JobControl | None,
) -> Outcome:
    assert job.task is not None
    control = control or JobControl()
    run = _Run(job, instance_id, clock, control)
    name = job.worker.removeprefix(TASK_WORKER_PREFIX)
    fingerprint = job.args.get("fingerprint") if isinstance(job.args, dict) else None
    try:
        workflow = flows.find(name, str(fingerprint))
    except Exception as exc:  # a broken definition: fails like a step raising
        return run.failed(exc, None, honour_cancel=False)
    if workflow is None:
        logger.warning(
            "job %s: flow %r with definition %s is not known in this process; snoozed %gs "
            "(import the module that defines it)",
            job.id,
            name,
            fingerprint,
            UNKNOWN_DEFINITION_SNOOZE,
            extra=job_log_extra(job, instance_id, flow=name, fingerprint=fingerprint),
        )
        return Outcome(job, OutcomeKind.SNOOZED, snooze=UNKNOWN_DEFINITION_SNOOZE)
    try:
        step = _step(workflow, job.task.step)
        args, kwargs = _arguments(job)
    except (LookupError, TypeError) as exc:  # a row that no retry can mend
        return attrs.evolve(
            run.failed(exc, None, honour_cancel=False), kind=OutcomeKind.DISCARDED, retry_in=None
        )
    limit = getattr(backend, "max_payload_bytes", DEFAULT_MAX_PAYLOAD_BYTES)
    if step.handlerless:
        return _handlerless(job, workflow, run, backend, args, limit, instance_id)
    try:
        if step.when is not None and not step.is_map and not _call_when(step, args, kwargs):
            completion = TaskCompletion(job.ref, job.task, None, skipped=SKIPPED_BY_WHEN)
            return Outcome(job, OutcomeKind.COMPLETED, completion=completion, plan=workflow.plan)
        value = _call(step, args, kwargs, control)
        output = dumps(value, what="output", limit=limit, owner=f"flow {name!r} step {step.name!r}")
    except asyncio.CancelledError as exc:  # an async step stopped by a cancel request
        if control.cancelled.is_set():
            return run.failed(exc, None)  # cancelled (or retried at once on shutdown)
        return _failed(run, exc, step)
    except Exception as exc:
        return _failed(run, exc, step)
    completion = TaskCompletion(job.ref, job.task, output)
    return Outcome(
        job, OutcomeKind.COMPLETED, value=value, completion=completion, plan=workflow.plan
    )


def _arguments(job: Job) -> tuple[list[Any], dict[str, Any]]:
    """The call's arguments from the task envelope; TypeError naming the job when the row
    holds something else (a hand-edited or foreign row must not reach the step)."""
    args = job.args.get("args", [])
    kwargs = job.args.get("kwargs", {})
    if not isinstance(args, list) or len(args) > 1:
        raise TypeError(f"task job {job.id}: args must be a list of at most one value")
    if not isinstance(kwargs, dict) or not all(isinstance(key, str) for key in kwargs):
        raise TypeError(f"task job {job.id}: kwargs must be an object of named values")
    return list(args), dict(kwargs)


def _step(workflow: Workflow, name: str) -> Step:
    for step in workflow.steps:
        if step.name == name:
            return step
    raise LookupError(f"flow {workflow.name!r} has no step {name!r}")


def _failed(run: _Run, exc: BaseException, step: Step) -> Outcome:
    """A failed attempt: retried with the step's backoff, discarded when it cannot help."""
    outcome = run.failed(exc, None, honour_cancel=False)
    if outcome.kind is not OutcomeKind.RETRY:
        return outcome
    if isinstance(exc, SerializationError):
        return attrs.evolve(outcome, kind=OutcomeKind.DISCARDED, retry_in=None)
    if step.backoff is not None:
        return attrs.evolve(outcome, retry_in=backoff_delay(step.backoff, run.job.attempt))
    return outcome


def _call_when(step: Step, args: list[Any], kwargs: dict[str, Any]) -> bool:
    """Call `when` with the arguments it declares, as the in-process engine does."""
    assert step.when is not None
    signature = step.when_signature
    if signature is None or not signature.known:
        return bool(step.when(*args, **kwargs))
    available = dict(kwargs)
    first = step.signature.first
    if args and first is not None:
        available[first] = args[0]
    if signature.var_keyword:
        return bool(step.when(**available))
    return bool(step.when(**{k: v for k, v in available.items() if k in signature.names}))


def _call(step: Step, args: list[Any], kwargs: dict[str, Any], control: JobControl) -> Any:
    """Call the step function, bounded by its timeout (its thread is then abandoned)."""

    def call() -> Any:
        value = step.fn(*args, **kwargs)
        if inspect.isawaitable(value):
            return asyncio.run(_await(value, control))
        return value

    if step.timeout is None:
        return call()
    box: list[tuple[bool, Any]] = []

    def attempt() -> None:
        try:
            box.append((True, call()))
        except BaseException as exc:
            box.append((False, exc))
        finally:
            control.thread_ended()

    # In this context: the task's trace span stays the parent of what the step does.
    thread = threading.Thread(
        target=contextvars.copy_context().run,
        args=(attempt,),
        name=f"pgflow-step-{step.name}",
        daemon=True,
    )
    thread.start()
    thread.join(step.timeout)
    if not box:
        control.abandon_thread(f"step {step.name!r}", None)
        control.cancel()
        raise _StepTimedOut(f"step {step.name!r} timed out after {step.timeout:g}s")
    ok, value = box[0]
    if not ok:
        raise value
    return value


async def _await(value: Any, control: JobControl) -> Any:
    """Await an async step; a cancel request (cancel_run, a failed sibling, shutdown)
    cancels it where it awaits. A sync step cannot be stopped: it runs to its end, and
    its completion then counts nothing."""
    task = asyncio.ensure_future(value)
    loop = asyncio.get_running_loop()

    def cancel() -> None:
        with contextlib.suppress(RuntimeError):  # the loop has ended: the step finished first
            loop.call_soon_threadsafe(task.cancel)

    control.on_cancel(cancel)
    return await task


def _handlerless(
    job: Job,
    workflow: Workflow,
    run: _Run,
    backend: Backend | None,
    args: list[Any],
    limit: int | None,
    instance_id: str | None,
) -> Outcome:
    """The task of a wait, sleep or sub-flow step: no step function is called."""
    assert job.task is not None
    plan = workflow.plan
    step = plan.step(job.task.step)
    owner = f"flow {workflow.name!r} step {step.name!r}"
    if step.kind == SLEEP:  # its time has come: it passes its value on
        try:
            output = dumps(args[0] if args else None, what="output", limit=limit, owner=owner)
        except SerializationError as exc:
            return attrs.evolve(
                run.failed(exc, None, honour_cancel=False),
                kind=OutcomeKind.DISCARDED,
                retry_in=None,
            )
        return _completed(job, output, plan)
    if step.kind == WAIT:
        return _wait_timed_out(job, step, workflow, run, instance_id)
    if step.kind == SUBFLOW:
        return _relay(job, step, workflow, run, backend, limit, instance_id)
    raise AssertionError(f"{owner}: unexpected handlerless kind {step.kind!r}")


def _completed(
    job: Job, output: str | None, plan: FlowPlan, *, skipped: str | None = None
) -> Outcome:
    assert job.task is not None
    completion = TaskCompletion(job.ref, job.task, output, skipped=skipped)
    return Outcome(job, OutcomeKind.COMPLETED, completion=completion, plan=plan)


def _discarded(job: Job, run: _Run, error: dict[str, Any]) -> Outcome:
    """Discarded at once, no retry: the store's job_ended path then fails the step and
    its run with this error (kind and message as given, plus the attempt's bookkeeping)."""
    stored = clean_error(
        {
            **JobError(
                attempt=job.attempt,
                at=run.clock.now(),
                kind=str(error.get("kind", "error")),
                message=str(error.get("message", "")),
                traceback=str(error.get("traceback", "")),
                instance_id=run.instance_id,
            ).to_dict(),
            "step": error.get("step"),
        }
    )
    return Outcome(job, OutcomeKind.DISCARDED, error=stored, retry_in=None)


def _wait_timed_out(
    job: Job, step: StepPlan, workflow: Workflow, run: _Run, instance_id: str | None
) -> Outcome:
    """A wait's timeout task ran (a signal would have cancelled it): skip or fail the wait.
    The store settles the step only while it waits, so a signal that won counts alone."""
    extra = job_log_extra(job, instance_id, workflow=workflow.name, step=step.name)
    if job.task is not None:
        extra["workflow_id"] = job.task.workflow_id
    if step.on_timeout == "skip":
        logger.info(
            "wait step %r received no signal within %gs: skipped",
            step.name,
            step.wait_timeout or 0,
            extra=extra,
        )
        reason = f"no signal within {step.wait_timeout or 0:g}s"
        return _completed(job, None, workflow.plan, skipped=reason)
    logger.info(
        "wait step %r received no signal within %gs: failed",
        step.name,
        step.wait_timeout or 0,
        extra=extra,
    )
    return _discarded(job, run, ready.wait_timed_out(step))


def _relay(
    job: Job,
    step: StepPlan,
    workflow: Workflow,
    run: _Run,
    backend: Backend | None,
    limit: int | None,
    instance_id: str | None,
) -> Outcome:
    """A sub-flow's child run ended: complete the step with its result, or fail the step
    (no retry: the child's own steps had theirs) naming the child and its error."""
    assert job.task is not None
    child_id = job.args.get("child")
    extra = job_log_extra(
        job,
        instance_id,
        workflow=workflow.name,
        workflow_id=job.task.workflow_id,
        step=step.name,
        child_id=child_id,
    )
    if not isinstance(child_id, str):
        return _discarded(
            job,
            run,
            _subflow_error(step, f"task job {job.id} names no child run (args {job.args!r})"),
        )
    if backend is None:  # only the runtime calls this, always with its backend
        return run.failed(RuntimeError("a relay task needs the backend"), None)
    child = backend.get_run(child_id)
    if child is None:
        logger.warning(
            "sub-flow step %r: child run %s is not stored", step.name, child_id, extra=extra
        )
        return _discarded(
            job, run, _subflow_error(step, f"child run {child_id} is not stored (pruned?)")
        )
    if child.state is RunState.RUNNING:
        logger.warning(
            "sub-flow step %r: child run %s is still running; relay snoozed %gs",
            step.name,
            child_id,
            RUNNING_CHILD_SNOOZE,
            extra=extra,
        )
        return Outcome(job, OutcomeKind.SNOOZED, snooze=RUNNING_CHILD_SNOOZE)
    if child.state is RunState.COMPLETED:
        owner = f"flow {workflow.name!r} step {step.name!r}"
        try:
            output = dumps(child.output, what="output", limit=limit, owner=owner)
        except SerializationError as exc:
            return _discarded(job, run, _subflow_error(step, str(exc)))
        return _completed(job, output, workflow.plan)
    return _discarded(job, run, _subflow_error(step, _child_failure(child)))


def _child_failure(child: RunRecord) -> str:
    """`child run ID of flow 'F' <state>: <its error message>`."""
    error = child.error if isinstance(child.error, dict) else {}
    message = str(error.get("message") or "no error recorded")
    return (
        f"child run {child.workflow_id} of flow {child.workflow!r} {child.state.value}: {message}"
    )


def _subflow_error(step: StepPlan, why: str) -> dict[str, Any]:
    return {
        "kind": SUBFLOW_FAILED,
        "message": f"sub-flow step {step.name!r} failed: {why}",
        "step": step.name,
        "traceback": "",
    }
