"""PostgresBackend: pgflow on PostgreSQL with psycopg 3, for many instances sharing one database.

Claiming is one `UPDATE ... WHERE id IN (SELECT ... FOR UPDATE SKIP LOCKED) RETURNING`, so
concurrent claimers never wait on each other nor get the same job. Inserts (and staging,
snoozes, rescues) send `NOTIFY pgflow_jobs` with the queue name only, inside the same
transaction, so a listener wakes exactly when the jobs become visible. Bulk inserts send
arrays through one `INSERT ... SELECT FROM unnest(...)`, and completions one `UPDATE ...
FROM unnest(ids, attempts)`, so a batch costs one round trip. A claim with a flow-control
shape (`pgflow.Queue`) runs in a transaction that first takes `pg_advisory_xact_lock` on the
queue's name: the queue's shaped claims serialize across instances (see queue_statements).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any

import psycopg
from sqlalchemy import URL, Connection, Engine, create_engine, text
from sqlalchemy.exc import DBAPIError, NoSuchModuleError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from pgflow.backend import JobListener
from pgflow.errors import BackendError
from pgflow.identifiers import validate_instance_id
from pgflow.queue_config import Queue
from pgflow.records import Job, JobRef, JobState, NewJob, RunRecord
from pgflow.serialization import DEFAULT_MAX_PAYLOAD_BYTES
from pgflow_backends.postgres_flow_rows import PostgresFlowRows
from pgflow_backends.postgres_run_waits import RUN_CHANNEL, RunWaits
from pgflow_backends.postgres_shaped import (
    KEYING,
    QUEUE_BUDGET,
    SETTINGS_AND_LOCK,
    partitioned_claim_sql,
    positional,
)
from pgflow_backends.sql.base import PreparedJob, SQLBackend, round_robin
from pgflow_backends.sql.driver import DriverConnections
from pgflow_backends.sql.errors import translate
from pgflow_backends.sql.flow_rows import FlowRows
from pgflow_backends.sql.partition_claims import SWEEP_SECONDS
from pgflow_backends.sql.pool import ping_when_idle
from pgflow_backends.sql.queue_statements import QUEUE_LOCK_CLASS
from pgflow_backends.sql.rows import job_from_driver_row, stored_copy, utc
from pgflow_backends.sql.urls import mask, parse
from pgflow_backends.sql.windows import counted_window

__all__ = ["CHANNEL", "PostgresBackend", "PostgresListener"]

#: The NOTIFY channel; payloads are queue names, never job arguments.
CHANNEL = "pgflow_jobs"

logger = logging.getLogger("pgflow.backend.postgres")


def _bulk_insert_sql(*, tasks: bool, notify: bool = True) -> str:
    """The bulk insert; with `tasks`, also the task columns of a flow run's task jobs;
    without `notify`, the caller announces the queues itself (after a successor claim)."""
    notify_queues = (
        f"SELECT count(pg_notify('{CHANNEL}', q.queue)) AS n "
        "FROM (SELECT DISTINCT queue FROM ins WHERE state = 'available') AS q"
        if notify
        else "SELECT 0 AS n"
    )
    task_columns = ", workflow_id, step, task_index" if tasks else ""
    task_values = ", t.workflow_id, t.step, t.task_index" if tasks else ""
    task_arrays = (
        ", CAST(%(runs)s AS TEXT[]), CAST(%(steps)s AS TEXT[]), CAST(%(indexes)s AS INTEGER[])"
        if tasks
        else ""
    )
    task_names = ", workflow_id, step, task_index" if tasks else ""
    return f"""
    WITH ins AS (
        INSERT INTO pgflow_jobs (queue, worker, args, meta, errors, state, priority, attempt,
                                 max_attempts, scheduled_at, inserted_at{task_columns})
        SELECT t.queue, t.worker, CAST(t.args AS JSONB), CAST(t.meta AS JSONB), '[]'::jsonb,
               CASE WHEN t.at > now() THEN 'scheduled' ELSE 'available' END,
               t.priority, 0, t.max_attempts, t.at, now(){task_values}
        FROM (
            SELECT u.*, COALESCE(u.sa, now() + make_interval(secs => u.si), now()) AS at
            FROM unnest(CAST(%(queues)s AS TEXT[]), CAST(%(workers)s AS TEXT[]),
                        CAST(%(args)s AS TEXT[]), CAST(%(metas)s AS TEXT[]),
                        CAST(%(priorities)s AS INTEGER[]), CAST(%(max_attempts)s AS INTEGER[]),
                        CAST(%(scheduled_at)s AS TIMESTAMPTZ[]), CAST(%(schedule_in)s AS FLOAT8[])
                        {task_arrays})
                 WITH ORDINALITY AS u(queue, worker, args, meta, priority, max_attempts,
                                      sa, si{task_names}, ord)
        ) AS t
        ORDER BY t.ord
        RETURNING id, queue, state, scheduled_at
    ), notified AS (
        {notify_queues}
    )
    SELECT 0, now() FROM notified
    UNION ALL
    SELECT ins.id, CASE WHEN ins.scheduled_at = now() THEN NULL ELSE ins.scheduled_at END
    FROM ins
"""


# One statement for a whole batch: arrays in; out come the ids (drawn in input order) with
# the scheduled time only where it is not now(), since parsing 2,000 timestamps costs more
# than the insert itself, plus one row (id 0) carrying now(). The same statement notifies
# each queue that gained available jobs.
_BULK_INSERT = _bulk_insert_sql(tasks=False)
#: The same for a started step's task jobs (inserted by a settle, in its transaction).
_BULK_INSERT_TASKS = _bulk_insert_sql(tasks=True)
#: ...without notifying: a settle announces what its successor claim did not take.
_BULK_INSERT_TASKS_QUIET = _bulk_insert_sql(tasks=True, notify=False)

# One job (the common app.insert(job) call): scalar parameters instead of eight one-element
# arrays, which spares the server the unnest and the UNION (~60 us of a ~350 us insert).
# The row carries the transaction's now() beside the id, like _BULK_INSERT's id-0 row.
# Its parameters are PreparedJob.params (the general insert's; the unique ones go unused).
_INSERT_ONE = f"""
    WITH ins AS (
        INSERT INTO pgflow_jobs (queue, worker, args, meta, errors, state, priority, attempt,
                                 max_attempts, scheduled_at, inserted_at)
        SELECT %(p_queue)s, %(p_worker)s, CAST(%(p_args)s AS JSONB), CAST(%(p_meta)s AS JSONB),
               '[]'::jsonb, CASE WHEN t.at > now() THEN 'scheduled' ELSE 'available' END,
               %(p_priority)s, 0, %(p_max_attempts)s, t.at, now()
        FROM (SELECT COALESCE(CAST(%(p_scheduled_at)s AS TIMESTAMPTZ),
                              now() + make_interval(secs => CAST(%(p_schedule_in)s AS FLOAT8)),
                              now()) AS at) AS t
        RETURNING id, queue, state, scheduled_at
    ), notified AS (
        SELECT count(pg_notify('{CHANNEL}', ins.queue)) AS n
        FROM ins WHERE ins.state = 'available'
    )
    SELECT ins.id, now(),
           CASE WHEN ins.scheduled_at = now() THEN NULL ELSE ins.scheduled_at END, notified.n
    FROM ins, notified
"""


def _first(row: Any) -> Any:
    return row[0]


def _shape_params(
    queue: str, instance_id: str, limit: int, incarnation: str, shape: Queue
) -> dict[str, Any]:
    """The parameters every shaped claim statement shares: who claims, how many, the queue's
    global limit and its rate window (counted with the margin)."""
    rate = shape.rate_limit
    return {
        "p_class": QUEUE_LOCK_CLASS,
        "p_queue": queue,
        "p_instance": instance_id,
        "p_incarnation": incarnation,
        "p_limit": limit,
        "p_global": shape.global_limit,
        "p_allowed": None if rate is None else rate[0],
        "p_period": None if rate is None else counted_window(rate[1]),
    }


def _claim_order(job: Job) -> tuple[int, datetime, int]:
    return (-job.priority, job.scheduled_at, job.id)


def _text_array(values: Sequence[str]) -> str:
    """A PostgreSQL array literal of quoted, escaped strings: one bind parameter that the
    server parses, far cheaper than adapting a Python list element by element.

    The values are validated names and pgflow's own JSON text, neither of which can hold a
    NUL character, so NUL can separate them while escaping all of them in one pass.
    """
    joined = "\0".join(values)
    escaped = joined.replace("\\", "\\\\").replace('"', '\\"').replace("\0", '","')
    return '{"' + escaped + '"}' if values else "{}"


def _number_array(values: Sequence[int | float | None]) -> str:
    return "{" + ",".join("NULL" if value is None else repr(value) for value in values) + "}"


def _time_array(values: Sequence[datetime | None]) -> str:
    return "{" + ",".join("NULL" if v is None else f'"{v.isoformat()}"' for v in values) + "}"


def _bulk_params(batch: Sequence[PreparedJob]) -> dict[str, str]:
    new = [item.job for item in batch]
    return {
        "queues": _text_array([job.queue for job in new]),
        "workers": _text_array([job.worker for job in new]),
        "args": _text_array([item.args for item in batch]),
        "metas": _text_array([item.meta for item in batch]),
        "priorities": _number_array([job.priority for job in new]),
        "max_attempts": _number_array([job.max_attempts for job in new]),
        "scheduled_at": _time_array([job.scheduled_at for job in new]),
        "schedule_in": _number_array([job.schedule_in for job in new]),
    }


def _task_params(batch: Sequence[PreparedJob]) -> dict[str, str]:
    tasks = [item.job.task for item in batch]
    return {
        "runs": _nullable_text_array([t.workflow_id if t else None for t in tasks]),
        "steps": _nullable_text_array([t.step if t else None for t in tasks]),
        "indexes": _number_array([t.index if t else None for t in tasks]),
    }


def _inserted(rows: Sequence[Any], batch: Sequence[PreparedJob]) -> list[Job]:
    """The stored jobs, in input order, from _BULK_INSERT's rows."""
    rows = sorted(rows, key=_first)
    now: datetime = utc(rows[0][1])  # the id-0 row: the transaction's now()
    jobs: list[Job] = []
    append, trusted = jobs.append, Job.trusted
    available, scheduled = JobState.AVAILABLE, JobState.SCHEDULED
    for (job_id, at), item in zip(rows[1:], batch, strict=True):
        job = item.job
        if at is None:
            scheduled_at, state = now, available
        else:
            scheduled_at = utc(at)
            state = scheduled if scheduled_at > now else available
        meta = job.meta
        # Positional: this loop runs once per inserted job (keywords cost ~0.5 us here).
        append(
            trusted(
                job_id,
                job.queue,
                job.worker,
                stored_copy(job.args, item.args),
                state,
                job.priority,
                0,
                job.max_attempts,
                scheduled_at,
                now,
                None,
                None,
                None,
                (),
                stored_copy(meta, item.meta) if meta else {},
                None,
                False,
                None,
                job.task,
            )
        )
    return jobs


# "(state = 'executing') IS TRUE" rather than "state = 'executing'": the plain form lets the
# planner pick the rescue index, whose dead entries (every job passes through executing)
# make it 10x slower between vacuums; this form keeps the primary-key lookups.
# Run with exec_driver_sql (psycopg placeholders): it is on the hot path.
_COMPLETE = """
    UPDATE pgflow_jobs AS j
    SET state = 'completed', completed_at = now(),
        unique_key = CASE WHEN j.unique_release THEN NULL ELSE j.unique_key END
    FROM unnest(CAST(%(ids)s AS BIGINT[]), CAST(%(attempts)s AS INTEGER[]),
                CAST(%(claimed)s AS TIMESTAMPTZ[])) AS r(id, attempt, claimed_at)
    WHERE j.id = r.id AND j.attempt = r.attempt AND (j.state = 'executing') IS TRUE
      AND (r.claimed_at IS NULL OR j.attempted_at = r.claimed_at)
    RETURNING j.id
"""


# The same with results: only for batches where some perform returned a value.
_COMPLETE_WITH_RESULTS = """
    UPDATE pgflow_jobs AS j
    SET state = 'completed', completed_at = now(),
        unique_key = CASE WHEN j.unique_release THEN NULL ELSE j.unique_key END,
        result = CAST(r.result AS JSONB)
    FROM unnest(CAST(%(ids)s AS BIGINT[]), CAST(%(attempts)s AS INTEGER[]),
                CAST(%(claimed)s AS TIMESTAMPTZ[]), CAST(%(results)s AS TEXT[]))
         AS r(id, attempt, claimed_at, result)
    WHERE j.id = r.id AND j.attempt = r.attempt AND (j.state = 'executing') IS TRUE
      AND (r.claimed_at IS NULL OR j.attempted_at = r.claimed_at)
    RETURNING j.id
"""


def _nullable_text_array(values: Sequence[str | None]) -> str:
    """A PostgreSQL array literal of quoted strings, None as NULL."""
    return (
        "{"
        + ",".join(
            "NULL" if value is None else '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
            for value in values
        )
        + "}"
    )


def _complete_params(refs: Sequence[JobRef]) -> dict[str, Any]:
    # Jobs claimed together share their claim time: format each distinct time once.
    texts: dict[datetime, str] = {}
    claimed = []
    for ref in refs:
        at = ref.claimed_at
        if at is None:
            claimed.append("NULL")
            continue
        formatted = texts.get(at)
        if formatted is None:
            formatted = texts[at] = f'"{at.isoformat()}"'
        claimed.append(formatted)
    # Array literals as text, like the bulk insert's: adapting Python lists element by
    # element costs more than the statement's own parsing.
    return {
        "ids": _number_array([ref.id for ref in refs]),
        "attempts": _number_array([ref.attempt for ref in refs]),
        "claimed": "{" + ",".join(claimed) + "}",
    }


_NOTIFY_RUN = text(f"SELECT pg_notify('{RUN_CHANNEL}', :workflow_id)")
_NOTIFY = text(
    f"SELECT pg_notify('{CHANNEL}', q) FROM unnest(CAST(:queues AS TEXT[])) AS q ORDER BY q"
)


#: A shaped claim without partitions, in one statement run after the queue's lock (see
#: PostgresBackend._claim_shaped): the clock after the lock, the budget the pause, the global
#: limit and the rate window leave, the claim itself (the plain claim's, attempted_at the
#: clock), the pruning and the recording of the window's starts. %(returning)s: the claim's
#: columns.
_SHAPED_CLAIM = (
    """
WITH clock AS MATERIALIZED (SELECT clock_timestamp() AS at),
budget AS MATERIALIZED (
    SELECT clock.at, CASE
        WHEN EXISTS (SELECT 1 FROM pgflow_queue_controls c
                     WHERE c.queue = %%(p_queue)s AND (c.paused OR c.hold_until > clock.at))
        THEN 0
        ELSE """
    + QUEUE_BUDGET
    + """
        END AS n
    FROM clock
),
claimed AS (
    UPDATE pgflow_jobs
    SET state = 'executing', attempt = pgflow_jobs.attempt + 1,
        attempted_at = (SELECT at FROM budget), reserved_by = %%(p_instance)s
    WHERE (%%(p_incarnation)s::VARCHAR = '' OR EXISTS (
              SELECT 1 FROM pgflow_instances
              WHERE instance_id = %%(p_instance)s AND incarnation = %%(p_incarnation)s
              FOR KEY SHARE))
      AND pgflow_jobs.id = ANY (ARRAY(
              SELECT j.id FROM pgflow_jobs AS j
              WHERE j.state = 'available' AND j.queue = %%(p_queue)s
              ORDER BY j.priority DESC, j.scheduled_at, j.id
              LIMIT (SELECT n FROM budget)
              FOR UPDATE SKIP LOCKED))
      AND set_config('synchronous_commit', 'off', true) IS NOT NULL
    RETURNING %(returning)s
),
pruned AS (
    DELETE FROM pgflow_rate_starts
    WHERE %%(p_allowed)s::INTEGER IS NOT NULL AND queue = %%(p_queue)s
      AND started_at < (SELECT at FROM budget) - make_interval(secs => %%(p_period)s::FLOAT8)
      AND EXISTS (SELECT 1 FROM claimed)
),
recorded AS (
    INSERT INTO pgflow_rate_starts (queue, partition, started_at)
    SELECT %%(p_queue)s, '', (SELECT at FROM budget) FROM claimed
    WHERE %%(p_allowed)s::INTEGER IS NOT NULL
)
SELECT * FROM claimed
"""
)
#: Pipeline mode needs libpq 14 or later; without it shaped claims take the general path.
_PIPELINES = psycopg.Pipeline.is_supported()
_SHAPED_LOCK = "SELECT pg_advisory_xact_lock(%(p_class)s, hashtext(%(p_queue)s))"


def _create_engine(url: URL) -> Engine:
    try:
        engine = create_engine(
            url,
            pool_size=10,
            max_overflow=10,
            # Timestamps then arrive in UTC already (no per-value conversion).
            connect_args={"options": "-c TimeZone=UTC"},
        )
    except (ImportError, NoSuchModuleError) as exc:
        raise BackendError(
            f"{mask(url)}: the PostgreSQL driver psycopg 3 is not installed ({exc}); "
            "run: pip install 'pgflow[postgres]'"
        ) from None
    ping_when_idle(engine)  # pool_pre_ping's job, without a round trip on every checkout
    return engine


class PostgresBackend(SQLBackend):
    """pgflow's tables in PostgreSQL: "postgresql://user@host/db" (psycopg 3), or an Engine.

    Given an application's Engine, pgflow uses its pool as it is and never disposes it.

    Workflow run and step records are written with `synchronous_commit = off` unless
    `sync_run_commits=True`: a commit then costs no WAL flush (several milliseconds on
    ordinary disks). Inserts, completions and failures of jobs always commit synchronously;
    claims do not (safe because writes are fenced by attempt and claim time: see
    claim_jobs).
    """

    def __init__(
        self,
        url_or_engine: str | URL | Engine,
        *,
        sync_run_commits: bool = False,
        max_payload_bytes: int | None = DEFAULT_MAX_PAYLOAD_BYTES,
    ) -> None:
        if isinstance(url_or_engine, Engine):
            engine, owns = url_or_engine, False
            if engine.dialect.name != "postgresql" or engine.dialect.driver != "psycopg":
                raise BackendError(
                    f"PostgresBackend needs a postgresql+psycopg engine, not "
                    f"{engine.dialect.name}+{engine.dialect.driver} ({mask(engine.url)})"
                )
        else:
            url = parse(url_or_engine)
            if url.get_backend_name() != "postgresql":
                raise BackendError(f"PostgresBackend needs a postgresql:// URL, not {mask(url)}")
            engine, owns = _create_engine(url), True
        super().__init__(
            engine, url=mask(engine.url), owns_engine=owns, max_payload_bytes=max_payload_bytes
        )
        self._sync_run_commits = sync_run_commits
        self._connections = DriverConnections(engine, self.url, self._check_open)
        compiled = self._s.claim.compile(dialect=engine.dialect)
        self._claim_sql = compiled.string
        self._claim_params: dict[str, Any] = dict(compiled.params)
        returning = self._claim_sql.split(" RETURNING ", 1)[1]
        self._shaped_claim_sql = _SHAPED_CLAIM % {"returning": returning}
        self._returning = returning
        # The same pool, in autocommit mode: each statement is its own transaction.
        self._autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
        self._run_waits = RunWaits(engine, self.url)
        try:
            self.ping()
        except BaseException:
            self.close()
            raise

    @classmethod
    def from_url(
        cls, url: str, *, max_payload_bytes: int | None = DEFAULT_MAX_PAYLOAD_BYTES
    ) -> PostgresBackend:
        """Open `url` (the registry's entry point)."""
        return cls(url, max_payload_bytes=max_payload_bytes)

    def _announce(self, connection: Connection, queues: set[str], *, own: bool) -> None:
        # NOTIFY is transactional: delivered on commit, dropped on rollback.
        connection.execute(_NOTIFY, {"queues": sorted(queues)})

    def _flow_rows(self, connection: Connection) -> FlowRows:
        return PostgresFlowRows(connection, self._f)

    def _announce_run(self, connection: Connection, workflow_id: str) -> None:
        connection.execute(_NOTIFY_RUN, {"workflow_id": workflow_id})

    def wait_for_run(self, workflow_id: str, timeout: float | None) -> RunRecord | None:
        """Wait on NOTIFY pgflow_runs (one shared LISTEN connection), not by polling."""
        self._check_open()
        return self._run_waits.wait(workflow_id, lambda: self.get_run(workflow_id), timeout)

    def close(self) -> None:
        self._run_waits.close()
        super().close()

    _bulk_notifies = True

    def _single(self) -> contextlib.AbstractContextManager[Connection]:
        """Single statements run in autocommit mode: one round trip instead of three
        (BEGIN, the statement, COMMIT). A statement is atomic by itself, and its implicit
        commit still waits for the WAL flush unless the statement says otherwise."""
        return self._autocommit_connection()

    def _run_write(self) -> contextlib.AbstractContextManager[Connection]:
        """Run and step writes are single statements carrying relaxed_commit(), run in
        autocommit mode: one round trip and no WAL flush wait (unless sync_run_commits).

        That is safe for durability as users see it: WAL is sequential, so the next
        synchronous commit (a job's completion, an insert) makes these durable too, and a
        database crash can only lose the newest step records, which the run then repeats
        as if the process had crashed a moment earlier.
        """
        if self._sync_run_commits:
            return self._tx()
        return self._autocommit_connection()

    @contextlib.contextmanager
    def _autocommit_connection(self) -> Iterator[Connection]:
        self._check_open()
        try:
            with self._autocommit.connect() as connection:
                yield connection
        except (DBAPIError, PoolTimeout) as exc:
            raise translate(exc, self.url) from exc

    def _driver(self) -> contextlib.AbstractContextManager[Any]:
        """A pooled psycopg connection in autocommit mode, for the hot single statements
        (insert, claim, complete). Each statement is atomic; its commit waits for the WAL
        flush unless the statement says otherwise (claims: see claim_jobs)."""
        return self._connections.connect()

    def hold_connection(self) -> contextlib.AbstractContextManager[None]:
        """Keep one connection for this thread's hot statements until the block ends:
        the runtime's claimer and acknowledger threads skip the pool's checkout and checkin
        per statement."""
        return self._connections.hold()

    def _insert_prepared(self, prepared: list[PreparedJob], connection: Any) -> list[Job] | None:
        """Jobs without unique keys, inserted by pgflow itself: the driver-level path."""
        if connection is not None or any(
            item.unique is not None or item.job.task is not None for item in prepared
        ):
            return None
        if len(prepared) == 1:
            with self._driver() as conn:
                row = conn.execute(_INSERT_ONE, prepared[0].params).fetchone()
            return _inserted([(0, row[1]), (row[0], row[2])], prepared)
        with self._driver() as conn:
            rows = conn.execute(_BULK_INSERT, _bulk_params(prepared)).fetchall()
        return _inserted(rows, prepared)

    def _insert_tasks(self, connection: Connection, new: list[NewJob], *, own: bool) -> list[Job]:
        prepared = [PreparedJob(job, None) for job in new]
        params = dict(_bulk_params(prepared), **_task_params(prepared))
        rows = connection.exec_driver_sql(_BULK_INSERT_TASKS_QUIET, params).all()
        return _inserted(rows, prepared)

    def _insert_many(self, connection: Connection, batch: Sequence[PreparedJob]) -> list[Job]:
        if any(item.job.task is not None for item in batch):
            params = dict(_bulk_params(batch), **_task_params(batch))
            return _inserted(connection.exec_driver_sql(_BULK_INSERT_TASKS, params).all(), batch)
        result = connection.exec_driver_sql(_BULK_INSERT, _bulk_params(batch))
        return _inserted(result.all(), batch)

    def claim_jobs(
        self,
        queue: str,
        instance_id: str,
        limit: int,
        incarnation: str = "",
        *,
        shape: Queue | None = None,
    ) -> list[Job]:
        """As SQLBackend.claim_jobs, with the same Core statement compiled once and run at
        the driver level: SQLAlchemy's per-row result processing was a third of the time.

        The claim is one statement in autocommit mode (one round trip) that commits without
        waiting for the WAL flush (relaxed_commit() in the statement: SET LOCAL
        synchronous_commit = off). That weakens nothing:
        - a claim lost to a server or OS crash only leaves its jobs `available` again, to
          be claimed anew (at-least-once, as after any crash);
        - the runner that got the lost claim cannot write over the next claim, even though
          that claim reuses the lost one's attempt number: every fenced write (complete,
          fail, snooze) also matches the claim's own `attempted_at` (JobRef.claimed_at,
          see `_token`), which differs from claim to claim;
        - a claim that survives is made durable by the next synchronous commit anyway (WAL
          is sequential), at the latest its own job's completion.
        Completions, failures and inserts keep waiting for the flush: a lost completion
        would leave a job `executing` under a live instance, with no rescue to free it.
        """
        validate_instance_id(instance_id)
        if limit <= 0:
            return []
        if shape is not None and shape.shapes_flow:
            return self._claim_shaped(queue, instance_id, limit, incarnation, shape)
        params = dict(
            self._claim_params,
            p_queue=queue,
            p_instance=instance_id,
            p_limit=limit,
            p_incarnation=incarnation,
        )
        with self._driver() as conn:
            rows = conn.execute(self._claim_sql, params).fetchall()
        claimed = [job_from_driver_row(row) for row in rows]
        claimed.sort(key=_claim_order)
        return claimed

    def complete_jobs(
        self, refs: Sequence[JobRef], results: Sequence[str | None] | None = None
    ) -> list[int]:
        """As SQLBackend.complete_jobs, at the driver level (one autocommit round trip);
        a batch without results keeps the statement that writes none."""
        if not refs:
            return []
        checked = self._checked_results(refs, results)
        params = _complete_params(refs)
        statement = _COMPLETE
        if checked is not None:
            params["results"] = _nullable_text_array(checked)
            statement = _COMPLETE_WITH_RESULTS
        with self._driver() as conn:
            return sorted(row[0] for row in conn.execute(statement, params).fetchall())

    def _complete_with_results(
        self, connection: Connection, refs: Sequence[JobRef], results: Sequence[str | None]
    ) -> list[int]:
        params = dict(_complete_params(refs), results=_nullable_text_array(results))
        return sorted(row[0] for row in connection.exec_driver_sql(_COMPLETE_WITH_RESULTS, params))

    def _complete(self, connection: Connection, refs: Sequence[JobRef]) -> list[int]:
        params = _complete_params(refs)
        return sorted(row[0] for row in connection.exec_driver_sql(_COMPLETE, params))

    def _token(self, ref: JobRef) -> datetime | None:
        """Claims may be lost in a crash (see claim_jobs), so fenced writes also match the
        claim's time."""
        return ref.claimed_at

    def _claim_shaped(
        self, queue: str, instance_id: str, limit: int, incarnation: str, shape: Queue
    ) -> list[Job]:
        """A shaped claim as one pipelined exchange on the driver connection: BEGIN (READ
        COMMITTED), the queue's advisory lock, one statement (partitioned: after the keying
        statements of postgres_shaped), COMMIT, sent together. Each statement takes its
        snapshot when it starts, so the claim's reads follow the lock."""
        if not _PIPELINES:
            return super()._claim_shaped(queue, instance_id, limit, incarnation, shape)
        if shape.partition_by is not None:
            return self._claim_partitioned(queue, instance_id, limit, incarnation, shape)
        params = _shape_params(queue, instance_id, limit, incarnation, shape)
        with self._driver() as conn:
            try:
                with conn.pipeline():
                    conn.execute("BEGIN ISOLATION LEVEL READ COMMITTED")
                    conn.execute(_SHAPED_LOCK, params)
                    cursor = conn.execute(self._shaped_claim_sql, params)
                    conn.execute("COMMIT")
                rows = cursor.fetchall()
            except BaseException:
                # Leave no transaction open on the pooled connection (autocommit mode).
                with contextlib.suppress(Exception):
                    if conn.info.transaction_status != 0:
                        conn.execute("ROLLBACK")
                raise
        claimed = [job_from_driver_row(row) for row in rows]
        claimed.sort(key=_claim_order)
        return claimed

    def _claim_partitioned(
        self, queue: str, instance_id: str, limit: int, incarnation: str, shape: Queue
    ) -> list[Job]:
        """A partitioned claim as one pipelined exchange (see postgres_shaped)."""
        rate, per_rate = shape.rate_limit, shape.partition_rate_limit
        windows = [counted_window(w[1]) for w in (rate, per_rate) if w is not None]
        params: dict[str, Any] = {
            **_shape_params(queue, instance_id, limit, incarnation, shape),
            "p_key": shape.partition_by,
            "p_sweep": SWEEP_SECONDS,
            "p_plimit": shape.partition_limit,
            "p_prate_allowed": None if per_rate is None else per_rate[0],
            "p_prate_period": None if per_rate is None else counted_window(per_rate[1]),
            "p_longest": max(windows) if windows else None,
        }
        statement, names = positional(
            partitioned_claim_sql(
                shape.partition_limit is not None, per_rate is not None, self._returning
            )
        )
        with self._driver() as conn:
            try:
                with conn.pipeline():
                    conn.execute("BEGIN ISOLATION LEVEL READ COMMITTED")
                    conn.execute(SETTINGS_AND_LOCK, params)
                    conn.execute(KEYING, params)
                    cursor = psycopg.RawCursor(conn)
                    cursor.execute(statement, [params[name] for name in names])
                    conn.execute("COMMIT")
                rows = cursor.fetchall()
            except BaseException:
                with contextlib.suppress(Exception):
                    if conn.info.transaction_status != 0:
                        conn.execute("ROLLBACK")
                raise
        if not rows:
            return []
        claimed, _ = round_robin(
            [(job_from_driver_row(row[:-4]), row[-4]) for row in rows], rows[0][-1]
        )
        return claimed

    def _lock_queue(self, connection: Connection, queue: str) -> None:
        """pg_advisory_xact_lock(QUEUE_LOCK_CLASS, hashtext(queue)): the queue's shaped claims
        on every instance serialize, until each one's transaction ends. Two queues whose
        names hash alike merely share the lock."""
        if self._isolated_above_read_committed():
            # Else the snapshot would be taken before the lock is granted: the head would not
            # see what the claims that held the lock meanwhile committed.
            connection.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
        connection.execute(self._q.lock(), {"p_queue": queue})

    def _isolated_above_read_committed(self) -> bool:
        """Whether this engine's transactions are REPEATABLE READ or SERIALIZABLE (an
        application's Engine, or the server's default_transaction_isolation)."""
        level = self.engine.get_execution_options().get("isolation_level") or getattr(
            self.engine.dialect, "default_isolation_level", None
        )
        return str(level or "READ COMMITTED").upper().replace("_", " ") not in (
            "READ COMMITTED",
            "READ UNCOMMITTED",
            "AUTOCOMMIT",
        )

    def listener(self) -> JobListener:
        """A dedicated autocommit connection LISTENing on pgflow_jobs; reconnects on failure."""
        self._check_open()
        return PostgresListener(self.engine, self.url)


class PostgresListener:
    """Waits for NOTIFY pgflow_jobs on its own connection, taken out of the engine's pool.

    The connection is made with the engine's own settings (URL, connect_args, creator) and
    detached, so it never returns to the pool. If it breaks, the next wait reconnects, and
    returns no queues meanwhile: polling covers the gap.
    """

    #: After this many seconds without a notification, check that the connection is alive
    #: (a silently dropped TCP connection would otherwise just look quiet).
    HEALTH_CHECK_AFTER = 30.0

    def __init__(self, engine: Engine, url: str) -> None:
        self._engine = engine
        self._url = url
        self._conn: Any = None
        self._closed = False
        self._heard_at = time.monotonic()
        try:
            self._connect()
        except Exception as exc:
            raise BackendError(
                f"cannot LISTEN on {url} ({str(exc).strip().splitlines()[0]}); check that the "
                "database is running and reachable"
            ) from exc

    def _connect(self) -> None:
        raw = self._engine.raw_connection()
        conn: Any = raw.driver_connection
        raw.detach()
        try:
            if conn.info.transaction_status != 0:  # not idle: end what the pool left open
                conn.rollback()
            conn.autocommit = True
            conn.execute(f"LISTEN {CHANNEL}")
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        self._heard_at = time.monotonic()

    def wait(self, timeout: float) -> set[str]:
        """Block up to `timeout` seconds; return the queues announced (empty on time-out)."""
        if self._closed:
            return set()
        deadline = time.monotonic() + max(timeout, 0.0)
        try:
            if self._conn is None:
                self._connect()
            return self._drain(deadline)
        except Exception as exc:  # broken connection: log, back off, reconnect next time
            logger.warning(
                "listener connection to %s failed: %s; reconnecting",
                self._url,
                exc,
                extra={"url": self._url},
            )
            self._discard()
            time.sleep(max(0.0, min(deadline - time.monotonic(), 1.0)))
            return set()

    def _drain(self, deadline: float) -> set[str]:
        conn = self._conn
        if time.monotonic() - self._heard_at > self.HEALTH_CHECK_AFTER:
            conn.execute("SELECT 1")  # raises on a dead connection: reconnect
            self._heard_at = time.monotonic()
        remaining = max(deadline - time.monotonic(), 0.0)
        queues = {n.payload for n in conn.notifies(timeout=remaining, stop_after=1)}
        if queues:  # take whatever else has already arrived, without waiting
            queues.update(n.payload for n in conn.notifies(timeout=0.0))
            self._heard_at = time.monotonic()
        return queues

    def _discard(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:
                logger.debug("closing a broken listener connection failed", exc_info=True)

    def close(self) -> None:
        self._closed = True
        self._discard()
