"""Every exception pgflow raises, and the two that steps raise to steer the engine."""

from __future__ import annotations

import math


class PgflowError(Exception):
    """Base of every error raised by pgflow itself, so callers can catch them all at once."""


class DefinitionError(PgflowError, ValueError):
    """A workflow, step, worker or option is malformed; raised before anything runs."""


class BackendError(PgflowError):
    """The storage behind a backend cannot be reached, found or used as it is."""


class SchemaError(BackendError):
    """The database answers, but pgflow's schema there is missing, older or newer than the code;
    retrying cannot help, migrating (or upgrading pgflow) does."""


class SerializationError(PgflowError, TypeError):
    """A value that must be stored as JSON is not JSON-serialisable; `path` names where."""

    def __init__(self, message: str, *, path: str = "") -> None:
        super().__init__(message)
        self.path = path


class JobStateError(PgflowError, ValueError):
    """An operation a job's current state does not allow, e.g. retrying an executing job."""


class RunStateError(PgflowError, ValueError):
    """An operation a run's current state does not allow, e.g. cancelling a finished run."""


class WorkflowError(PgflowError):
    """A workflow run failed; `workflow_id` identifies the run in logs and in the backend."""

    def __init__(self, message: str, *, workflow_id: str) -> None:
        super().__init__(message)
        self.workflow_id = workflow_id


class RunCancelled(WorkflowError):
    """The run was cancelled (`app.cancel_run`) before it finished."""


class DeadlineExceeded(WorkflowError):
    """The run did not finish before its deadline (`start_run(..., deadline=)`)."""


class SignalError(PgflowError, ValueError):
    """A signal that cannot be delivered: unknown run or step, a step that is no wait, a
    run no longer running, or a wait that already took its signal (or timed out)."""

    def __init__(self, message: str, *, definition_unknown: bool = False) -> None:
        super().__init__(message)
        #: True when the refusal is only that this process does not define the run's flow.
        self.definition_unknown = definition_unknown


class StepFailed(WorkflowError):
    """A step raised: `step` is its name, `reason` the exception, `attempt` the attempt number."""

    def __init__(
        self, *, workflow_id: str, workflow: str, step: str, reason: BaseException, attempt: int
    ) -> None:
        super().__init__(
            f"workflow {workflow!r} step {step!r} failed on attempt {attempt}: "
            f"{describe_exception(reason)}",
            workflow_id=workflow_id,
        )
        self.workflow = workflow
        self.step = step
        self.reason = reason
        self.attempt = attempt

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild, (type(self), self.__dict__, str(self)))


class StepTimedOut(WorkflowError):
    """A step (or the attempt it ran in) outlived its deadline; `timeout` is in seconds."""

    def __init__(
        self, *, workflow_id: str, workflow: str, step: str, timeout: float, attempt: int
    ) -> None:
        super().__init__(
            f"workflow {workflow!r} step {step!r} timed out after {timeout:g}s "
            f"on attempt {attempt}",
            workflow_id=workflow_id,
        )
        self.workflow = workflow
        self.step = step
        self.timeout = timeout
        self.attempt = attempt

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild, (type(self), self.__dict__, str(self)))


class MaxAttemptsExceeded(WorkflowError):
    """Every attempt failed; `reason` is the last StepFailed or StepTimedOut."""

    def __init__(
        self, *, workflow_id: str, workflow: str, attempts: int, reason: StepFailed | StepTimedOut
    ) -> None:
        super().__init__(
            f"workflow {workflow!r} failed after {attempts} attempts; last error: {reason}",
            workflow_id=workflow_id,
        )
        self.workflow = workflow
        self.attempts = attempts
        self.reason = reason

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild, (type(self), self.__dict__, str(self)))


def describe_exception(error: BaseException) -> str:
    """`Type: message`, even for an exception whose own __str__ raises."""
    try:
        text = str(error)
    except Exception:
        text = "<unprintable message>"
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _rebuild(cls: type[WorkflowError], state: dict[str, object], message: str) -> WorkflowError:
    """Recreate a keyword-only error (for copy and for passing across threads)."""
    error = cls.__new__(cls)
    Exception.__init__(error, message)
    error.__dict__.update(state)
    return error


class Discard(Exception):
    """Raised by a step or a job to fail at once, with no retry."""

    def __init__(self, reason: str = "discarded") -> None:
        super().__init__(reason)
        self.reason = reason


class Snooze(Exception):
    """Raised by a job to run again in `seconds`, without counting an attempt."""

    def __init__(self, seconds: float) -> None:
        if seconds < 0:
            raise DefinitionError(f"Snooze seconds must be >= 0, got {seconds!r}")
        super().__init__(f"snoozed for {seconds:g}s")
        self.seconds = float(seconds)


class RateLimited(Exception):
    """Raised by a job (or a flow step) whose provider said "slow down": the job runs again
    in `retry_after` seconds without counting an attempt, and its queue (on a partitioned
    queue, its partition) starts nothing until then, on every instance."""

    def __init__(self, retry_after: float) -> None:
        if (
            isinstance(retry_after, bool)
            or not isinstance(retry_after, (int, float))
            or not math.isfinite(retry_after)
            or retry_after <= 0
        ):
            raise DefinitionError(
                f"RateLimited(retry_after=...) must be a number of seconds > 0, got {retry_after!r}"
            )
        super().__init__(f"rate limited for {retry_after:g}s")
        self.retry_after = float(retry_after)
