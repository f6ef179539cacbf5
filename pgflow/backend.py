"""The storage seam: what the engine asks of any backend, in domain operations.

The protocol speaks of runs, jobs, instances and leadership, never of SQL, so the in-memory
backend is a small model of the same contract the SQL backends fulfil. Every time comparison
("due", "stale", "older than") is made with the backend's own clock: the database's `now()`
for SQL backends, so clock skew between workers does not matter.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, runtime_checkable

from pgflow.records import (
    Instance,
    InstanceInfo,
    Job,
    JobCount,
    JobRef,
    JobState,
    Liveness,
    NewJob,
    QueueControl,
    QueueStats,
    RescueReport,
    RunRecord,
    RunState,
    StepRecord,
    StepState,
    SuccessorClaim,
    TaskCompletion,
)

if TYPE_CHECKING:
    from pgflow.graph.shape import FlowPlan
    from pgflow.queue_config import Queue


class RunStart(NamedTuple):
    """What `RunStore.start_run` found: the stored run, and whether this call created it.

    Only the caller that created a run may run its first attempt without a compare-and-set;
    any other caller is looking at a run someone else started.
    """

    run: RunRecord
    created: bool


@runtime_checkable
class RunStore(Protocol):
    """Durable history of workflow runs; all the in-process executor needs."""

    def start_run(
        self,
        *,
        workflow_id: str,
        workflow: str,
        input: Any,
        max_attempts: int,
        job_id: int | None = None,
        fingerprint: str | None = None,
        definition: Any = None,
    ) -> RunStart:
        """Create the run at attempt 1, state running, and return (run, created=True); if
        it exists, return (run unchanged, created=False).

        `fingerprint` and `definition` record the workflow definition the run starts with
        (see `Workflow.fingerprint`). Raises DefinitionError for a workflow_id longer than
        64 characters, and SerializationError (writing nothing) when `input` is not JSON.
        """
        ...

    def start_attempt(self, workflow_id: str, attempt: int) -> bool:
        """Compare-and-set the run from attempt `attempt - 1` to `attempt`, state running.

        Only a run that is running or failed at exactly `attempt - 1` moves on (its output,
        error and finish time cleared); True if this call moved it. A completed run, or one
        another caller already moved, is left alone (False). Later writes are fenced by it.
        """
        ...

    def record_step(self, step: StepRecord) -> bool:
        """Store one step attempt; False (nothing written) if the run moved past its attempt.

        Raises SerializationError (and writes nothing) when the output is not JSON.
        """
        ...

    def finish_run(
        self,
        workflow_id: str,
        attempt: int,
        state: RunState,
        *,
        output: Any = None,
        error: dict[str, Any] | None = None,
    ) -> bool:
        """Mark the run completed or failed; False (nothing written) if fenced out."""
        ...

    def get_run(self, workflow_id: str) -> RunRecord | None:
        """The run, or None."""
        ...

    def get_steps(self, workflow_id: str) -> list[StepRecord]:
        """Every recorded step attempt of the run, oldest first."""
        ...

    def list_runs(
        self,
        *,
        workflow: str | None = None,
        state: RunState | None = None,
        limit: int = 100,
        since: datetime | None = None,
    ) -> list[RunRecord]:
        """Runs, newest first, optionally filtered (`since`: started at or after it)."""
        ...


class JobListener(Protocol):
    """A wake-up hint that jobs may be available; polling remains the safety net."""

    def wait(self, timeout: float) -> set[str]:
        """Block up to `timeout` seconds; return the queues announced (empty on time-out)."""
        ...

    def close(self) -> None:
        """Release the connection or resources held for listening."""
        ...


@runtime_checkable
class JobQueue(Protocol):
    """The job table, instances and leadership: what distributed workers need."""

    def insert_jobs(self, jobs: Sequence[NewJob], *, connection: Any = None) -> list[Job]:
        """Insert jobs atomically (all or none) and return them stored, in input order.

        A unique job whose key is taken returns the existing job with `conflict=True`.
        With `connection` (an SQLAlchemy Connection), the insert joins the caller's
        transaction and commits or rolls back with it. Raises SerializationError naming
        the key, with nothing written, when args are not JSON.
        """
        ...

    def claim_jobs(
        self,
        queue: str,
        instance_id: str,
        limit: int,
        incarnation: str = "",
        *,
        shape: Queue | None = None,
    ) -> list[Job]:
        """Reserve up to `limit` available jobs of `queue`: highest priority, then oldest
        scheduled_at, then lowest id. Each job goes to exactly one claimer; it becomes
        executing, attempt + 1, attempted_at = now, reserved_by = instance_id.

        Nothing is claimed while the queue is paused or held (`pause_queue`, `hold_queue`).
        With `shape` (a `pgflow.Queue` whose `shapes_flow` is true) the claim also keeps its
        cluster-wide limits, claims of the queue serializing: `global_limit` executing at
        most, `rate_limit` starts per sliding window (recorded per claimed job),
        `partition_by` partitions served round robin from the queue's cursor with
        `partition_limit` / `partition_rate_limit` per partition and held partitions skipped
        (see the issue 12 spec in docs/flow-control.md).

        With `incarnation`, the claim is fenced by it: nothing is claimed unless
        `instance_id` is registered by that very incarnation. A claim and a registration
        of the same id serialize, so a process displaced by a newer incarnation (which has
        not noticed yet) never leaves jobs executing under the id of the live one, where no
        rescue would free them. With "" (direct callers, tools), no check is made.
        """
        ...

    def complete_jobs(
        self, refs: Sequence[JobRef], results: Sequence[str | None] | None = None
    ) -> list[int]:
        """Mark jobs completed; return the ids actually changed. A ref whose attempt no
        longer holds the job (rescued, re-claimed, cancelled) changes nothing.

        `results`, when given, pairs each ref with what its perform returned as JSON text
        (`pgflow.serialization.dumps`, already checked), or None, stored as `Job.result`;
        None for the whole batch (the common case) stores no result at all. A result over
        `max_payload_bytes` raises SerializationError, with nothing written.
        """
        ...

    def fail_job(
        self, ref: JobRef, error: dict[str, Any], *, retry_in: float | None
    ) -> JobState | None:
        """Record a failed attempt: append `error`, then retryable at now + retry_in, or
        discarded when retry_in is None or no attempt is left. Returns the new state, or
        None when fenced out. A job whose cancellation was requested becomes cancelled."""
        ...

    def snooze_job(self, ref: JobRef, seconds: float) -> bool:
        """Reschedule at now + seconds without counting the attempt; False when fenced out.
        A job whose cancellation was requested becomes cancelled instead (True)."""
        ...

    def cancel_job(self, job_id: int) -> Job | None:
        """Cancel a waiting job at once; flag an executing one (`cancel_requested`) so its
        instance stops it. Finished jobs are left alone. Returns the job, or None."""
        ...

    def cancel_requested(self, job_ids: Sequence[int]) -> set[int]:
        """Which of these executing jobs have had cancellation requested."""
        ...

    def stage_jobs(self, limit: int = 10_000) -> list[str]:
        """Make scheduled and retryable jobs whose time has come available; return the
        queues that gained jobs (so their workers can be woken)."""
        ...

    def get_job(self, job_id: int) -> Job | None:
        """The job, or None."""
        ...

    def retry_job(self, job_id: int) -> Job | None:
        """Make a finished (completed, discarded, cancelled) or waiting job available now,
        keeping its attempts and errors: an exhausted job gets one more attempt
        (max_attempts = attempt + 1); its result and completion time are cleared. An
        available job is returned unchanged; an executing one raises JobStateError.
        Returns the job, or None when there is no such job."""
        ...

    def list_executing(self, queue: str, instance_id: str, incarnation: str = "") -> list[Job]:
        """The jobs of `queue` executing under `instance_id`, in id order, without their
        JSON payloads (args, meta, errors and result are left empty): a narrow read for
        the runtime's bookkeeping. With `incarnation`, none unless that incarnation is the
        one registered under the id (a displaced process must not take the new one's jobs
        for its own)."""
        ...

    def list_jobs(
        self,
        *,
        queue: str | None = None,
        state: JobState | None = None,
        worker: str | None = None,
        limit: int = 100,
    ) -> list[Job]:
        """Jobs in id order, optionally filtered."""
        ...

    def job_counts(self) -> list[JobCount]:
        """Job counts by queue, state and reserved_by."""
        ...

    def prune_jobs(self, max_age: float, limit: int = 10_000) -> int:
        """Delete up to `limit` finished jobs (and finished runs) older than `max_age`
        seconds; return how many jobs went."""
        ...

    def register_instance(self, info: InstanceInfo) -> RescueReport:
        """Record the instance as online with a fresh heartbeat (insert or update).

        Every claim belongs to one process incarnation (`info.incarnation`). When the
        stored incarnation differs, the process that registered before under this id is
        gone or displaced, and this new one has not claimed anything yet: in the same
        transaction (which claims fenced by an incarnation of the id wait for, see
        `claim_jobs`), every job left executing by the id is rescued as `rescue_stale` does
        (available again, discarded when no attempt is left, cancelled when requested),
        with an error saying the earlier incarnation was lost. Returns what was rescued.
        """
        ...

    def heartbeat(self, instance_id: str, incarnation: str = "") -> Liveness:
        """Refresh the heartbeat and mark online, and say what the instance must do next.

        PRESUMED_DEAD: the instance had been marked offline (its jobs may have been
        rescued; this beat put it back online) or was unknown (it registers again).
        DISPLACED: `incarnation` is given and another incarnation registered under the id
        since; nothing is written, and the caller must stop claiming and never register
        again (else the two processes would keep rescuing each other's jobs). ALIVE
        otherwise. Without `incarnation`, no displacement is detected.
        """
        ...

    def mark_offline(self, instance_id: str, incarnation: str = "") -> None:
        """Mark the instance offline (a clean stop); its heartbeat is left as it was.
        With `incarnation`, only while that incarnation is the registered one."""
        ...

    def list_instances(self) -> list[Instance]:
        """Every registered instance, online first."""
        ...

    def set_abandoned(self, instance_id: str, count: int) -> None:
        """Store how many threads of timed-out work still run in the instance (for status);
        an unknown instance is left alone."""
        ...

    def rescue_stale(self, stale_after: float) -> RescueReport:
        """Mark instances whose heartbeat is older than `stale_after` seconds offline, then
        make every job left executing by an instance that is not online available again,
        or discarded when it has no attempt left (the lost attempt counts), or cancelled
        when its cancellation was requested."""
        ...

    def insert_cron_job(self, name: str, slot: datetime, job: NewJob) -> Job | None:
        """Enqueue cron entry `name`'s job for `slot`, at most once ever.

        In one transaction: a compare-and-set of the entry's last enqueued slot (kept in
        its own table, untouched by pruning) that succeeds only when `slot` is newer, and
        the insert of `job`. Returns the job inserted, or None (nothing written) when this
        slot or a later one was already enqueued, whatever pruning or leader hand-overs
        happened since. `name` is a stable key of the entry (up to 255 characters).
        """
        ...

    def acquire_leadership(self, instance_id: str, ttl: float) -> bool:
        """Take or renew the cluster-wide leader lease for `ttl` seconds; True if held.
        At most one instance holds an unexpired lease at any time."""
        ...

    def release_leadership(self, instance_id: str) -> None:
        """Give the lease up if this instance holds it."""
        ...

    def database_time(self) -> datetime:
        """The backend's current time (the database's clock, timezone-aware UTC), for the
        decisions the runtime makes on time itself, such as which cron slot is due."""
        ...

    def listener(self) -> JobListener:
        """A new listener for "jobs inserted or staged" hints."""
        ...

    def pause_queue(self, queue: str) -> None:
        """Stop every instance's claims of `queue` (running jobs finish; new jobs wait)."""
        ...

    def resume_queue(self, queue: str) -> None:
        """Let `queue` be claimed again, and wake its listeners."""
        ...

    def hold_queue(self, queue: str, seconds: float, partition: str | None = None) -> None:
        """No start on `queue` (or only its `partition`) for `seconds` from now, on every
        instance; a later hold extends the current one, an earlier one does not shorten it."""
        ...

    def queue_controls(self) -> list[QueueControl]:
        """Every queue with a stored control (paused, held, held partitions), by name."""
        ...

    def queue_stats(self, queue: str, shape: Queue | None = None) -> QueueStats:
        """What `pgflow status` shows of one queue: jobs executing and available, its
        control, the starts in the current rate window(s) of `shape`, and with
        `shape.partition_by` the partitions with the most available jobs (up to 10)."""
        ...


@runtime_checkable
class FlowStore(Protocol):
    """Distributed flow runs: each step a task (a job), settled in the task's transaction.

    Kept apart from `Backend`, so a third-party backend without it still runs jobs and
    in-process workflows; `app.start_run` on it raises BackendError saying so. The three
    bundled backends implement both.

    Rules every implementation keeps (the contract suite checks them on all three):
    - Every decision about a ready step comes from `pgflow.graph.ready.decide`, every run
      result from `pgflow.graph.ready.run_output`, every task job from
      `pgflow.graph.ready.task_jobs`: the backends store, they do not invent semantics.
    - Settling is complete in one transaction: no state between two commits strands a run.
      Cascades (a step completing at once, skipped, an empty map) are resolved in the same
      transaction, in topological order (`StepPlan.index`), without a depth limit.
    - A task job that ends discarded or cancelled by ANY path (fail_job with no attempt left
      or retry_in None, a cancellation, rescue with no attempt left, cancel_job) fails its
      step (error = the job's last error) and its run, in the same transaction, unless the
      run is already finished: the run's other unfinished jobs become cancelled (executing
      ones are also flagged `cancel_requested` so their instance stops them), its live steps
      (pending/started) become cancelled, and the run failed with an error that names the
      step (`{"kind", "message", "step", "traceback"}`). A terminal run never keeps a job
      waiting or executing, nor a live step.
    - A completed task is counted once: outputs are keyed by (run, step, index) and
      completions are fenced by (job id, attempt, attempted_at) like `complete_jobs`.
    - Task jobs are ordinary jobs (claimed, rescued, fenced, listed, counted, pruned) whose
      `Job.task` is set; new tasks wake their queue's listeners like any insert.
    - Handlerless steps (`pgflow.graph.ready`): a `Wait` decision completes the step at
      once with a signal stored for it (`pgflow_signals`), else starts it (tasks_total 1)
      and inserts `timeout_jobs` (none without a timeout). A sleep is an ordinary `Start`
      whose task is scheduled (`Start.at`, or the step's seconds via `task_jobs`). A
      `StartChild` decision starts a run of `step.child` (a new uuid4 id, input
      `decision.input`, the parent's max_attempts, `parent_id`/`parent_step` set and
      `parent_queue` = the step's queue or the parent flow's) in the same transaction,
      cascading like any start, and starts the step (tasks_total 1, no job).
    - When a run with a parent ends by ANY path (completed, failed, cancelled, expired) and
      its parent is still running, the same transaction inserts `ready.relay_job` for the
      parent's step (worker and fingerprint from the parent's row, queue `parent_queue`),
      which wakes its queue; the worker that runs it settles the step from the child.
      No parent lock is taken for that (a new row conflicts with nobody).
    - A run's failure sweep (fail, cancel, expire) first locks its running children (rows
      with `parent_id` = the run) and sweeps each of them, recursively, ending them
      `cancelled` (error: cancelled with its parent) without a relay; only then its own
      steps and jobs. So a parent and a child ending at once never deadlock: parents lock
      children, children never lock parents.
    - `get_step_states` gives each step's `kind` and, for a sub-flow step, `child_id` (its
      latest child run); run reads give `parent_id`, `parent_step`, `restart_of`,
      `deadline_at`.
    - SQL: every transaction that writes about a run's steps or tasks (completion, failure,
      cancel, signal, resume, rescue, sweep) first locks the run's row (FOR NO KEY UPDATE,
      ascending workflow_id), then its step rows in (run, step_index) order.
    """

    def start_flow_run(
        self,
        plan: FlowPlan,
        *,
        workflow_id: str,
        input: Any,
        max_attempts: int,
        connection: Any = None,
        deadline: float | None = None,
    ) -> RunStart:
        """Store a new distributed run of `plan` and enqueue its ready steps, atomically.
        With `deadline` (seconds), the run's `deadline_at` is the database's now + deadline
        (`expire_runs` fails it when it is still running then).

        In one transaction: the run (state running, attempt 1, fingerprint and definition
        from the plan, `remaining_steps` = number of steps), one `pgflow_step_states` row
        per step (pending, remaining_deps = number of dependencies), then every root step is
        decided (`decide`) and started, completed, skipped or failed, cascading.
        `max_attempts` is each step's default. An existing `workflow_id` returns that run
        unchanged with created=False (nothing written; the caller compares definitions).
        With `connection` (an SQLAlchemy Connection) it joins the caller's transaction.
        Raises SerializationError (nothing written) when `input` is not JSON or is over
        the size limit, DefinitionError for an invalid workflow_id.
        """
        ...

    def complete_tasks(
        self,
        completions: Sequence[TaskCompletion],
        plans: Mapping[str, FlowPlan],
        *,
        claim: SuccessorClaim | None = None,
    ) -> list[int]:
        """Record finished tasks and settle what they finish, in one transaction.

        `plans` maps each fingerprint of the completions' runs to its plan. For each
        completion whose fence holds: the job completes, its output is stored (a duplicate
        key counts nothing), the step's `tasks_done` grows. A step whose tasks are all done
        settles: completed with its task's output (a map: the list of element outputs in
        index order, over the size limit: the step fails with a SerializationError error)
        or skipped with the task's reason. Then its dependents' `remaining_deps` drop; each
        that reaches 0 is decided and applied; the run's `remaining_steps` drop, and at 0
        the run completes with `run_output`. Returns the ids of the jobs whose completion
        counted (a fenced-out one changes nothing).

        With `claim`, up to `claim.limit` of the task jobs this call made available on
        `claim.queue` are claimed for `claim.instance_id` in the same transaction (fenced by
        its incarnation, like `claim_jobs`) and put in `claim.claimed`: the finishing
        instance runs the next step at once instead of waiting for a wake-up and a claim.
        """
        ...

    def get_step_states(self, workflow_id: str) -> dict[str, StepState]:
        """The run's steps by name, in topological order ({} for an unknown run or one
        run in-process). `attempts` includes tasks still running."""
        ...

    def fail_run(self, workflow_id: str, error: dict[str, Any]) -> bool:
        """Fail a running distributed run from outside (e.g. no instance serves its
        definition): the sweep described above, without a culprit step. False (nothing
        written) when the run is unknown or already finished."""
        ...

    def cancel_run(self, workflow_id: str) -> RunRecord | None:
        """Cancel a running distributed run: the sweep above without a culprit step, the run
        ending `cancelled`; returns the run as it then is (None when unknown). Raises
        RunStateError, naming the run and its state, when it is finished or was not started
        with start_run. A completion racing it either settles first (the run may complete)
        or counts nothing afterwards: one transaction wins and the run's state says which."""
        ...

    def wait_for_run(self, workflow_id: str, timeout: float | None) -> RunRecord | None:
        """Block until the run is finished or `timeout` seconds passed; return the run as
        it then is (None when unknown). PostgreSQL waits on LISTEN/NOTIFY (the finishing
        transaction notifies), the memory backend on a condition, SQLite polls briefly."""
        ...

    def signal_run(
        self,
        plans: Mapping[str, FlowPlan],
        workflow_id: str,
        step: str,
        payload: Any,
        *,
        connection: Any = None,
    ) -> bool:
        """Deliver a signal to wait_for step `step` of a running run, in one transaction
        (the caller's with `connection`). The run's row is locked first; its plan is
        `plans[run.fingerprint]` (SignalError naming the flow when missing: the process
        must define the flow). `ready.check_signal` names what is wrong with the run or
        step. The signal is stored once per (run, step) in `pgflow_signals`; a second one
        raises SignalError (`ready.refused_signal`), nothing written.

        The step waiting (started): it completes with `payload` as its output (tasks_done
        1), its timeout task is cancelled (flagged when executing: its completion then
        counts nothing), and its dependents are settled in the same transaction (their
        tasks inserted, queues woken at commit); returns True. The step still pending: the
        signal is only stored, and used when the step becomes ready (a `Wait` decision
        completes it at once with the stored payload); returns False. The step finished
        (skipped or failed by its timeout, cancelled): SignalError, nothing stored.
        SerializationError (nothing written) for a payload that is not JSON or too big."""
        ...

    def resume_run(self, plan: FlowPlan, workflow_id: str) -> RunRecord:
        """Continue a failed or cancelled distributed run from its frontier, in one
        transaction, and return it (running). Completed and skipped steps are kept; every
        other step goes back to pending (error, timings and counters cleared) with
        `remaining_deps` = its dependencies not completed or skipped; the run is running
        again (error and finished_at cleared, remaining_steps = steps not kept); the steps
        whose dependencies are all settled are decided like at start. A map keeps the
        element outputs already stored: only the missing elements get new task jobs (with
        fresh attempts), tasks_done starts at the kept count (all kept: it completes at
        once). A sub-flow step whose latest child run failed or was cancelled resumes that
        child the same way (recursively) and waits for it; otherwise a new child starts.
        RunStateError naming the run and its state when it is unknown, running, completed
        or not a distributed run (two resumes at once: the second is told it is running);
        DefinitionError when `plan`'s fingerprint is not the run's."""
        ...

    def restart_run(
        self,
        plan: FlowPlan,
        workflow_id: str,
        *,
        new_id: str,
        rerun: Collection[str],
        input: Any,
    ) -> RunStart:
        """Start run `new_id` of `plan` linked to finished run `workflow_id`
        (`restart_of`), in one transaction: `input` is its input; every step of the old run
        that completed or was skipped and is not in `rerun` (`ready.restart_steps`) is
        copied as it was (state, output, skip reason, counters, timings); the other steps
        are pending and the ready ones are decided like at start. RunStateError when the old
        run is unknown, running or not distributed; DefinitionError when `plan`'s
        fingerprint is not the old run's."""
        ...

    def expire_runs(self, limit: int = 100) -> list[str]:
        """Fail up to `limit` running runs whose `deadline_at` has passed (the database's
        clock), each with `ready.deadline_error` through the failure sweep (children
        included); return their ids. Called by the leader every few seconds."""
        ...

    def running_flows(self) -> list[tuple[str, str, int]]:
        """(flow name, fingerprint, count) of running distributed runs, for the leader's
        check that some online instance serves each definition."""
        ...

    def running_flow_runs(self, flow: str, fingerprint: str, limit: int = 100) -> list[str]:
        """The workflow_ids of up to `limit` running distributed runs of flow `flow` started
        with definition `fingerprint` (the runs `running_flows` counts under that pair),
        oldest started first; in-process runs are left out. A narrow read (no payloads) for
        the leader, which fails the runs no online instance serves: failing the returned
        runs and asking again pages through them all."""
        ...


@runtime_checkable
class Backend(RunStore, JobQueue, Protocol):
    """A complete storage backend: runs, jobs, instances, plus its own lifecycle."""

    #: The URL it was opened with, password masked; used in messages and logs.
    url: str

    def migrate(self) -> None:
        """Create or upgrade the schema; idempotent and safe when run concurrently."""
        ...

    def check_schema(self) -> None:
        """Raise BackendError saying what to do when the schema is missing or outdated."""
        ...

    def close(self) -> None:
        """Release connections; the backend is unusable afterwards."""
        ...
