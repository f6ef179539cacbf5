"""SQLBackend: the backend protocol on SQLAlchemy Core, shared by SQLite and PostgreSQL.

Each operation is one short transaction and, where possible, one statement. Times are
always the database's (`db_now()`), and every write about a claimed job is fenced by its
attempt. Subclasses supply the engine setup, the transaction guard, notifications, the
listener and, where the dialect allows a faster one, the bulk insert.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import attrs
from sqlalchemy import Connection, Engine, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from pgflow.backend import JobListener, RunStart
from pgflow.errors import BackendError, DefinitionError, JobStateError
from pgflow.identifiers import (
    validate_cron_name,
    validate_instance_id,
    validate_queue,
    validate_worker_name,
    validate_workflow_id,
)
from pgflow.queue_config import Queue
from pgflow.records import (
    Instance,
    InstanceInfo,
    Job,
    JobCount,
    JobError,
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
    final_run_state,
)
from pgflow.schema import (
    PRIORITY_MAX,
    PRIORITY_MIN,
    SCHEMA_REVISION,
    VERSION_TABLE,
    jobs,
    runs,
)
from pgflow.serialization import (
    DEFAULT_MAX_PAYLOAD_BYTES,
    check_limit,
    check_size,
    dumps,
    dumps_job_field,
)
from pgflow.unique import unique_key
from pgflow_backends.rescue_messages import lost_incarnation, stopped_instance
from pgflow_backends.sql.errors import translate
from pgflow_backends.sql.flow_statements import flow_statements_for
from pgflow_backends.sql.flow_store import SQLFlowStore
from pgflow_backends.sql.flows import FlowSettler
from pgflow_backends.sql.partition_claims import KeyState, partition_claims_for
from pgflow_backends.sql.queue_statements import (
    PARTITION_WIDTH,
    partition_params,
    queue_statements_for,
)
from pgflow_backends.sql.rows import (
    JOB_COLUMNS,
    RUN_COLUMNS,
    instance_from_row,
    job_from_row,
    job_summary_from_row,
    run_from_row,
    step_from_row,
)
from pgflow_backends.sql.statements import Statements, statements_for
from pgflow_backends.sql.windows import counted_window

if TYPE_CHECKING:
    from pgflow_backends.sql.inspection import SQLInspection

__all__ = ["PreparedJob", "SQLBackend", "round_robin"]

logger = logging.getLogger("pgflow.backend")

_UNIQUE_RETRIES = 5
#: (queue, worker) pairs already validated; a small cache that keeps bulk inserts cheap.
_VALID_NAMES: set[tuple[str, str]] = set()


class PreparedJob:
    """A NewJob validated and encoded to bind parameters, before anything is written."""

    __slots__ = ("args", "job", "meta", "queue", "unique")

    def __init__(self, job: NewJob, limit: int | None = DEFAULT_MAX_PAYLOAD_BYTES) -> None:
        names = (job.queue, job.worker)
        if names not in _VALID_NAMES:  # a batch repeats the same few names
            validate_queue(job.queue)
            validate_worker_name(job.worker)
            if len(_VALID_NAMES) > 4096:
                _VALID_NAMES.clear()
            _VALID_NAMES.add(names)
        if job.scheduled_at is not None and job.schedule_in is not None:
            raise DefinitionError(
                f"job for {job.worker!r} sets both scheduled_at and schedule_in; choose one"
            )
        if not PRIORITY_MIN <= job.priority <= PRIORITY_MAX:
            raise DefinitionError(
                f"job for {job.worker!r}: priority must be between {PRIORITY_MIN} and "
                f"{PRIORITY_MAX}, got {job.priority!r}"
            )
        if job.max_attempts < 1:
            raise DefinitionError(
                f"job for {job.worker!r}: max_attempts must be >= 1, got {job.max_attempts!r}"
            )
        self.job = job
        self.queue = job.queue
        self.unique = job.unique
        worker = job.worker
        self.args = dumps_job_field(job.args, what="args", limit=limit, worker=worker)
        self.meta = (
            dumps_job_field(job.meta, what="meta", limit=limit, worker=worker) if job.meta else "{}"
        )

    @property
    def params(self) -> dict[str, Any]:
        """The bind parameters of Statements.insert_job / insert_jobs."""
        job = self.job
        return {
            "p_queue": job.queue,
            "p_worker": job.worker,
            "p_args": self.args,
            "p_meta": self.meta,
            "p_priority": job.priority,
            "p_max_attempts": job.max_attempts,
            "p_scheduled_at": job.scheduled_at,
            "p_schedule_in": job.schedule_in,
            "p_unique_key": None,
            "p_unique_release": bool(job.unique is not None and job.unique.while_unfinished),
            "p_workflow_id": None if job.task is None else job.task.workflow_id,
            "p_step": None if job.task is None else job.task.step,
            "p_task_index": None if job.task is None else job.task.index,
        }


def _encode_optional(value: Any, what: str, limit: int | None, owner: str) -> str | None:
    return None if value is None else dumps(value, what=what, limit=limit, owner=owner)


class SQLBackend(SQLFlowStore):
    """The whole backend protocol over an SQLAlchemy engine (see pgflow.backend)."""

    #: The URL it was opened with, password masked.
    url: str

    def __init__(
        self,
        engine: Engine,
        *,
        url: str,
        owns_engine: bool,
        max_payload_bytes: int | None = DEFAULT_MAX_PAYLOAD_BYTES,
    ) -> None:
        #: The largest JSON value (args, meta, result, input, output, error) written, in
        #: bytes; None for no limit. Checked before anything is written.
        self.max_payload_bytes = check_limit(max_payload_bytes)
        self.engine = engine
        self.url = url
        self._owns_engine = owns_engine
        self._closed = False
        self._s: Statements = statements_for(engine.dialect.name)
        self._f = flow_statements_for(engine.dialect.name)
        self._q = queue_statements_for(engine.dialect.name)
        self._p = partition_claims_for(engine.dialect.name)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"

    # -- hooks for the dialect subclasses -------------------------------------------------

    #: True when _insert_many also sends the notification (in the same statement).
    _bulk_notifies = False

    def _single(self) -> contextlib.AbstractContextManager[Connection]:
        """A connection for an operation that is a single statement, atomic by itself.

        One of pgflow's transactions (measured: autocommit saves nothing worth having when
        every commit waits for the WAL flush anyway).
        """
        return self._tx()

    def _read(self) -> contextlib.AbstractContextManager[Connection]:
        """A connection for a read that is a single SELECT."""
        return self._single()

    def _run_write(self) -> contextlib.AbstractContextManager[Connection]:
        """A transaction that writes workflow runs or steps."""
        return self._tx()

    def _guard(self) -> contextlib.AbstractContextManager[object]:
        """Held around each of pgflow's own transactions (SQLite: the in-process write lock)."""
        return contextlib.nullcontext()

    def _on_begin(self, connection: Connection) -> None:
        """Called first thing in each of pgflow's own transactions."""

    def _announce(self, connection: Connection, queues: set[str], *, own: bool) -> None:
        """Tell listeners that `queues` gained available jobs, once the transaction commits."""
        raise NotImplementedError

    def _after_commit(self, info: dict[Any, Any]) -> None:
        """Called with the connection's info dict after one of pgflow's own transactions
        committed."""

    def _insert_prepared(self, prepared: list[PreparedJob], connection: Any) -> list[Job] | None:
        """A dialect's faster path for an insert it can do alone, or None to take the
        general one (a transaction of its own or the caller's, unique keys)."""
        return None

    def _insert_many(self, connection: Connection, batch: Sequence[PreparedJob]) -> list[Job]:
        """Insert jobs that are not unique, returning them in input order."""
        rows = connection.execute(self._s.insert_jobs, [job.params for job in batch]).all()
        return [job_from_row(row) for row in rows]

    def _insert_tasks(self, connection: Connection, new: list[NewJob], *, own: bool) -> list[Job]:
        """Store a started step's task jobs in the settling transaction, announcing nothing
        (the settler announces what its successor claim leaves). No size limit: an
        envelope holds the run's input and outputs that were checked when stored."""
        return SQLBackend._insert_many(self, connection, [PreparedJob(job, None) for job in new])

    def listener(self) -> JobListener:
        raise NotImplementedError

    def _lock_queue(self, connection: Connection, queue: str) -> None:
        """Serialize the shaped claims of `queue` until the transaction ends (first thing in
        it). SQLite: BEGIN IMMEDIATE took the writer lock already."""

    def _token(self, ref: JobRef) -> datetime | None:
        """The claim time a fenced write must also match, or None to fence by attempt only
        (enough where claims are durable once returned: SQLite)."""
        return None

    # -- plumbing ---------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise BackendError(f"{self!r} is closed")

    @contextlib.contextmanager
    def _tx(self) -> Iterator[Connection]:
        """One of pgflow's own short transactions; driver errors become BackendError."""
        self._check_open()
        try:
            with self._guard():
                with self.engine.begin() as connection:
                    self._on_begin(connection)
                    yield connection
                    info = connection.info
                self._after_commit(info)
        except (DBAPIError, PoolTimeout) as exc:
            raise translate(exc, self.url) from exc

    @contextlib.contextmanager
    def _translated(self) -> Iterator[None]:
        try:
            yield
        except (DBAPIError, PoolTimeout) as exc:
            raise translate(exc, self.url) from exc

    def ping(self) -> None:
        """Connect once, raising BackendError (what to do, password masked) if that fails."""
        with self._tx() as connection:
            connection.execute(self._s.now)

    # -- lifecycle --------------------------------------------------------------------------

    def migrate(self) -> None:
        """Upgrade the schema to head: idempotent, and safe when processes race to do it."""
        from pgflow.migrations import upgrade  # Alembic loads only where migrations run

        self._check_open()
        with self._translated():
            upgrade(self.engine)

    def check_schema(self) -> None:
        """Raise BackendError saying what to do when the schema is missing or outdated."""
        self._check_open()
        with self._translated():
            if self._schema_is_current():
                return
            from pgflow.migrations import check_schema  # only to explain what is wrong

            check_schema(self.engine, self.url)

    def _schema_is_current(self) -> bool:
        """One query, no Alembic: does the version table hold exactly SCHEMA_REVISION?"""
        try:
            with self.engine.connect() as connection:
                found = (
                    connection.execute(
                        text(f"SELECT version_num FROM {VERSION_TABLE}")  # a constant name
                    )
                    .scalars()
                    .all()
                )
        except DBAPIError:
            return False  # no table, or no server: the full check says which
        return found == [SCHEMA_REVISION]

    def close(self) -> None:
        """Release connections (the engine's pool, unless the application owns the engine)."""
        if self._closed:
            return
        self._closed = True
        if self._owns_engine:
            self.engine.dispose()

    def inspection(self) -> SQLInspection:
        """The dashboard's reads of this store (`pgflow.inspection`)."""
        from pgflow_backends.sql.inspection import SQLInspection

        return SQLInspection(self)

    # -- runs -------------------------------------------------------------------------------

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
        params = {
            "p_workflow_id": validate_workflow_id(workflow_id),
            "p_workflow": workflow,
            "p_max_attempts": max_attempts,
            "p_input": dumps(
                input, what="input", limit=self.max_payload_bytes, owner=f"run {workflow_id!r}"
            ),
            "p_job_id": job_id,
            "p_fingerprint": fingerprint,
            "p_definition": dumps(definition, what="definition"),
        }
        with self._run_write() as connection:
            row = connection.execute(self._s.insert_run, params).first()
            if row is None:
                row = connection.execute(self._s.run, params).one()
                return RunStart(run_from_row(row), False)
            return RunStart(run_from_row(row), True)

    def start_attempt(self, workflow_id: str, attempt: int) -> bool:
        params = {"p_workflow_id": workflow_id, "p_attempt": attempt, "p_previous": attempt - 1}
        with self._run_write() as connection:
            return connection.execute(self._s.start_attempt, params).rowcount == 1

    def record_step(self, step: StepRecord) -> bool:
        limit, owner = self.max_payload_bytes, f"step {step.step!r} of run {step.workflow_id!r}"
        params = {
            "p_workflow_id": step.workflow_id,
            "p_step": step.step,
            "p_idx": step.index,
            "p_attempt": step.attempt,
            "p_outcome": step.outcome.value,
            "p_output": dumps(step.output, what="output", limit=limit, owner=owner),
            "p_error": _encode_optional(step.error, "error", limit, owner),
            "p_started_at": step.started_at,
            "p_duration": float(step.duration),
            "p_element": step.element,
        }
        with self._run_write() as connection:
            return connection.execute(self._s.record_step, params).rowcount == 1

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
        params = {
            "p_workflow_id": workflow_id,
            "p_attempt": attempt,
            "p_state": state.value,
            "p_output": dumps(output, what="output", limit=limit, owner=owner),
            "p_error": _encode_optional(error, "error", limit, owner),
        }
        with self._run_write() as connection:
            return connection.execute(self._s.finish_run, params).rowcount == 1

    def get_run(self, workflow_id: str) -> RunRecord | None:
        with self._read() as connection:
            row = connection.execute(self._s.run, {"p_workflow_id": workflow_id}).first()
        return None if row is None else run_from_row(row)

    def get_steps(self, workflow_id: str) -> list[StepRecord]:
        with self._read() as connection:
            rows = connection.execute(self._s.steps, {"p_workflow_id": workflow_id}).all()
        return [step_from_row(row) for row in rows]

    def list_runs(
        self,
        *,
        workflow: str | None = None,
        state: RunState | None = None,
        limit: int = 100,
        since: datetime | None = None,
    ) -> list[RunRecord]:
        statement = select(*RUN_COLUMNS)
        if since is not None:
            statement = statement.where(runs.c.started_at >= since)
        if workflow is not None:
            statement = statement.where(runs.c.workflow == workflow)
        if state is not None:
            statement = statement.where(runs.c.state == RunState(state).value)
        statement = statement.order_by(*self._s.runs_newest_first).limit(max(limit, 0))
        with self._read() as connection:
            rows = connection.execute(statement).all()
        return [run_from_row(row) for row in rows]

    # -- jobs -------------------------------------------------------------------------------

    def insert_jobs(self, jobs: Sequence[NewJob], *, connection: Any = None) -> list[Job]:
        """Insert all or none, in input order; with `connection`, inside the caller's
        transaction (not committed here). Unique jobs use INSERT ... ON CONFLICT DO NOTHING,
        then read the holder of the key: race-free, and never lost to a rolled-back rival."""
        limit = self.max_payload_bytes
        prepared = [PreparedJob(job, limit) for job in jobs]  # validates and encodes: may raise
        if not prepared:
            return []
        fast = self._insert_prepared(prepared, connection)
        if fast is not None:
            return fast
        if connection is None:
            unique = any(job.unique is not None for job in prepared)
            with self._tx() if unique else self._single() as own:
                return self._insert(own, prepared, own=True)
        if not isinstance(connection, Connection):
            raise TypeError(
                f"connection must be an SQLAlchemy Connection, not {type(connection).__name__}"
            )
        self._check_open()
        with self._translated():
            return self._insert(connection, prepared, own=False)

    def _insert(
        self, connection: Connection, prepared: list[PreparedJob], *, own: bool
    ) -> list[Job]:
        results: list[Job | None] = [None] * len(prepared)
        plain = [index for index, job in enumerate(prepared) if job.unique is None]
        if plain:
            stored = self._insert_many(connection, [prepared[index] for index in plain])
            for index, job in zip(plain, stored, strict=True):
                results[index] = job
            announced = self._bulk_notifies
        else:
            announced = False
        if len(plain) < len(prepared):
            now: datetime = connection.execute(self._s.now).scalar_one()
            for index, item in enumerate(prepared):
                if item.unique is None:
                    continue
                results[index] = self._insert_unique(connection, item, now)
        done = [job for job in results if job is not None]
        woken = {
            job.queue
            for job in done
            if job.state is JobState.AVAILABLE
            and not job.conflict
            and not (announced and job.unique_key is None)
        }
        if woken:
            self._announce(connection, woken, own=own)
        return done

    def _insert_unique(self, connection: Connection, item: PreparedJob, now: datetime) -> Job:
        params = dict(item.params, p_unique_key=unique_key(item.job, now))
        for _ in range(_UNIQUE_RETRIES):
            row = connection.execute(self._s.insert_job, params).first()
            if row is not None:
                return job_from_row(row)
            holder = connection.execute(self._s.job_by_unique_key, params).first()
            if holder is not None:
                return job_from_row(holder, conflict=True)
            # The holder finished (key released) or was pruned in between: try again.
        raise BackendError(f"unique insert kept racing on {self.url}; try again")

    def claim_jobs(
        self,
        queue: str,
        instance_id: str,
        limit: int,
        incarnation: str = "",
        *,
        shape: Queue | None = None,
    ) -> list[Job]:
        # The queue is only compared (bound, never stored), so any string simply matches none.
        validate_instance_id(instance_id)
        if limit <= 0:
            return []
        if shape is not None and shape.shapes_flow:
            return self._claim_shaped(queue, instance_id, limit, incarnation, shape)
        params = {
            "p_queue": queue,
            "p_instance": instance_id,
            "p_limit": limit,
            "p_incarnation": incarnation,
        }
        with self._single() as connection:
            rows = connection.execute(self._s.claim, params).all()
        claimed = [job_from_row(row) for row in rows]
        claimed.sort(key=lambda job: (-job.priority, job.scheduled_at, job.id))
        return claimed

    def complete_jobs(
        self, refs: Sequence[JobRef], results: Sequence[str | None] | None = None
    ) -> list[int]:
        if not refs:
            return []
        results = self._checked_results(refs, results)
        if results is None:
            with self._single() as connection:
                return self._complete(connection, refs)
        with self._tx() as connection:
            return self._complete_with_results(connection, refs, results)

    def _checked_results(
        self, refs: Sequence[JobRef], results: Sequence[str | None] | None
    ) -> Sequence[str | None] | None:
        """The results to store, size-checked before anything is written; None when there
        are none to store (the batch then takes the plain completion statement)."""
        if results is None:
            return None
        if len(results) != len(refs):
            raise ValueError(f"{len(refs)} refs but {len(results)} results")
        stored = False
        for ref, result in zip(refs, results, strict=True):
            if result is not None:
                check_size(
                    result, what="result", limit=self.max_payload_bytes, owner=f"job {ref.id}"
                )
                stored = True
        return results if stored else None

    def _complete_with_results(
        self, connection: Connection, refs: Sequence[JobRef], results: Sequence[str | None]
    ) -> list[int]:
        """Jobs without a result in one statement, each one with a result in its own."""
        plain = [ref for ref, result in zip(refs, results, strict=True) if result is None]
        done = self._complete(connection, plain) if plain else []
        for ref, result in zip(refs, results, strict=True):
            if result is None:
                continue
            params = {
                "p_id": ref.id,
                "p_attempt": ref.attempt,
                "p_claimed_at": self._token(ref),
                "p_result": result,
            }
            if connection.execute(self._s.complete_with_result, params).first() is not None:
                done.append(ref.id)
        return sorted(done)

    def _complete(self, connection: Connection, refs: Sequence[JobRef]) -> list[int]:
        params = {
            "p_ids": [ref.id for ref in refs],
            "p_refs": [(ref.id, ref.attempt) for ref in refs],
        }
        return sorted(connection.execute(self._s.complete, params).scalars())

    def fail_job(
        self, ref: JobRef, error: dict[str, Any], *, retry_in: float | None
    ) -> JobState | None:
        encoded = dumps(error, what="error", limit=self.max_payload_bytes, owner=f"job {ref.id}")
        fence = {"p_id": ref.id, "p_attempt": ref.attempt, "p_claimed_at": self._token(ref)}
        with self._tx() as connection:
            settler = self._settler(connection)
            # A task's run before its job: see FlowSettler.
            is_task = settler.lock_task_runs([ref.id])
            row = connection.execute(self._s.fenced_job, fence).first()
            if row is None:
                return None
            attempt, max_attempts, cancel_requested = row
            if cancel_requested:
                state = JobState.CANCELLED
            elif retry_in is None or attempt >= max_attempts:
                state = JobState.DISCARDED
            else:
                state = JobState.RETRYABLE
            if state is JobState.RETRYABLE:
                connection.execute(
                    self._s.retry,
                    {"p_id": ref.id, "p_error": encoded, "p_delay": max(retry_in or 0, 0.0)},
                )
            else:
                connection.execute(
                    self._s.finish_failed,
                    {"p_id": ref.id, "p_error": encoded, "p_state": state.value},
                )
                if is_task:
                    settler.job_ended(ref.id)
            return state

    def snooze_job(self, ref: JobRef, seconds: float) -> bool:
        delay = max(float(seconds), 0.0)
        state = JobState.SCHEDULED if delay > 0 else JobState.AVAILABLE
        params = {
            "p_id": ref.id,
            "p_attempt": ref.attempt,
            "p_claimed_at": self._token(ref),
            "p_state": state.value,
        }
        with self._tx() as connection:
            settler = self._settler(connection)
            is_task = settler.lock_task_runs([ref.id])
            row = connection.execute(self._s.snooze, dict(params, p_delay=delay)).first()
            if row is None:
                return False
            queue, meta = row
            if (meta or {}).get("cancel_requested"):
                connection.execute(self._s.cancel_snoozed, {"p_id": ref.id})
                if is_task:
                    settler.job_ended(ref.id)
                return True
            if state is JobState.AVAILABLE:
                self._announce(connection, {queue}, own=True)
            return True

    def cancel_job(self, job_id: int) -> Job | None:
        with self._tx() as connection:
            settler = self._settler(connection)
            is_task = settler.lock_task_runs([job_id])
            row = connection.execute(self._s.job_for_update, {"p_id": job_id}).first()
            if row is None:
                return None
            job = job_from_row(row)
            changed = None
            if job.state in (JobState.AVAILABLE, JobState.SCHEDULED, JobState.RETRYABLE):
                changed = connection.execute(self._s.cancel_waiting, {"p_id": job_id}).first()
            elif job.state is JobState.EXECUTING and not job.cancel_requested:
                meta = dumps({**job.meta, "cancel_requested": True}, what="meta")
                changed = connection.execute(
                    self._s.flag_cancel, {"p_id": job_id, "p_meta": meta}
                ).first()
            if changed is None:
                return job
            if is_task:
                settler.job_ended(job_id)
            return job_from_row(changed)

    def cancel_requested(self, job_ids: Sequence[int]) -> set[int]:
        if not job_ids:
            return set()
        with self._read() as connection:
            flagged = connection.execute(self._s.cancel_flagged, {"p_ids": list(job_ids)})
            return set(flagged.scalars())

    def stage_jobs(self, limit: int = 10_000) -> list[str]:
        if limit <= 0:
            return []
        with self._tx() as connection:
            queues = set(connection.execute(self._s.stage, {"p_limit": limit}).scalars())
            if queues:
                self._announce(connection, queues, own=True)
        return sorted(queues)

    def get_job(self, job_id: int) -> Job | None:
        with self._read() as connection:
            row = connection.execute(self._s.job, {"p_id": job_id}).first()
        return None if row is None else job_from_row(row)

    def retry_job(self, job_id: int) -> Job | None:
        with self._tx() as connection:
            row = connection.execute(self._s.job_for_update, {"p_id": job_id}).first()
            if row is None:
                return None
            job = job_from_row(row)
            if job.task is not None:
                raise JobStateError(
                    f"job {job_id} is a task of flow run {job.task.workflow_id!r} (step "
                    f"{job.task.step!r}); a flow's tasks cannot be retried one by one"
                )
            if job.state is JobState.EXECUTING:
                raise JobStateError(
                    f"job {job_id} is executing; it can be retried once it has finished "
                    "(cancel it first to stop it)"
                )
            if job.state is JobState.AVAILABLE:
                return job
            meta = {key: value for key, value in job.meta.items() if key != "cancel_requested"}
            params = {
                "p_id": job_id,
                "p_max_attempts": max(job.max_attempts, job.attempt + 1),
                "p_meta": dumps(meta, what="meta"),
            }
            retried = job_from_row(connection.execute(self._s.retry_job, params).one())
            self._announce(connection, {retried.queue}, own=True)
            return retried

    def list_executing(self, queue: str, instance_id: str, incarnation: str = "") -> list[Job]:
        params = {"p_queue": queue, "p_instance": instance_id, "p_incarnation": incarnation}
        with self._read() as connection:
            rows = connection.execute(self._s.executing_jobs, params).all()
        return [job_summary_from_row(row) for row in rows]

    def list_jobs(
        self,
        *,
        queue: str | None = None,
        state: JobState | None = None,
        worker: str | None = None,
        limit: int = 100,
    ) -> list[Job]:
        statement = select(*JOB_COLUMNS)
        if queue is not None:
            statement = statement.where(jobs.c.queue == queue)
        if state is not None:
            statement = statement.where(jobs.c.state == JobState(state).value)
        if worker is not None:
            statement = statement.where(jobs.c.worker == worker)
        statement = statement.order_by(jobs.c.id).limit(max(limit, 0))
        with self._read() as connection:
            rows = connection.execute(statement).all()
        return [job_from_row(row) for row in rows]

    def job_counts(self) -> list[JobCount]:
        with self._read() as connection:
            rows = connection.execute(self._s.job_counts).all()
        counts = [
            JobCount(queue=queue, state=state, reserved_by=reserved_by, count=count)
            for queue, state, reserved_by, count in rows
        ]
        counts.sort(key=lambda c: (c.queue, c.state.value, c.reserved_by or ""))
        return counts

    def prune_jobs(self, max_age: float, limit: int = 10_000) -> int:
        if limit <= 0:
            return 0
        params = {"p_age": -float(max_age), "p_limit": limit}
        with self._tx() as connection:
            old_runs = list(connection.execute(self._s.old_runs, params).scalars())
            if old_runs:
                connection.execute(self._f.delete_task_outputs, {"p_ids": old_runs})
                connection.execute(self._f.delete_signals, {"p_ids": old_runs})
                connection.execute(self._f.delete_step_states, {"p_ids": old_runs})
                connection.execute(self._s.delete_steps, {"p_ids": old_runs})
                connection.execute(self._s.delete_runs, {"p_ids": old_runs})
            return connection.execute(self._s.prune_jobs, params).rowcount

    # -- instances and leadership -----------------------------------------------------------

    def register_instance(self, info: InstanceInfo) -> RescueReport:
        validate_instance_id(info.instance_id)
        params = {
            "p_instance": info.instance_id,
            "p_hostname": info.hostname,
            "p_pid": info.pid,
            "p_queues": dumps(dict(info.queues), what="queues"),
            "p_incarnation": info.incarnation,
            "p_flows": dumps([list(pair) for pair in info.flows], what="flows"),
        }
        with self._tx() as connection:
            # First: the row lock that fenced claims of this id wait for (PostgreSQL). A claim
            # that committed before it is seen by `held_by` (a later statement, so a later
            # snapshot) and rescued; a claim after it re-checks the new incarnation: nothing.
            earlier = connection.execute(self._s.instance_status, params).first()
            connection.execute(self._s.register, params)
            if earlier is None or earlier[1] == info.incarnation:
                return RescueReport()
            settler = self._settler(connection)
            settler.lock(connection.execute(self._f.held_runs, params).scalars())
            held = connection.execute(self._s.held_by, params).all()
            report = self._rescue(connection, held, lost_incarnation, settler)
        self._log_rescue(report, [info.instance_id])
        return report

    def heartbeat(self, instance_id: str, incarnation: str = "") -> Liveness:
        params = {"p_instance": instance_id}
        with self._tx() as connection:
            row = connection.execute(self._s.instance_liveness, params).first()
            if row is None:
                return Liveness.PRESUMED_DEAD
            status, registered = row
            if incarnation and registered != incarnation:
                return Liveness.DISPLACED
            connection.execute(self._s.heartbeat, params)
            return Liveness.ALIVE if status == "online" else Liveness.PRESUMED_DEAD

    def mark_offline(self, instance_id: str, incarnation: str = "") -> None:
        params = {"p_instance": instance_id, "p_incarnation": incarnation}
        with self._single() as connection:
            connection.execute(self._s.mark_offline, params)

    def set_abandoned(self, instance_id: str, count: int) -> None:
        with self._single() as connection:
            connection.execute(self._s.set_abandoned, {"p_instance": instance_id, "p_count": count})

    def database_time(self) -> datetime:
        with self._read() as connection:
            now: datetime = connection.execute(self._s.now).scalar_one()
        return now

    def list_instances(self) -> list[Instance]:
        with self._read() as connection:
            rows = connection.execute(self._s.instances).all()
        return [instance_from_row(row) for row in rows]

    def rescue_stale(self, stale_after: float) -> RescueReport:
        with self._tx() as connection:
            stale = sorted(
                connection.execute(self._s.mark_stale, {"p_age": -float(stale_after)}).scalars()
            )
            settler = self._settler(connection)
            settler.lock(connection.execute(self._f.orphaned_runs).scalars())
            orphans = connection.execute(self._s.orphaned).all()
            report = self._rescue(connection, orphans, stopped_instance, settler)
        self._log_rescue(report, stale)
        return attrs.evolve(report, instances=tuple(stale))

    def _rescue(
        self,
        connection: Connection,
        orphans: Sequence[Any],
        why: Callable[[str | None], str],
        settler: FlowSettler,
    ) -> RescueReport:
        """Free jobs (rows of ORPHAN_COLUMNS) whose attempt was lost: available again,
        discarded when no attempt is left, cancelled when cancellation was requested."""
        if not orphans:
            return RescueReport()
        now: datetime = connection.execute(self._s.now).scalar_one()
        rescued: list[int] = []
        discarded: list[int] = []
        cancelled: list[int] = []
        woken: set[str] = set()
        for job_id, attempt, max_attempts, reserved_by, cancel_requested in orphans:
            lost = JobError(
                attempt=attempt,
                at=now,
                kind="rescued",
                message=why(reserved_by),
                instance_id=reserved_by,
            )
            encoded = dumps(lost.to_dict(), what="error")
            if cancel_requested or attempt >= max_attempts:
                state = "cancelled" if cancel_requested else "discarded"
                connection.execute(
                    self._s.finish_failed,
                    {"p_id": job_id, "p_error": encoded, "p_state": state},
                )
                (cancelled if state == "cancelled" else discarded).append(job_id)
            else:
                queue = connection.execute(
                    self._s.requeue, {"p_id": job_id, "p_error": encoded}
                ).scalar_one()
                rescued.append(job_id)
                woken.add(queue)
        for job_id in discarded + cancelled:
            settler.job_ended(job_id)
        if woken:
            self._announce(connection, woken, own=True)
        return RescueReport(
            rescued=tuple(rescued), discarded=tuple(discarded), cancelled=tuple(cancelled)
        )

    @staticmethod
    def _log_rescue(report: RescueReport, instances: Sequence[str]) -> None:
        if report.rescued or report.discarded or report.cancelled:
            logger.warning(
                "rescued %d, discarded %d and cancelled %d jobs of lost instances",
                len(report.rescued),
                len(report.discarded),
                len(report.cancelled),
                extra={
                    "instances": list(instances),
                    "rescued": list(report.rescued),
                    "discarded": list(report.discarded),
                    "cancelled": list(report.cancelled),
                },
            )

    def insert_cron_job(self, name: str, slot: datetime, job: NewJob) -> Job | None:
        validate_cron_name(name)
        prepared = [PreparedJob(job)]  # validates and encodes: may raise, nothing written
        params = {"p_name": name, "p_slot": slot}
        with self._tx() as connection:
            advanced = connection.execute(self._s.cron_advance, params).first()
            if advanced is None:
                advanced = connection.execute(self._s.cron_first, params).first()
            if advanced is None:
                return None  # this slot or a later one was enqueued already
            [stored] = self._insert(connection, prepared, own=True)
            return stored

    def acquire_leadership(self, instance_id: str, ttl: float) -> bool:
        validate_instance_id(instance_id)
        params = {"p_instance": instance_id, "p_ttl": float(ttl)}
        with self._single() as connection:
            return connection.execute(self._s.acquire, params).first() is not None

    def release_leadership(self, instance_id: str) -> None:
        with self._single() as connection:
            connection.execute(self._s.release, {"p_instance": instance_id})

    # -- flow control (issue 12) ------------------------------------------------------------

    def _claim_shaped(
        self, queue: str, instance_id: str, limit: int, incarnation: str, shape: Queue
    ) -> list[Job]:
        """A claim that keeps the queue's cluster-wide limits: serialized with the queue's
        other shaped claims, it reads what executes and the rate windows after the lock,
        claims within the budget left and records the starts, in one transaction."""
        q = self._q
        params: dict[str, Any] = {
            "p_queue": queue,
            "p_instance": instance_id,
            "p_incarnation": incarnation,
        }
        rate, per_rate = shape.rate_limit, shape.partition_rate_limit
        key = shape.partition_by
        if rate is not None:
            params["p_period"] = counted_window(rate[1])
        with self._tx() as connection:
            self._lock_queue(connection, queue)
            head = connection.execute(
                q.head(shape.global_limit is not None, rate is not None, key is not None), params
            ).one()
            at, blocked, _, executing, used = head[:5]
            if blocked:
                return []
            budget = limit
            if shape.global_limit is not None:
                budget = min(budget, shape.global_limit - executing)
            if rate is not None:
                budget = min(budget, rate[0] - used)
            if budget <= 0:
                return []
            params["p_at"] = at
            params["p_limit"] = budget
            windows = [counted_window(w[1]) for w in (rate, per_rate) if w is not None]
            if windows:
                connection.execute(q.prune_starts, dict(params, p_longest=max(windows)))
            if key is None:
                claimed = [job_from_row(row) for row in connection.execute(q.claim(), params)]
                claimed.sort(key=lambda job: (-job.priority, job.scheduled_at, job.id))
                parts = [""] * len(claimed)
            else:
                claimed, parts = self._claim_partitions(connection, params, shape, head)
            if windows and claimed:
                recorded = parts if per_rate is not None else [""] * len(claimed)
                connection.execute(
                    q.record_starts,
                    [dict(p_queue=queue, p_partition=part, p_at=at) for part in recorded],
                )
        return claimed

    def _claim_partitions(
        self, connection: Connection, params: dict[str, Any], shape: Queue, head: Any
    ) -> tuple[list[Job], list[str]]:
        """The partitioned part of a shaped claim (see partition_claims): key the jobs that
        need it, claim round robin, record the cursor and the keying."""
        key = shape.partition_by
        assert key is not None
        p = self._p
        cursor = head[2]
        through, swept = p.key_jobs(connection, params, key, KeyState(*head[5:9]))
        params = dict(params, p_cursor=cursor, **partition_params(key))
        if shape.partition_limit is not None:
            params["p_plimit"] = shape.partition_limit
        if shape.partition_rate_limit is not None:
            allowed, period = shape.partition_rate_limit
            params["p_prate_allowed"], params["p_prate_period"] = allowed, counted_window(period)
        rows = p.choose_and_claim(
            connection,
            params,
            cursor,
            shape.partition_limit is not None,
            shape.partition_rate_limit is not None,
        )
        claimed, parts = round_robin([(job_from_row(row[:-1]), row[-1]) for row in rows], cursor)
        progress = dict(
            params,
            p_cursor=parts[-1] if parts else cursor,
            p_key=key,
            p_through=through,
            p_swept=swept,
        )
        connection.execute(p.set_progress, progress)
        return claimed, parts

    def pause_queue(self, queue: str) -> None:
        validate_queue(queue)
        with self._tx() as connection:
            connection.execute(self._q.pause, {"p_queue": queue})

    def resume_queue(self, queue: str) -> None:
        validate_queue(queue)
        with self._tx() as connection:
            connection.execute(self._q.resume, {"p_queue": queue})
            self._announce(connection, {queue}, own=True)

    def hold_queue(self, queue: str, seconds: float, partition: str | None = None) -> None:
        validate_queue(queue)
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
            raise DefinitionError(
                f"hold_queue({queue!r}): seconds must be a number, got {seconds!r}"
            )
        if not math.isfinite(seconds):
            raise DefinitionError(f"hold_queue({queue!r}): seconds must be finite, got {seconds!r}")
        if seconds <= 0:
            return
        params = {"p_queue": queue, "p_seconds": float(seconds)}
        with self._tx() as connection:
            if partition is None:
                connection.execute(self._q.hold, params)
            else:
                params["p_partition"] = partition[:PARTITION_WIDTH]
                connection.execute(self._q.drop_expired_holds, params)
                connection.execute(self._q.hold_partition, params)

    def queue_controls(self) -> list[QueueControl]:
        # Reads only: no write lock (SQLite), no transaction of its own (PostgreSQL).
        with self._read() as connection:
            rows = connection.execute(self._q.controls).all()
            held = connection.execute(self._q.partition_holds).all()
        return _controls(rows, held)

    def queue_stats(self, queue: str, shape: Queue | None = None) -> QueueStats:
        params: dict[str, Any] = {"p_queue": queue}
        rate_used: int | None = None
        partitions: tuple[tuple[str, int, int], ...] = ()
        with self._read() as connection:
            executing, available = connection.execute(self._q.counts, params).one()
            rows = connection.execute(self._q.control, params).all()
            held = connection.execute(self._q.queue_partition_holds, params).all()
            if shape is not None and shape.rate_limit is not None:
                used = connection.execute(
                    self._q.rate_used, dict(params, p_period=shape.rate_limit[1])
                )
                rate_used = int(used.scalar_one())
            if shape is not None and shape.partition_by is not None:
                top = connection.execute(
                    self._q.top_partitions, dict(params, **partition_params(shape.partition_by))
                ).all()
                partitions = tuple((part, int(a), int(e)) for part, a, e in top)
        controls = _controls(rows, held)
        control = controls[0] if controls else QueueControl(queue=queue)
        return QueueStats(
            queue=queue,
            executing=int(executing),
            available=int(available),
            control=control,
            rate_used=rate_used,
            partitions=partitions,
        )


def _controls(rows: Sequence[Any], held: Sequence[Any]) -> list[QueueControl]:
    """QueueControls from rows of `controls` and `partition_holds`, by queue name."""
    holds: dict[str, dict[str, datetime]] = {}
    for queue, partition, until in held:
        holds.setdefault(queue, {})[partition] = until
    found = {
        queue: QueueControl(
            queue=queue,
            paused=bool(paused),
            paused_at=paused_at if paused else None,
            hold_until=hold_until,
            partition_holds=holds.get(queue, {}),
        )
        for queue, paused, paused_at, hold_until in rows
    }
    for queue, partitions in holds.items():
        if queue not in found:
            found[queue] = QueueControl(queue=queue, partition_holds=partitions)
    return [found[queue] for queue in sorted(found)]


def round_robin(
    claimed: Sequence[tuple[Job, str]], cursor: str | None
) -> tuple[list[Job], list[str]]:
    """Claimed jobs (with their partitions) in the order the round robin served them (round,
    then partition key from after `cursor`), and each one's partition; the last is the next
    cursor."""
    by_part: dict[str, list[Job]] = {}
    for job, part in claimed:
        by_part.setdefault(part, []).append(job)
    served: list[tuple[int, bool, str, Job]] = []
    for part, group in by_part.items():
        group.sort(key=lambda job: (-job.priority, job.scheduled_at, job.id))
        wrapped = cursor is not None and part <= cursor
        served.extend((index, wrapped, part, job) for index, job in enumerate(group))
    served.sort(key=lambda item: item[:3])
    return [item[3] for item in served], [item[2] for item in served]
