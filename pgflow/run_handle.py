"""`RunHandle`: the caller's view of a distributed run started with `app.start_run`.

It only reads the store: waiting for the run, then turning its stored error back into the
exception `execute` would have raised, so callers handle both kinds of run alike.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs

from pgflow.errors import (
    DeadlineExceeded,
    MaxAttemptsExceeded,
    RunCancelled,
    StepFailed,
    WorkflowError,
)
from pgflow.records import RunRecord, RunState

if TYPE_CHECKING:
    from pgflow.backend import Backend, FlowStore


class RemoteStepError(Exception):
    """A step's exception as its task job stored it: `kind` names the original type (it
    was raised in another process, so only its description travels)."""

    def __init__(self, kind: str, message: str, traceback: str = "") -> None:
        super().__init__(message)
        self.kind = kind
        self.traceback = traceback


def with_steps(store: FlowStore, run: RunRecord) -> RunRecord:
    """The run with `.steps` filled from the store's step states."""
    steps = store.get_step_states(run.workflow_id)
    return attrs.evolve(run, steps=steps)


def run_error(run: RunRecord) -> WorkflowError:
    """The exception a failed run stands for: StepFailed on a step's first attempt,
    MaxAttemptsExceeded after retries, a plain WorkflowError when no step was at fault."""
    error = run.error or {}
    message = str(error.get("message", "the run failed"))
    step = error.get("step")
    if not isinstance(step, str):
        return WorkflowError(
            f"run {run.workflow_id} of flow {run.workflow!r} failed: {message}",
            workflow_id=run.workflow_id,
        )
    state = run.steps.get(step)
    attempts = max(1, state.attempts if state is not None else 1)
    reason = RemoteStepError(
        str(error.get("kind", "error")), message, str(error.get("traceback", ""))
    )
    failed = StepFailed(
        workflow_id=run.workflow_id,
        workflow=run.workflow,
        step=step,
        reason=reason,
        attempt=attempts,
    )
    if attempts <= 1:
        return failed
    return MaxAttemptsExceeded(
        workflow_id=run.workflow_id, workflow=run.workflow, attempts=attempts, reason=failed
    )


class RunHandle:
    """A distributed run by id: `result()` waits for it, `status()` reads it."""

    def __init__(self, backend: Backend, store: FlowStore, workflow_id: str) -> None:
        self._backend = backend
        self._store = store
        self.workflow_id = workflow_id

    def __repr__(self) -> str:
        return f"RunHandle({self.workflow_id!r})"

    def status(self) -> RunRecord:
        """The run as stored now, with every step's state."""
        run = self._backend.get_run(self.workflow_id)
        if run is None:
            raise WorkflowError(
                f"run {self.workflow_id} is no longer stored (pruned?)",
                workflow_id=self.workflow_id,
            )
        return with_steps(self._store, run)

    def result(self, timeout: float | None = None) -> Any:
        """The run's output once it completed; raises what `execute` would for a failed
        run, TimeoutError when it is still running after `timeout` seconds."""
        run = self._store.wait_for_run(self.workflow_id, timeout)
        if run is None:
            raise WorkflowError(
                f"run {self.workflow_id} is not stored", workflow_id=self.workflow_id
            )
        if run.state is RunState.COMPLETED:
            return run.output
        if run.state is RunState.RUNNING:
            raise TimeoutError(f"run {self.workflow_id} still running after {timeout}s")
        if run.state is RunState.CANCELLED:
            raise RunCancelled(
                f"run {self.workflow_id} of flow {run.workflow!r} was cancelled",
                workflow_id=self.workflow_id,
            )
        if isinstance(run.error, dict) and run.error.get("kind") == "DeadlineExceeded":
            raise DeadlineExceeded(
                str(run.error.get("message") or f"run {self.workflow_id} passed its deadline"),
                workflow_id=self.workflow_id,
            )
        raise run_error(with_steps(self._store, run))
