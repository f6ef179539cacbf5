"""Frozen value records exchanged between the engine and every backend.

They are plain data: a backend builds them from rows, the engine and users read them.
Timestamps are always timezone-aware UTC datetimes.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

import attrs

from pgflow.errors import DefinitionError


def _aware(_instance: object, attribute: attrs.Attribute[Any], value: datetime | None) -> None:
    """Reject naive datetimes: a record must never be ambiguous about its time zone."""
    if value is not None and value.tzinfo is None:
        raise ValueError(f"{attribute.name} must be timezone-aware, got naive {value!r}")


class JobState(enum.StrEnum):
    """Where a job is in its life; the values are what the `state` column stores."""

    AVAILABLE = "available"
    SCHEDULED = "scheduled"
    EXECUTING = "executing"
    RETRYABLE = "retryable"
    COMPLETED = "completed"
    DISCARDED = "discarded"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in FINISHED_STATES


FINISHED_STATES = frozenset({JobState.COMPLETED, JobState.DISCARDED, JobState.CANCELLED})
WAITING_STATES = frozenset({JobState.AVAILABLE, JobState.SCHEDULED, JobState.RETRYABLE})


class RunState(enum.StrEnum):
    """Where a workflow run is: running until its last attempt completes or fails, or until
    it is cancelled (distributed runs, `app.cancel_run`)."""

    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


def final_run_state(state: RunState | str) -> RunState:
    """The state a run may finish in (completed or failed); DefinitionError otherwise."""
    state = RunState(state)
    if state not in (RunState.COMPLETED, RunState.FAILED):
        raise DefinitionError(f"finish_run needs completed or failed, not {state.value!r}")
    return state


class StepOutcome(enum.StrEnum):
    """How one attempt of one step ended."""

    COMPLETED = "completed"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    #: The step's `when` predicate was false, or a dependency it needs was skipped.
    SKIPPED = "skipped"


def _optional_keys(keys: Iterable[str] | None) -> tuple[str, ...] | None:
    """Accept any iterable of arg names (a list from JSON, a tuple in code) as a tuple."""
    return None if keys is None else tuple(keys)


@attrs.frozen
class UniqueSpec:
    """Makes an insert return the existing job instead of adding a duplicate.

    Two jobs are duplicates when worker, queue and the chosen `keys` of args (all args when
    None) are equal and they fall in the same `period` (seconds; None: as long as the first
    job exists, finished or not, i.e. until it is pruned). With `while_unfinished`, the key
    is released once the job completes, is discarded or cancelled.
    `scope` adds an explicit discriminator (an idempotency key, a cron slot) that is not an arg.
    """

    period: float | None = None
    keys: tuple[str, ...] | None = attrs.field(default=None, converter=_optional_keys)
    while_unfinished: bool = False
    scope: str | None = None


@attrs.frozen
class TaskKey:
    """Which unit of a distributed flow run a job is: run, step, and map element.

    `index` is the element's position for a map step and 0 for any other step, so
    `(workflow_id, step, index)` names one unit of work whatever order things ran in.
    """

    workflow_id: str
    step: str
    index: int = 0


@attrs.frozen
class TaskCompletion:
    """A task that ran to the end: its fence, which unit it was, and what it produced.

    `output` is the step function's return value as JSON text (`pgflow.serialization.dumps`,
    already checked against the size limit); `skipped` holds the reason instead when the
    step's `when` was false (then `output` is None).
    """

    ref: JobRef
    task: TaskKey
    output: str | None
    skipped: str | None = None


@attrs.frozen
class NewJob:
    """A job to insert, as built by `Worker.new`; the backend assigns id and timestamps.

    `schedule_in` is relative to the database's clock; `scheduled_at` is absolute. At most one
    of them is set; with neither, the job is available at once.
    """

    worker: str
    args: dict[str, Any] = attrs.field(factory=dict)
    queue: str = "default"
    priority: int = 0
    max_attempts: int = 3
    scheduled_at: datetime | None = attrs.field(default=None, validator=_aware)
    schedule_in: float | None = None
    unique: UniqueSpec | None = None
    meta: dict[str, Any] = attrs.field(factory=dict)
    #: Set on the jobs a flow run's steps become (stored in the job's workflow_id, step and
    #: task_index columns); None for ordinary jobs.
    task: TaskKey | None = None


@attrs.frozen
class JobRef:
    """A claimed job's fence: writes about it apply only while this attempt still holds it.

    `claimed_at` (the claim's `attempted_at`, when known) tells two claims of the same
    attempt number apart: backends whose claims may be lost in a crash check it too.
    """

    id: int
    attempt: int
    claimed_at: datetime | None = attrs.field(default=None, eq=False)


@attrs.frozen
class Job:
    """A stored job, as a backend read it."""

    id: int
    queue: str
    worker: str
    args: dict[str, Any]
    state: JobState = attrs.field(converter=JobState)
    priority: int
    attempt: int
    max_attempts: int
    scheduled_at: datetime = attrs.field(validator=_aware)
    inserted_at: datetime = attrs.field(validator=_aware)
    attempted_at: datetime | None = attrs.field(default=None, validator=_aware)
    completed_at: datetime | None = attrs.field(default=None, validator=_aware)
    reserved_by: str | None = None
    errors: tuple[dict[str, Any], ...] = attrs.field(default=(), converter=tuple)
    meta: dict[str, Any] = attrs.field(factory=dict)
    unique_key: str | None = None
    #: True when an insert found an existing unique job and returned it instead.
    conflict: bool = attrs.field(default=False, eq=False)
    #: What perform returned (JSON), once the job completed.
    result: Any = None
    #: The flow run unit this job is, for task jobs (None for ordinary jobs).
    task: TaskKey | None = None

    @classmethod
    def trusted(
        cls,
        id: int,
        queue: str,
        worker: str,
        args: dict[str, Any],
        state: JobState,
        priority: int,
        attempt: int,
        max_attempts: int,
        scheduled_at: datetime,
        inserted_at: datetime,
        attempted_at: datetime | None = None,
        completed_at: datetime | None = None,
        reserved_by: str | None = None,
        errors: tuple[dict[str, Any], ...] = (),
        meta: dict[str, Any] | None = None,
        unique_key: str | None = None,
        conflict: bool = False,
        result: Any = None,
        task: TaskKey | None = None,
    ) -> Job:
        """A Job from values a backend already holds in their final types (a JobState,
        aware datetimes, a tuple): no converters or validators run. For backends' hot paths
        only; everyone else uses the validating constructor. About 3x cheaper."""
        self = _new(cls)
        _set_id(self, id)
        _set_queue(self, queue)
        _set_worker(self, worker)
        _set_args(self, args)
        _set_state(self, state)
        _set_priority(self, priority)
        _set_attempt(self, attempt)
        _set_max_attempts(self, max_attempts)
        _set_scheduled_at(self, scheduled_at)
        _set_inserted_at(self, inserted_at)
        _set_attempted_at(self, attempted_at)
        _set_completed_at(self, completed_at)
        _set_reserved_by(self, reserved_by)
        _set_errors(self, errors)
        _set_meta(self, {} if meta is None else meta)
        _set_unique_key(self, unique_key)
        _set_conflict(self, conflict)
        _set_result(self, result)
        _set_task(self, task)
        return self

    @property
    def ref(self) -> JobRef:
        return JobRef(self.id, self.attempt, self.attempted_at)

    @property
    def cancel_requested(self) -> bool:
        return bool(self.meta.get("cancel_requested"))


_new = object.__new__
#: The slot setters of Job's fields, in declaration order (bypassing the frozen __setattr__).
(
    _set_id,
    _set_queue,
    _set_worker,
    _set_args,
    _set_state,
    _set_priority,
    _set_attempt,
    _set_max_attempts,
    _set_scheduled_at,
    _set_inserted_at,
    _set_attempted_at,
    _set_completed_at,
    _set_reserved_by,
    _set_errors,
    _set_meta,
    _set_unique_key,
    _set_conflict,
    _set_result,
    _set_task,
) = (getattr(Job, field.name).__set__ for field in attrs.fields(Job))


@attrs.define
class SuccessorClaim:
    """A request riding on `complete_tasks`: claim, in the same transaction, up to `limit`
    of the task jobs the completions make available on `queue`, for this instance.

    The instance that finishes a step runs the next one at once, without waiting for a
    notification and a claim of its own. The backend fills `claimed` (claimed exactly as by
    `claim_jobs`, fenced by the incarnation); the caller must run or release them.
    """

    queue: str
    instance_id: str
    limit: int
    incarnation: str = ""
    claimed: list[Job] = attrs.Factory(list)


@attrs.frozen
class JobError:
    """One failed attempt, as kept (as a dict) in a job's `errors` list."""

    attempt: int
    at: datetime = attrs.field(validator=_aware)
    kind: str
    message: str
    traceback: str = ""
    instance_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "attempt": self.attempt,
            "at": self.at.isoformat(),
            "kind": self.kind,
            "message": self.message,
            "traceback": self.traceback,
            "instance_id": self.instance_id,
        }


@attrs.frozen
class RescueReport:
    """One rescue pass: stale instances marked offline, their jobs made available, discarded
    or cancelled."""

    instances: tuple[str, ...] = ()
    rescued: tuple[int, ...] = ()
    discarded: tuple[int, ...] = ()
    #: Jobs whose cancellation had been requested: they end cancelled, not run again.
    cancelled: tuple[int, ...] = ()


@attrs.frozen
class InstanceInfo:
    """What an instance says about itself when it registers."""

    instance_id: str
    hostname: str = ""
    pid: int = 0
    queues: dict[str, int | dict[str, Any]] = attrs.field(factory=dict)
    #: Unique per process start: tells a restart under the same id from the earlier process.
    incarnation: str = ""
    #: The flow definitions this process can run tasks of: (flow name, fingerprint) pairs.
    #: The leader fails runs whose definition no online instance serves for a grace period.
    flows: tuple[tuple[str, str], ...] = attrs.field(default=(), converter=tuple)


class Liveness(enum.StrEnum):
    """What a heartbeat found: what the instance must do next."""

    #: Refreshed; carry on.
    ALIVE = "alive"
    #: Unknown or marked offline (its jobs may have been rescued): register again.
    PRESUMED_DEAD = "presumed_dead"
    #: Another process registered under the same id since: stand down, never register again.
    DISPLACED = "displaced"


@attrs.frozen
class Instance:
    """A registered instance, as stored in `pgflow_instances`."""

    instance_id: str
    status: str
    heartbeat_at: datetime = attrs.field(validator=_aware)
    started_at: datetime = attrs.field(validator=_aware)
    hostname: str = ""
    pid: int = 0
    queues: dict[str, int | dict[str, Any]] = attrs.field(factory=dict)
    #: The process that registered under this id last.
    incarnation: str = ""
    #: Threads of timed-out work still running there (each still holds its queue slot).
    abandoned: int = 0
    #: The (flow name, fingerprint) pairs it serves (see InstanceInfo.flows).
    flows: tuple[tuple[str, str], ...] = attrs.field(default=(), converter=tuple)


@attrs.frozen
class JobCount:
    """One row of the "jobs by queue, state and instance" table."""

    queue: str
    state: JobState = attrs.field(converter=JobState)
    reserved_by: str | None
    count: int


@attrs.frozen
class RunRecord:
    """A workflow run: one call of `execute` with a backend, or one job running a workflow."""

    workflow_id: str
    workflow: str
    state: RunState = attrs.field(converter=RunState)
    attempt: int
    max_attempts: int
    input: Any
    started_at: datetime = attrs.field(validator=_aware)
    output: Any = None
    error: dict[str, Any] | None = None
    finished_at: datetime | None = attrs.field(default=None, validator=_aware)
    job_id: int | None = None
    #: Hash of the definition the run was started with (None for runs from before 0.2).
    fingerprint: str | None = None
    #: That definition, as JSON: step names in order, or the graph's shape.
    definition: Any = None
    #: For runs started with `app.start_run` (each step a task): every step's state by
    #: name. Empty for in-process runs and runs read without their steps.
    steps: Mapping[str, StepState] = attrs.field(factory=dict)
    #: A sub-flow's child run: the parent run and the parent's subflow step.
    parent_id: str | None = None
    parent_step: str | None = None
    #: A run made by `restart_run`: the run it restarts.
    restart_of: str | None = None
    #: When a run started with `deadline=` fails if not finished.
    deadline_at: datetime | None = attrs.field(default=None, validator=_aware)


@attrs.frozen
class StepRecord:
    """One attempt of one step: what ran, how it ended, its output or error, how long it took."""

    workflow_id: str
    step: str
    index: int
    attempt: int
    outcome: StepOutcome = attrs.field(converter=StepOutcome)
    started_at: datetime = attrs.field(validator=_aware)
    duration: float
    output: Any = None
    error: dict[str, Any] | None = None
    #: The map element this attempt ran (in-process graph runs); None for a whole step.
    element: int | None = None


class StepStatus(enum.StrEnum):
    """Where one step of a distributed flow run is (the `state` of `pgflow_step_states`)."""

    #: Waiting for dependencies.
    PENDING = "pending"
    #: Ready: its tasks exist (queued, running or retrying).
    STARTED = "started"
    COMPLETED = "completed"
    FAILED = "failed"
    #: `when` was false, or a dependency it needs (no default) was skipped.
    SKIPPED = "skipped"
    #: The run ended (failed) before this step could finish.
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self not in (StepStatus.PENDING, StepStatus.STARTED)


@attrs.frozen
class StepState:
    """One step of a distributed flow run, as stored: progress counters and the output.

    `tasks_total` is None until the step is ready (a map learns its size from its input);
    `attempts` is the highest attempt any of its tasks reached.
    """

    step: str
    state: StepStatus = attrs.field(converter=StepStatus)
    attempts: int = 0
    output: Any = None
    started_at: datetime | None = attrs.field(default=None, validator=_aware)
    completed_at: datetime | None = attrs.field(default=None, validator=_aware)
    tasks_total: int | None = None
    tasks_done: int = 0
    skip_reason: str | None = None
    #: The error that failed the step (the failing task's last error), when failed.
    error: dict[str, Any] | None = None
    #: "step", "map", "wait", "sleep" or "subflow".
    kind: str = "step"
    #: A sub-flow step's latest child run (None before it starts).
    child_id: str | None = None


@attrs.frozen
class QueueControl:
    """What an operator or a RateLimited set on a queue, as stored for every instance."""

    queue: str
    paused: bool = False
    paused_at: datetime | None = attrs.field(default=None, validator=_aware)
    #: No start on the whole queue before this time.
    hold_until: datetime | None = attrs.field(default=None, validator=_aware)
    #: Held partitions of a partitioned queue, each until its time.
    partition_holds: Mapping[str, datetime] = attrs.field(factory=dict)


@attrs.frozen
class QueueStats:
    """One queue as `pgflow status` shows it."""

    queue: str
    executing: int
    available: int
    control: QueueControl
    #: Starts in the current rate window (None without a rate limit).
    rate_used: int | None = None
    #: The partitions with the most available jobs: (partition, available, executing).
    partitions: tuple[tuple[str, int, int], ...] = ()
