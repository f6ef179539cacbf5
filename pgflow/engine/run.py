"""One run of a workflow: its attempts, the backoff between them, and what gets recorded.

A retry resumes where the failed attempt stopped: completed steps are checkpoints and are
not run again; the failed step runs again with the output of the step before it. With a
RunStore, the same holds across processes: a run found in the store (same workflow_id)
continues after its last completed step, at the next attempt number.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Mapping
from typing import Any, NoReturn

from pgflow.backend import RunStore
from pgflow.backoff_policy import Backoff
from pgflow.clock import Clock
from pgflow.definition import Workflow
from pgflow.engine.attempt import Attempt, error_dict
from pgflow.engine.loop import LOOP
from pgflow.errors import (
    Discard,
    MaxAttemptsExceeded,
    SerializationError,
    StepFailed,
    StepTimedOut,
    WorkflowError,
)
from pgflow.records import RunState, StepOutcome
from pgflow.run_log import RunLog
from pgflow.stored_errors import clean_error

_monotonic = time.monotonic


class Run:
    """Executes one workflow run to completion or final failure (see module docstring)."""

    __slots__ = (
        "_given_id",
        "_workflow_id",
        "backoff",
        "clock",
        "input",
        "inside_loop",
        "job_id",
        "log",
        "max_attempts",
        "soonest_timeout_from",
        "store",
        "timeout",
        "timeouts",
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
    ) -> None:
        self.workflow = workflow
        self.input = input
        self.store = store
        self.clock = clock
        self.max_attempts = max_attempts
        self.timeout = timeout
        self.backoff = backoff
        # Called from an async step: this run's async steps could only deadlock.
        self.inside_loop = LOOP.is_current()
        self._given_id = workflow_id is not None
        self._workflow_id = workflow_id
        job_id = log_context.get("job_id") if log_context else None
        self.job_id = job_id if isinstance(job_id, int) and not isinstance(job_id, bool) else None
        self.log = RunLog(workflow.name, self._get_workflow_id, max_attempts, log_context)
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
            if made >= limit or isinstance(attempt.failure, Discard):
                self._fail(error, number, retried=made > 1)
            delay = self.backoff.delay(made)
            self.log.attempt_failed(step.name, number, attempt.failure or error, delay)
            self.clock.sleep(delay)
            number += 1
            index, value = attempt.index, attempt.value
            if self.store is not None:
                self.store.start_attempt(self.workflow_id, number)

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
        existing = store.get_run(self.workflow_id) if self._given_id else None
        if existing is None:
            try:
                store.start_run(
                    workflow_id=self.workflow_id,
                    workflow=workflow.name,
                    input=self.input,
                    max_attempts=self.max_attempts,
                    job_id=self.job_id,
                )
            except SerializationError as exc:
                raise SerializationError(
                    f"workflow {workflow.name!r}: input is not JSON and cannot be recorded: {exc}",
                    path=exc.path,
                ) from exc
            return 0, self.input, 1
        if existing.workflow != workflow.name:
            raise WorkflowError(
                f"run {self.workflow_id} belongs to workflow {existing.workflow!r}, "
                f"not {workflow.name!r}",
                workflow_id=self.workflow_id,
            )
        if existing.state is RunState.COMPLETED:
            self.log.run_completed(existing.attempt)
            return _Finished(existing.output)
        # Resume: walk the checkpoints (completed steps, matched by index and name) in order.
        completed = {
            record.index: record
            for record in store.get_steps(self.workflow_id)
            if record.outcome is StepOutcome.COMPLETED
        }
        index, value = 0, existing.input
        steps = workflow.steps
        while index < len(steps):
            record = completed.get(index)
            if record is None or record.step != steps[index].name:
                break
            value = record.output
            index += 1
        number = existing.attempt + 1
        store.start_attempt(self.workflow_id, number)
        if index == len(steps):
            return _Finished(self._complete(value, number))
        return index, value, number


class _Finished:
    """A stored run that needs no further step: its output is the result."""

    __slots__ = ("output",)

    def __init__(self, output: Any) -> None:
        self.output = output
