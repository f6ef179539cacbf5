"""InMemoryBackend: the whole backend protocol as a small, thread-safe model in one process.

One lock guards every table, so each operation is atomic like a SQL transaction; "now" comes
from a clock object, so a FakeClock drives due, stale and prune logic in tests. Values are
stored as JSON text, so serialisation errors and returned copies behave as in SQL backends.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Collection, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import attrs

from pgflow.backend import JobListener, RunStart
from pgflow.clock import SYSTEM_CLOCK, Clock
from pgflow.errors import BackendError, JobStateError
from pgflow.graph.ready import check_deadline
from pgflow.identifiers import (
    validate_cron_name,
    validate_instance_id,
    validate_queue,
    validate_workflow_id,
)
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
    final_run_state,
)
from pgflow.serialization import (
    DEFAULT_MAX_PAYLOAD_BYTES,
    check_limit,
    check_size,
    dumps,
)
from pgflow_backends.memory.cluster import InstanceTable
from pgflow_backends.memory.controls import ControlTable, claim_shaped, hold_seconds
from pgflow_backends.memory.flows import FlowTable
from pgflow_backends.memory.jobs import JobTable
from pgflow_backends.memory.listener import ListenerHub
from pgflow_backends.memory.runs import RunTable
from pgflow_backends.rescue_messages import lost_incarnation, stopped_instance

if TYPE_CHECKING:
    from pgflow.graph.shape import FlowPlan
    from pgflow.queue_config import Queue
    from pgflow_backends.memory.inspection import MemoryInspection


class InMemoryBackend:
    """Everything in this process's memory: for unit tests, demos and `pgflow.testing`.

    Nothing survives the process and nothing is shared with other processes; use SQLite or
    PostgreSQL for that. Thread-safe: workers in threads of one process can share it.
    """

    url = "memory://"

    def __init__(
        self,
        *,
        clock: Clock | None = None,
        max_payload_bytes: int | None = DEFAULT_MAX_PAYLOAD_BYTES,
    ) -> None:
        self.clock: Clock = clock if clock is not None else SYSTEM_CLOCK
        #: The largest JSON value written, in bytes (None: no limit), as in SQL backends.
        self.max_payload_bytes = check_limit(max_payload_bytes)
        self._lock = threading.Lock()
        self._hub = ListenerHub(threading.Condition(self._lock))
        self._jobs = JobTable()
        self._runs = RunTable()
        self._flows = FlowTable(self._jobs, self._runs)
        self._run_finished = threading.Condition(self._lock)  # wait_for_run waits on it
        self._instances = InstanceTable()
        self._controls = ControlTable()
        self._cron_slots: dict[str, datetime] = {}  # cron entry name -> last slot enqueued
        self._closed = False

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        clock: Clock | None = None,
        max_payload_bytes: int | None = DEFAULT_MAX_PAYLOAD_BYTES,
    ) -> InMemoryBackend:
        """Open "memory://" (the registry's entry point); any other URL is a BackendError."""
        parts = urlsplit(url) if isinstance(url, str) else None
        if parts is None or parts.scheme != "memory" or parts.netloc or parts.path or parts.query:
            raise BackendError(f"InMemoryBackend takes the URL 'memory://', not {url!r}")
        return cls(clock=clock, max_payload_bytes=max_payload_bytes)

    def __repr__(self) -> str:
        return f"InMemoryBackend(clock={self.clock!r})"

    # -- lifecycle -------------------------------------------------------------------------

    def migrate(self) -> None:
        """Nothing to do: the tables are Python objects that exist from construction on."""
        self._check_open()

    def check_schema(self) -> None:
        """Nothing to check: memory has no schema that could be missing or outdated."""
        self._check_open()

    def close(self) -> None:
        """Drop all data and wake any listener; later calls raise BackendError."""
        with self._lock:
            self._closed = True
            self._jobs = JobTable()
            self._runs = RunTable()
            self._flows = FlowTable(self._jobs, self._runs)
            self._instances = InstanceTable()
            self._controls = ControlTable()
            self._cron_slots = {}
            self._hub.close_all()
            self._run_finished.notify_all()

    # -- runs ------------------------------------------------------------------------------

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
        validate_workflow_id(workflow_id)
        encoded = dumps(
            input, what="input", limit=self.max_payload_bytes, owner=f"run {workflow_id!r}"
        )
        encoded_definition = self._runs.encode_definition(definition)
        with self._lock:
            self._check_open()
            return self._runs.start(
                workflow_id=workflow_id,
                workflow=workflow,
                input=encoded,
                max_attempts=max_attempts,
                job_id=job_id,
                fingerprint=fingerprint,
                definition=encoded_definition,
                now=self._now(),
            )

    def start_attempt(self, workflow_id: str, attempt: int) -> bool:
        with self._lock:
            self._check_open()
            return self._runs.start_attempt(workflow_id, attempt)

    def record_step(self, step: StepRecord) -> bool:
        limit, owner = self.max_payload_bytes, f"step {step.step!r} of run {step.workflow_id!r}"
        output = dumps(step.output, what="output", limit=limit, owner=owner)
        error = (
            None
            if step.error is None
            else dumps(step.error, what="error", limit=limit, owner=owner)
        )
        with self._lock:
            self._check_open()
            return self._runs.record_step(step, output, error)

    def finish_run(
        self,
        workflow_id: str,
        attempt: int,
        state: RunState,
        *,
        output: Any = None,
        error: dict[str, Any] | None = None,
    ) -> bool:
        state = final_run_state(state)
        limit, owner = self.max_payload_bytes, f"run {workflow_id!r}"
        encoded_output = dumps(output, what="output", limit=limit, owner=owner)
        encoded_error = (
            None if error is None else dumps(error, what="error", limit=limit, owner=owner)
        )
        with self._lock:
            self._check_open()
            return self._runs.finish(
                workflow_id, attempt, state, encoded_output, encoded_error, self._now()
            )

    def get_run(self, workflow_id: str) -> RunRecord | None:
        with self._lock:
            self._check_open()
            return self._runs.get(workflow_id)

    def get_steps(self, workflow_id: str) -> list[StepRecord]:
        with self._lock:
            self._check_open()
            return self._runs.steps(workflow_id)

    def list_runs(
        self,
        *,
        workflow: str | None = None,
        state: RunState | None = None,
        limit: int = 100,
        since: datetime | None = None,
    ) -> list[RunRecord]:
        with self._lock:
            self._check_open()
            return self._runs.select(workflow, state, limit, since)

    # -- jobs ------------------------------------------------------------------------------

    def insert_jobs(self, jobs: Sequence[NewJob], *, connection: Any = None) -> list[Job]:
        if connection is not None:
            raise BackendError(
                "InMemoryBackend cannot join an SQLAlchemy transaction (connection=...); "
                "use SQLiteBackend or PostgresBackend for transactional inserts"
            )
        with self._lock:
            self._check_open()
            stored, woken = self._jobs.insert(jobs, self._now(), self.max_payload_bytes)
            self._hub.announce(woken)
            return stored

    def claim_jobs(
        self,
        queue: str,
        instance_id: str,
        limit: int,
        incarnation: str = "",
        *,
        shape: Queue | None = None,
    ) -> list[Job]:
        with self._lock:
            self._check_open()
            if incarnation and not self._instances.holds(instance_id, incarnation):
                return []  # displaced (or never registered): the claim is fenced
            now = self._now()
            if self._controls.blocked(queue, now):
                return []  # paused or held: nothing starts
            if shape is None or not shape.shapes_flow:
                return self._jobs.claim(queue, instance_id, limit, now)
            return claim_shaped(self._jobs, self._controls, queue, instance_id, limit, now, shape)

    def complete_jobs(
        self, refs: Sequence[JobRef], results: Sequence[str | None] | None = None
    ) -> list[int]:
        if results is not None:
            if len(results) != len(refs):
                raise ValueError(f"{len(refs)} refs but {len(results)} results")
            for ref, result in zip(refs, results, strict=True):
                if result is not None:
                    check_size(
                        result, what="result", limit=self.max_payload_bytes, owner=f"job {ref.id}"
                    )
        with self._lock:
            self._check_open()
            return self._jobs.complete(refs, self._now(), results)

    def fail_job(
        self, ref: JobRef, error: dict[str, Any], *, retry_in: float | None
    ) -> JobState | None:
        encoded = dumps(error, what="error", limit=self.max_payload_bytes, owner=f"job {ref.id}")
        with self._lock:
            self._check_open()
            now = self._now()
            state = self._jobs.fail(ref, encoded, retry_in, now)
            self._tasks_ended([ref.id], now)
            return state

    def snooze_job(self, ref: JobRef, seconds: float) -> bool:
        with self._lock:
            self._check_open()
            now = self._now()
            state = self._jobs.snooze(ref, seconds, now)
            if state is None:
                return False
            self._tasks_ended([ref.id], now)
            if state is JobState.AVAILABLE:
                self._hub.announce([self._jobs.rows[ref.id].queue])
            return True

    def cancel_job(self, job_id: int) -> Job | None:
        with self._lock:
            self._check_open()
            now = self._now()
            job = self._jobs.cancel(job_id, now)
            self._tasks_ended([job_id], now)
            return None if job is None else self._jobs.get(job_id)

    def cancel_requested(self, job_ids: Sequence[int]) -> set[int]:
        with self._lock:
            self._check_open()
            return self._jobs.cancel_requested(job_ids)

    def stage_jobs(self, limit: int = 10_000) -> list[str]:
        with self._lock:
            self._check_open()
            queues = self._jobs.stage(limit, self._now())
            self._hub.announce(queues)
            return sorted(queues)

    def get_job(self, job_id: int) -> Job | None:
        with self._lock:
            self._check_open()
            return self._jobs.get(job_id)

    def retry_job(self, job_id: int) -> Job | None:
        with self._lock:
            self._check_open()
            row = self._jobs.rows.get(job_id)
            if row is not None and row.task is not None:
                raise JobStateError(
                    f"job {job_id} is a task of flow run {row.task.workflow_id!r} (step "
                    f"{row.task.step!r}); a flow's tasks cannot be retried one by one"
                )
            job, woken = self._jobs.retry(job_id, self._now())
            self._hub.announce(woken)
            return job

    def list_executing(self, queue: str, instance_id: str, incarnation: str = "") -> list[Job]:
        with self._lock:
            self._check_open()
            if incarnation and not self._instances.holds(instance_id, incarnation):
                return []
            return self._jobs.executing(queue, instance_id)

    def list_jobs(
        self,
        *,
        queue: str | None = None,
        state: JobState | None = None,
        worker: str | None = None,
        limit: int = 100,
    ) -> list[Job]:
        with self._lock:
            self._check_open()
            return self._jobs.select(queue, state, worker, limit)

    def job_counts(self) -> list[JobCount]:
        with self._lock:
            self._check_open()
            return self._jobs.counts()

    def prune_jobs(self, max_age: float, limit: int = 10_000) -> int:
        with self._lock:
            self._check_open()
            cutoff = self._now() - timedelta(seconds=max_age)
            self._runs.prune(cutoff, limit)
            self._flows.prune()
            return self._jobs.prune(cutoff, limit)

    # -- instances and leadership ----------------------------------------------------------

    def register_instance(self, info: InstanceInfo) -> RescueReport:
        validate_instance_id(info.instance_id)
        with self._lock:
            self._check_open()
            now = self._now()
            if not self._instances.register(info, now):
                return RescueReport()
            report, woken = self._jobs.rescue(
                lambda row: row.reserved_by == info.instance_id,
                lambda row: lost_incarnation(info.instance_id),
                now,
            )
            self._tasks_ended(report.discarded + report.cancelled, now)
            self._hub.announce(woken)
            return report

    def heartbeat(self, instance_id: str, incarnation: str = "") -> Liveness:
        with self._lock:
            self._check_open()
            return self._instances.heartbeat(instance_id, incarnation, self._now())

    def mark_offline(self, instance_id: str, incarnation: str = "") -> None:
        with self._lock:
            self._check_open()
            self._instances.mark_offline(instance_id, incarnation)

    def list_instances(self) -> list[Instance]:
        with self._lock:
            self._check_open()
            return self._instances.list()

    def set_abandoned(self, instance_id: str, count: int) -> None:
        with self._lock:
            self._check_open()
            self._instances.set_abandoned(instance_id, count)

    def rescue_stale(self, stale_after: float) -> RescueReport:
        with self._lock:
            self._check_open()
            now = self._now()
            stale = self._instances.mark_stale_offline(now - timedelta(seconds=stale_after))
            online = self._instances.online()
            report, woken = self._jobs.rescue(
                lambda row: row.reserved_by not in online,
                lambda row: stopped_instance(row.reserved_by),
                now,
            )
            self._tasks_ended(report.discarded + report.cancelled, now)
            self._hub.announce(woken)
            return attrs.evolve(report, instances=tuple(stale))

    def insert_cron_job(self, name: str, slot: datetime, job: NewJob) -> Job | None:
        validate_cron_name(name)
        with self._lock:
            self._check_open()
            last = self._cron_slots.get(name)
            if last is not None and last >= slot:
                return None  # this slot or a later one was enqueued already
            # May raise (bad or oversized job): then nothing changed.
            (stored,), woken = self._jobs.insert([job], self._now(), self.max_payload_bytes)
            self._cron_slots[name] = slot
            self._hub.announce(woken)
            return stored

    def acquire_leadership(self, instance_id: str, ttl: float) -> bool:
        with self._lock:
            self._check_open()
            return self._instances.acquire(instance_id, ttl, self._now())

    def release_leadership(self, instance_id: str) -> None:
        with self._lock:
            self._check_open()
            self._instances.release(instance_id)

    def listener(self) -> JobListener:
        self._check_open()
        return self._hub.listener()

    # -- flow control ----------------------------------------------------------------------

    def pause_queue(self, queue: str) -> None:
        validate_queue(queue)
        with self._lock:
            self._check_open()
            self._controls.pause(queue, self._now())

    def resume_queue(self, queue: str) -> None:
        validate_queue(queue)
        with self._lock:
            self._check_open()
            self._controls.resume(queue, self._now())
            self._hub.announce([queue])

    def hold_queue(self, queue: str, seconds: float, partition: str | None = None) -> None:
        validate_queue(queue)
        seconds = hold_seconds(seconds)
        if partition is not None and not isinstance(partition, str):
            raise TypeError(f"hold_queue: partition must be a str or None, got {partition!r}")
        with self._lock:
            self._check_open()
            now = self._now()
            self._controls.hold(queue, now + timedelta(seconds=seconds), partition, now)

    def queue_controls(self) -> list[QueueControl]:
        with self._lock:
            self._check_open()
            return self._controls.snapshots(self._now())

    def queue_stats(self, queue: str, shape: Queue | None = None) -> QueueStats:
        with self._lock:
            self._check_open()
            now = self._now()
            rate_used = None
            if shape is not None and shape.rate_limit is not None:
                rate_used = self._controls.used(queue, None, shape.rate_limit[1], now)
            partitions: tuple[tuple[str, int, int], ...] = ()
            if shape is not None and shape.partition_by is not None:
                partitions = self._jobs.top_partitions(queue, shape.partition_by, 10)
            executing, available = self._jobs.queue_counts(queue)
            return QueueStats(
                queue=queue,
                executing=executing,
                available=available,
                control=self._controls.snapshot(queue, now),
                rate_used=rate_used,
                partitions=partitions,
            )

    # -- distributed flow runs (FlowStore) -------------------------------------------------

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
        _refuse_connection(connection, "transactional starts")
        validate_workflow_id(workflow_id)
        if deadline is not None:
            check_deadline(f"run {workflow_id!r}", deadline)
        encoded = dumps(
            input, what="input", limit=self.max_payload_bytes, owner=f"run {workflow_id!r}"
        )
        definition = self._runs.encode_definition(plan.definition)
        with self._lock:
            self._check_open()
            now = self._now()
            started = self._flow_table().start(
                plan,
                workflow_id,
                encoded,
                max_attempts,
                now,
                definition=definition,
                deadline_at=None if deadline is None else now + timedelta(seconds=deadline),
            )
            self._after_flow_change()
            return started

    def complete_tasks(
        self,
        completions: Sequence[TaskCompletion],
        plans: Mapping[str, FlowPlan],
        *,
        claim: SuccessorClaim | None = None,
    ) -> list[int]:
        for completion in completions:
            if completion.output is not None:
                check_size(
                    completion.output,
                    what="output",
                    limit=self.max_payload_bytes,
                    owner=f"job {completion.ref.id}",
                )
        with self._lock:
            self._check_open()
            now = self._now()
            self._flows.inserted = []
            counted = self._flow_table().complete(completions, now)
            inserted, self._flows.inserted = self._flows.inserted, []
            if claim is not None and claim.limit > 0 and inserted and self._may_claim(claim):
                claim.claimed = self._jobs.claim_ids(
                    inserted, claim.queue, claim.instance_id, claim.limit, now
                )
                # Wake only for what the claim left: nobody else need wake for the rest.
                self._flows.woken = {
                    self._jobs.rows[job_id].queue
                    for job_id in inserted
                    if self._jobs.rows[job_id].state is JobState.AVAILABLE
                }
            self._after_flow_change()
            return counted

    def _may_claim(self, claim: SuccessorClaim) -> bool:
        """A successor claim is fenced by the incarnation like claim_jobs, and refused on a
        paused or held queue (lock held)."""
        if claim.incarnation and not self._instances.holds(claim.instance_id, claim.incarnation):
            return False
        return not self._controls.blocked(claim.queue, self._now())

    def get_step_states(self, workflow_id: str) -> dict[str, StepState]:
        with self._lock:
            self._check_open()
            return self._flows.step_states(workflow_id)

    def fail_run(self, workflow_id: str, error: dict[str, Any]) -> bool:
        dumps(error, what="error", limit=self.max_payload_bytes, owner=f"run {workflow_id!r}")
        with self._lock:
            self._check_open()
            failed = self._flows.fail_run(workflow_id, error, self._now())
            self._after_flow_change()
            return failed

    def cancel_run(self, workflow_id: str) -> RunRecord | None:
        with self._lock:
            self._check_open()
            self._flows.cancel_run(workflow_id, self._now())
            self._after_flow_change()
            return self._runs.get(workflow_id)

    def wait_for_run(self, workflow_id: str, timeout: float | None) -> RunRecord | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while True:
                self._check_open()
                run = self._runs.get(workflow_id)
                if run is None or run.state is not RunState.RUNNING:
                    return run
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return run
                self._run_finished.wait(left)

    def signal_run(
        self,
        plans: Mapping[str, FlowPlan],
        workflow_id: str,
        step: str,
        payload: Any,
        *,
        connection: Any = None,
    ) -> bool:
        _refuse_connection(connection, "transactional signals")
        owner = f"signal {step!r} of run {workflow_id!r}"
        encoded = dumps(payload, what="payload", limit=self.max_payload_bytes, owner=owner)
        with self._lock:
            self._check_open()
            self._flows.inserted = []
            delivered = self._flow_table().signal(plans, workflow_id, step, encoded, self._now())
            self._flows.inserted = []
            self._after_flow_change()
            return delivered

    def resume_run(self, plan: FlowPlan, workflow_id: str) -> RunRecord:
        with self._lock:
            self._check_open()
            self._flows.inserted = []
            run = self._flow_table().resume(plan, workflow_id, self._now())
            self._flows.inserted = []
            self._after_flow_change()
            return run

    def restart_run(
        self,
        plan: FlowPlan,
        workflow_id: str,
        *,
        new_id: str,
        rerun: Collection[str],
        input: Any,
    ) -> RunStart:
        validate_workflow_id(new_id)
        encoded = dumps(input, what="input", limit=self.max_payload_bytes, owner=f"run {new_id!r}")
        definition = self._runs.encode_definition(plan.definition)
        with self._lock:
            self._check_open()
            self._flows.inserted = []
            started = self._flow_table().restart(
                plan, workflow_id, new_id, rerun, encoded, self._now(), definition=definition
            )
            self._flows.inserted = []
            self._after_flow_change()
            return started

    def expire_runs(self, limit: int = 100) -> list[str]:
        with self._lock:
            self._check_open()
            self._flows.inserted = []
            expired = self._flow_table().expire(limit, self._now())
            self._flows.inserted = []
            self._after_flow_change()
            return expired

    def running_flows(self) -> list[tuple[str, str, int]]:
        with self._lock:
            self._check_open()
            return self._flows.running()

    def running_flow_runs(self, flow: str, fingerprint: str, limit: int = 100) -> list[str]:
        with self._lock:
            self._check_open()
            return self._flows.running_ids(flow, fingerprint, limit)

    def _flow_table(self) -> FlowTable:
        """The flow table, held to the payload limit as it is now (it may be changed after
        construction). Called with the lock held."""
        self._flows.limit = self.max_payload_bytes
        return self._flows

    def _tasks_ended(self, job_ids: Iterable[int], now: datetime) -> None:
        """Jobs just changed state: a flow task that ended discarded or cancelled fails its
        run, in the same locked section. Called with the lock held."""
        for job_id in job_ids:
            self._flows.job_ended(job_id, now)
        self._after_flow_change()

    def _after_flow_change(self) -> None:
        """Wake the queues that gained tasks and the waiters of runs that finished."""
        if self._flows.woken:
            self._hub.announce(self._flows.woken)
            self._flows.woken = set()
        if self._flows.finished:
            self._flows.finished = False
            self._run_finished.notify_all()

    # -- readers for users' unit tests -----------------------------------------------------

    def inspection(self) -> MemoryInspection:
        """The dashboard's reads of this store (`pgflow.inspection`)."""
        from pgflow_backends.memory.inspection import MemoryInspection

        return MemoryInspection(self)

    def jobs(self) -> list[Job]:
        """Every job, in id order, with no limit (a convenience for assertions in tests)."""
        with self._lock:
            self._check_open()
            return self._jobs.select(None, None, None, None)

    def runs(self) -> list[RunRecord]:
        """Every run, newest first, with no limit (a convenience for assertions in tests)."""
        with self._lock:
            self._check_open()
            return self._runs.select(None, None, None)

    def database_time(self) -> datetime:
        """This backend's clock: the FakeClock's time in tests."""
        with self._lock:
            self._check_open()
            return self._now()

    # -- internals -------------------------------------------------------------------------

    def _now(self) -> datetime:
        now = self.clock.now()
        if now.tzinfo is None:
            raise BackendError(f"the clock {self.clock!r} returned a naive datetime {now!r}")
        return now

    def _check_open(self) -> None:
        if self._closed:
            raise BackendError("this InMemoryBackend is closed; create a new one")


def _refuse_connection(connection: Any, what: str) -> None:
    """Memory has no SQL transaction to join: say which backends do."""
    if connection is not None:
        raise BackendError(
            "InMemoryBackend cannot join an SQLAlchemy transaction (connection=...); "
            f"use SQLiteBackend or PostgresBackend for {what}"
        )
