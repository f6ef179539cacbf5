"""One run of a workflow: its attempts, the backoff between them, and what gets recorded.

A retry resumes where the failed attempt stopped: completed steps are checkpoints and are
not run again; the failed step runs again with the output of the step before it. With a
RunStore, the same holds across processes: a run found in the store (same workflow_id)
continues after its last completed step, at the next attempt number.

Fencing: every attempt after the first is started with a compare-and-set on the stored
attempt (`RunStore.start_attempt`), so at most one caller runs a given attempt. A completed
run is final (its stored output is returned, nothing runs). A run that another caller
created or is executing is followed, not joined: this caller polls the store until it ends
(and returns its output or raises its error), for at most one attempt's `timeout`; a run
still running after that is presumed abandoned (its process died) and taken over. A run
resumed under another definition or another input is refused (DefinitionError, WorkflowError).
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Mapping
from typing import Any, NoReturn

from pgflow.backend import RunStore
from pgflow.backoff_policy import Backoff
from pgflow.clock import Clock
from pgflow.definition import Workflow, describe_change
from pgflow.engine.attempt import Attempt, error_dict
from pgflow.engine.loop import LOOP
from pgflow.errors import (
    DefinitionError,
    Discard,
    MaxAttemptsExceeded,
    SerializationError,
    StepFailed,
    StepTimedOut,
    WorkflowError,
)
from pgflow.records import RunRecord, RunState, StepOutcome
from pgflow.run_log import RunLog
from pgflow.serialization import roundtrip
from pgflow.stored_errors import clean_error
from pgflow.telemetry import hooks

_monotonic = time.monotonic
#: How often a caller following another caller's run polls the store (first, then at most).
_FOLLOW_FIRST_POLL = 0.05
_FOLLOW_MAX_POLL = 1.0


class RetryDeferred(Exception):
    """Raised instead of sleeping when retries are deferred: the failed step has attempts
    left and should run again after `delay` seconds (a workflow job snoozes for it)."""

    def __init__(self, error: WorkflowError, delay: float) -> None:
        super().__init__(f"{error}; retry in {delay:g}s")
        self.error = error
        self.delay = delay


class Run:
    """Executes one workflow run to completion or final failure (see module docstring)."""

    __slots__ = (
        "_given_id",
        "_workflow_id",
        "backoff",
        "clock",
        "defer_retries",
        "input",
        "inside_loop",
        "job_id",
        "log",
        "max_attempts",
        "soonest_timeout_from",
        "store",
        "timeout",
        "timeouts",
        "trace_parent",
        "workflow",
    )

    def __init__(
        self,
        workflow: Workflow,
        input: Any,
        *,
        store: RunStore | None,
        clock: Clock,
        max_attempts: int,
        timeout: float | None,
        step_timeout: float | None,
        backoff: Backoff,
        workflow_id: str | None,
        log_context: Mapping[str, Any] | None,
        defer_retries: bool = False,
    ) -> None:
        self.workflow = workflow
        self.input = input
        self.store = store
        self.clock = clock
        self.max_attempts = max_attempts
        self.timeout = timeout
        self.backoff = backoff
        # Run by a job: one attempt per call, a due retry is raised (RetryDeferred) for the
        # job to reschedule, and the run is taken over at once (the job's claim fences it).
        self.defer_retries = defer_retries and store is not None
        # Called from an async step: this run's async steps could only deadlock.
        self.inside_loop = LOOP.is_current()
        self._given_id = workflow_id is not None
        self._workflow_id = workflow_id
        job_id = log_context.get("job_id") if log_context else None
        self.job_id = job_id if isinstance(job_id, int) and not isinstance(job_id, bool) else None
        self.log = RunLog(workflow.name, self._get_workflow_id, max_attempts, log_context)
        # With tracing on: the caller's trace context, the parent of every step's span.
        observer = hooks.OBSERVER
        self.trace_parent = None if observer is None else observer.capture()
        # Effective per-step timeouts (a step's own, else the run's step_timeout), and for
        # each index the smallest timeout among the steps from there on (None: no limit).
        self.timeouts: tuple[float | None, ...] | None = None
        self.soonest_timeout_from: tuple[float | None, ...] = ()
        if step_timeout is not None or workflow.has_step_timeouts:
            timeouts = tuple(
                step_timeout if step.timeout is None else step.timeout for step in workflow.steps
            )
            soonest: list[float | None] = [None]
            for limit in reversed(timeouts):
                after = soonest[-1]
                soonest.append(
                    limit if after is None else after if limit is None else min(limit, after)
                )
            self.timeouts = timeouts
            self.soonest_timeout_from = tuple(reversed(soonest))

    @property
    def workflow_id(self) -> str:
        """The run's id, made (uuid4) on first need: pure in-memory runs often never need it."""
        workflow_id = self._workflow_id
        if workflow_id is None:
            workflow_id = self._workflow_id = str(uuid.uuid4())
        return workflow_id

    def _get_workflow_id(self) -> str:
        return self.workflow_id

    def execute(self) -> Any:
        """Run attempts until one completes (return its output) or the last one fails."""
        index, value, number = 0, self.input, 1
        if self.store is not None:
            opened = self._open()
            if isinstance(opened, _Finished):
                return opened.output
            index, value, number = opened
        return self._execute_from(index, value, number)

    def _execute_from(self, index: int, value: Any, number: int) -> Any:
        """Run attempts from step `index` (input `value`), the first being attempt `number`."""
        steps = self.workflow.steps
        self.log.run_started(number, resumed_at=steps[index].name if index else None)
        supervised = self.timeout is not None or self.timeouts is not None
        made = 0
        while True:
            attempt = Attempt(self, number, index, value)
            if supervised:
                timeout = self.timeout
                attempt.supervise(None if timeout is None else _monotonic() + timeout)
            else:
                attempt.run_inline()
            if attempt.fatal is not None:
                self._fatal(attempt.fatal, number)
            if attempt.failure is None and attempt.timed_out is None:
                return self._complete(attempt.value, number)
            made += 1
            error = self._step_error(attempt)
            step = steps[attempt.index]
            limit = step.max_attempts if step.max_attempts is not None else self.max_attempts
            if self.defer_retries:
                made = self._failures_of(attempt.index)
            if made >= limit or isinstance(attempt.failure, Discard):
                self._fail(error, number, retried=made > 1)
            delay = self.backoff.delay(made)
            self.log.attempt_failed(step.name, number, attempt.failure or error, delay)
            if self.defer_retries:
                raise RetryDeferred(error, delay) from attempt.failure
            self.clock.sleep(delay)
            number += 1
            index, value = attempt.index, attempt.value
            if self.store is not None and not self.store.start_attempt(self.workflow_id, number):
                # Another caller moved the run on while this one waited: follow it instead.
                return self._follow(self._stored())

    # -- outcomes ----------------------------------------------------------------------------

    def _step_error(self, attempt: Attempt) -> StepFailed | StepTimedOut:
        step = self.workflow.steps[attempt.index].name
        if attempt.timed_out is not None:
            return StepTimedOut(
                workflow_id=self.workflow_id,
                workflow=self.workflow.name,
                step=step,
                timeout=attempt.timed_out,
                attempt=attempt.number,
            )
        reason = attempt.failure
        assert reason is not None
        return StepFailed(
            workflow_id=self.workflow_id,
            workflow=self.workflow.name,
            step=step,
            reason=reason,
            attempt=attempt.number,
        )

    def _complete(self, output: Any, number: int) -> Any:
        if self.store is not None:
            self.store.finish_run(self.workflow_id, number, RunState.COMPLETED, output=output)
        self.log.run_completed(number)
        return output

    def _fail(self, error: StepFailed | StepTimedOut, number: int, *, retried: bool) -> NoReturn:
        final: WorkflowError = error
        if retried and not (isinstance(error, StepFailed) and isinstance(error.reason, Discard)):
            final = MaxAttemptsExceeded(
                workflow_id=self.workflow_id,
                workflow=self.workflow.name,
                attempts=number,
                reason=error,
            )
        if self.store is not None:
            cause = error.reason if isinstance(error, StepFailed) else None
            self.store.finish_run(
                self.workflow_id,
                number,
                RunState.FAILED,
                error=clean_error(
                    {
                        "kind": type(final).__name__,
                        "message": str(final),
                        "step": error.step,
                        "attempt": number,
                        "traceback": error_dict(cause)["traceback"] if cause else "",
                    }
                ),
            )
        reason = error.reason if isinstance(error, StepFailed) else error
        self.log.run_failed(error.step, number, reason)
        if final is error:
            raise error from reason if isinstance(error, StepFailed) else None
        raise final from error

    def _fatal(self, exc: BaseException, number: int) -> NoReturn:
        """Not a step failure (unrecordable output, fenced out, interrupt): re-raise as is."""
        if isinstance(exc, SerializationError) and self.store is not None:
            # Best effort: the serialisation error is the one to report.
            with contextlib.suppress(Exception):
                self.store.finish_run(
                    self.workflow_id,
                    number,
                    RunState.FAILED,
                    error=clean_error(
                        {"kind": "SerializationError", "message": str(exc), "traceback": ""}
                    ),
                )
        raise exc

    # -- the stored run ----------------------------------------------------------------------

    def _open(self) -> tuple[int, Any, int] | _Finished:
        """Create the run, or find it and work out where it resumes: (index, input, attempt)."""
        store = self.store
        assert store is not None
        workflow = self.workflow
        try:
            existing, created = store.start_run(
                workflow_id=self.workflow_id,
                workflow=workflow.name,
                input=self.input,
                max_attempts=self.max_attempts,
                job_id=self.job_id,
                fingerprint=workflow.fingerprint,
                definition=workflow.definition,
            )
        except SerializationError as exc:
            raise SerializationError(
                f"workflow {workflow.name!r}: input is not JSON and cannot be recorded: {exc}",
                path=exc.path,
            ) from exc
        if created:
            return 0, self.input, 1
        self._check_same_run(existing)
        if existing.state is RunState.COMPLETED:
            self.log.run_completed(existing.attempt)
            return _Finished(existing.output)
        self._check_same_definition(existing)
        if existing.state is RunState.RUNNING and not self.defer_retries:
            # Someone else is executing it (or died doing so): follow, do not join.
            return _Finished(self._follow(existing))
        return self._resume(existing)

    def _resume(self, existing: RunRecord) -> tuple[int, Any, int] | _Finished:
        """Take the run over at its next attempt (compare-and-set) and find its checkpoint."""
        store = self.store
        assert store is not None
        number = existing.attempt + 1
        if not store.start_attempt(self.workflow_id, number):
            if self.defer_retries:
                raise WorkflowError(
                    f"workflow {self.workflow.name!r} run {self.workflow_id} moved past "
                    f"attempt {existing.attempt} while this job was taking it over",
                    workflow_id=self.workflow_id,
                )
            return _Finished(self._follow(self._stored()))
        # Walk the checkpoints (completed steps, matched by index and name) in order.
        completed = {
            record.index: record
            for record in store.get_steps(self.workflow_id)
            if record.outcome is StepOutcome.COMPLETED
        }
        index, value = 0, existing.input
        steps = self.workflow.steps
        while index < len(steps):
            record = completed.get(index)
            if record is None or record.step != steps[index].name:
                break
            value = record.output
            index += 1
        if index == len(steps):
            return _Finished(self._complete(value, number))
        return index, value, number

    def _follow(self, run: RunRecord) -> Any:
        """Wait for a run another caller holds to end; its output, or its error raised.

        Polls on the run's clock; a run still at the same attempt after `timeout` seconds
        (never, without one) is presumed abandoned and taken over.
        """
        waited, poll = 0.0, _FOLLOW_FIRST_POLL
        if run.state is RunState.RUNNING:
            self.log.following(run.attempt, self.timeout)
        while True:
            if run.state is RunState.COMPLETED:
                self.log.run_completed(run.attempt)
                return run.output
            if run.state is RunState.FAILED:
                error = run.error or {}
                raise WorkflowError(
                    f"workflow {self.workflow.name!r} run {self.workflow_id} failed in "
                    f"another caller on attempt {run.attempt}: "
                    f"{error.get('message', 'no error recorded')}",
                    workflow_id=self.workflow_id,
                )
            if self.timeout is not None and waited >= self.timeout:
                self.log.taking_over(run.attempt, waited)
                resumed = self._resume(run)
                if isinstance(resumed, _Finished):
                    return resumed.output
                return self._execute_from(*resumed)
            self.clock.sleep(poll)
            waited += poll
            poll = min(poll * 2, _FOLLOW_MAX_POLL)
            seen, run = run.attempt, self._stored()
            if run.attempt != seen:
                waited = 0.0  # moved on to a new attempt: its holder is alive, wait afresh

    def _stored(self) -> RunRecord:
        assert self.store is not None
        run = self.store.get_run(self.workflow_id)
        if run is None:
            raise WorkflowError(
                f"workflow {self.workflow.name!r} run {self.workflow_id} disappeared from "
                "the store while it was being executed (pruned?)",
                workflow_id=self.workflow_id,
            )
        return run

    def _failures_of(self, index: int) -> int:
        """How many attempts of step `index` failed or timed out, over the run's life."""
        assert self.store is not None
        return sum(
            1
            for record in self.store.get_steps(self.workflow_id)
            if record.index == index and record.outcome is not StepOutcome.COMPLETED
        )

    def _check_same_run(self, existing: RunRecord) -> None:
        """Refuse a workflow_id that names a run of another workflow, or with another input."""
        if existing.workflow != self.workflow.name:
            raise WorkflowError(
                f"run {self.workflow_id} belongs to workflow {existing.workflow!r}, "
                f"not {self.workflow.name!r}",
                workflow_id=self.workflow_id,
            )
        if _canonical(existing.input) != _canonical(roundtrip(self.input, what="input")):
            raise WorkflowError(
                f"run {self.workflow_id} of workflow {self.workflow.name!r} was started with "
                "another input; a workflow_id names one run of one input (use a new "
                "workflow_id for a new input)",
                workflow_id=self.workflow_id,
            )

    def _check_same_definition(self, existing: RunRecord) -> None:
        """Refuse to resume a run started under another definition (runs from before
        fingerprints were stored resume as they always did)."""
        workflow = self.workflow
        if existing.fingerprint is None or existing.fingerprint == workflow.fingerprint:
            return
        assert self.store is not None
        done = frozenset(
            record.step
            for record in self.store.get_steps(self.workflow_id)
            if record.outcome is StepOutcome.COMPLETED
        )
        change = describe_change(existing.definition, workflow.definition, done)
        raise DefinitionError(
            f"run {self.workflow_id} of workflow {workflow.name!r} cannot resume: its "
            f"definition changed since the run started ({change}); finish or discard it "
            "with the old code, or start a new run under a new workflow_id"
        )


def _canonical(value: Any) -> str:
    """JSON text with sorted keys: equal values, equal text (stored or freshly given)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


class _Finished:
    """A stored run that needs no further step: its output is the result."""

    __slots__ = ("output",)

    def __init__(self, output: Any) -> None:
        self.output = output
