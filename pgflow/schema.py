"""pgflow's tables as SQLAlchemy `MetaData`, so an application can add them to its Alembic env.

The Alembic migrations in the top-level `alembic/` folder create exactly this schema (a test
diffs the two). Times are `timestamptz` on PostgreSQL and epoch seconds (REAL) on SQLite, so
that both databases compare them with their own clock: `now()` and `julianday('now')`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Dialect,
    Float,
    ForeignKey,
    Identity,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    false,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, TIMESTAMP
from sqlalchemy.types import TypeDecorator, TypeEngine

__all__ = [
    "JOBS_STORAGE",
    "JOB_STATES",
    "PARTITION_KEY",
    "PRIORITY_MAX",
    "PRIORITY_MIN",
    "RUN_STATES",
    "STATE_INDEX_PREDICATES",
    "STEP_KINDS",
    "STEP_OUTCOMES",
    "STEP_STATES",
    "JSONType",
    "UTCDateTime",
    "cron_slots",
    "instances",
    "jobs",
    "leader",
    "metadata",
    "partition_holds",
    "queue_controls",
    "rate_starts",
    "runs",
    "signals",
    "step_states",
    "steps",
    "task_outputs",
]

JOB_STATES = (
    "available",
    "scheduled",
    "executing",
    "retryable",
    "completed",
    "discarded",
    "cancelled",
)
RUN_STATES = ("running", "completed", "failed", "cancelled")
STEP_OUTCOMES = ("completed", "failed", "timed_out", "skipped")
STEP_STATES = ("pending", "started", "completed", "failed", "skipped", "cancelled")
STEP_KINDS = ("step", "map", "wait", "sleep", "subflow")
PRIORITY_MIN, PRIORITY_MAX = -32768, 32767
JOBS_STORAGE = {
    "autovacuum_vacuum_scale_factor": "0.02",
    "autovacuum_analyze_scale_factor": "0.02",
}

#: JSONB on PostgreSQL (indexable, compact), JSON text elsewhere.
JSONType: TypeEngine[Any] = JSON().with_variant(JSONB(), "postgresql")
#: A partition key: code point order on PostgreSQL (as Python and SQLite compare), so the
#: round robin and its cursor agree on every backend.
PARTITION_KEY: TypeEngine[Any] = String(255).with_variant(String(255, collation="C"), "postgresql")


class UTCDateTime(TypeDecorator[datetime]):
    """An aware UTC datetime: timestamptz on PostgreSQL, epoch seconds (REAL) on SQLite.

    Epoch seconds let SQLite compare stored times with `julianday('now')` arithmetic in SQL,
    which text timestamps cannot do reliably.
    """

    impl = TIMESTAMP(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(Float())
        return dialect.type_descriptor(TIMESTAMP(timezone=True))

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r} cannot be stored; use an aware one")
        if dialect.name == "sqlite":
            return value.timestamp()
        return value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, (int, float)):
            return datetime.fromtimestamp(value, UTC)
        assert isinstance(value, datetime)
        return value.astimezone(UTC) if value.tzinfo is not UTC else value


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(value) for value in values)})"


#: pgflow's own Alembic version table, apart from the application's `alembic_version`.
VERSION_TABLE = "pgflow_alembic_version"
#: The head migration this code expects (tests check it against alembic/versions), so a
#: worker can verify the schema with one query, without loading Alembic.
SCHEMA_REVISION = "0008"

metadata = MetaData()

jobs = Table(
    "pgflow_jobs",
    metadata,
    Column(
        "id",
        BigInteger().with_variant(Integer(), "sqlite"),
        Identity(),
        primary_key=True,
    ),
    Column("queue", String(63), nullable=False),
    Column("worker", String(255), nullable=False),
    Column("args", JSONType, nullable=False),
    Column("state", String(16), nullable=False),
    Column("priority", Integer, nullable=False, server_default=text("0")),
    Column("attempt", Integer, nullable=False, server_default=text("0")),
    Column("max_attempts", Integer, nullable=False),
    Column("scheduled_at", UTCDateTime(), nullable=False),
    Column("reserved_by", String(128)),
    Column("errors", JSONType, nullable=False),
    Column("meta", JSONType, nullable=False),
    Column("unique_key", String(64)),
    # With UniqueSpec(while_unfinished=True) the key is cleared when the job finishes.
    Column(
        "unique_release", Boolean(create_constraint=False), nullable=False, server_default=false()
    ),
    Column("inserted_at", UTCDateTime(), nullable=False),
    Column("attempted_at", UTCDateTime()),
    Column("completed_at", UTCDateTime()),
    # What perform returned (JSON), kept on the completed job.
    Column("result", JSONType),
    # For the tasks of a distributed flow run: which run, step and map element (0 for a
    # step that is not a map). NULL on ordinary jobs.
    Column("workflow_id", String(64)),
    Column("step", String(255)),
    Column("task_index", Integer),
    # A partitioned queue's jobs: their partition, written by the queue's claims from the
    # args (see `keyed_by`); NULL until then, so inserts never write it.
    Column("partition_key", PARTITION_KEY),
    CheckConstraint(_in("state", JOB_STATES), name="pgflow_jobs_state_check"),
    CheckConstraint(
        f"priority BETWEEN {PRIORITY_MIN} AND {PRIORITY_MAX}", name="pgflow_jobs_priority_check"
    ),
    CheckConstraint(
        "max_attempts >= 1 AND attempt >= 0 AND attempt <= max_attempts",
        name="pgflow_jobs_attempt_check",
    ),
    # Every job is updated several times and then deleted: vacuum (and re-analyse) the table
    # after 2% of it changed, not PostgreSQL's default 20%, so indexes stay small.
    postgresql_with=JOBS_STORAGE,
    # Never reuse an id (plain SQLite rowids restart after the newest rows are pruned), so a
    # late write fenced by (id, attempt) can never land on a newer job.
    sqlite_autoincrement=True,
)

_FINISHED = "state IN ('completed', 'discarded', 'cancelled')"
_FAILED = "state IN ('retryable', 'discarded', 'cancelled')"
_KEYED = "state = 'available' AND partition_key IS NOT NULL"
_RUNNING_DEADLINE = "state = 'running' AND deadline_at IS NOT NULL"
_RUNNING_FLOW = "state = 'running' AND remaining_steps IS NOT NULL"
_STAGED = "state IN ('scheduled', 'retryable')"
_UNFINISHED_TASK = (
    "workflow_id IS NOT NULL AND state IN ('available', 'scheduled', 'executing', 'retryable')"
)

# Claim: WHERE state='available' AND queue=? ORDER BY priority DESC, scheduled_at, id.
Index(
    "pgflow_jobs_claim_idx",
    jobs.c.queue,
    jobs.c.priority.desc(),
    jobs.c.scheduled_at,
    jobs.c.id,
    postgresql_where=text("state = 'available'"),
    sqlite_where=text("state = 'available'"),
)
# Stage: scheduled and retryable jobs whose time has come.
Index(
    "pgflow_jobs_stage_idx",
    jobs.c.scheduled_at,
    postgresql_where=text(_STAGED),
    sqlite_where=text(_STAGED),
)
# Executing jobs by queue, partition and instance: global and per-partition limits count a
# queue's (its entries only); rescue reads them by instance. The one index of executing jobs,
# so counting a queue's never scans every queue's.
Index(
    "pgflow_jobs_executing_idx",
    jobs.c.queue,
    jobs.c.partition_key,
    jobs.c.reserved_by,
    postgresql_where=text("state = 'executing'"),
    sqlite_where=text("state = 'executing'"),
)
# A partitioned claim: the partitions with available jobs (a skip scan), each one's next job.
# Jobs not keyed yet (every insert) are not in it.
Index(
    "pgflow_jobs_partition_idx",
    jobs.c.queue,
    jobs.c.partition_key,
    jobs.c.priority.desc(),
    jobs.c.scheduled_at,
    jobs.c.id,
    postgresql_where=text(_KEYED),
    sqlite_where=text(_KEYED),
)
# Prune: finished jobs by age.
Index(
    "pgflow_jobs_prune_idx",
    jobs.c.completed_at,
    postgresql_where=text(_FINISHED),
    sqlite_where=text(_FINISHED),
)
# Unique jobs: the race-free duplicate check (INSERT ... ON CONFLICT).
Index(
    "pgflow_jobs_unique_idx",
    jobs.c.unique_key,
    unique=True,
    postgresql_where=text("unique_key IS NOT NULL"),
    sqlite_where=text("unique_key IS NOT NULL"),
)

# A run's unfinished tasks: cancelling or failing a run, and a step's live attempts. Partial,
# so the million finished tasks of old runs cost it nothing.
Index(
    "pgflow_jobs_run_idx",
    jobs.c.workflow_id,
    jobs.c.step,
    jobs.c.task_index,
    postgresql_where=text(_UNFINISHED_TASK),
    sqlite_where=text(_UNFINISHED_TASK),
)
# The dashboard: the newest retryable, discarded or cancelled jobs (of a queue). Partial, so
# inserting, claiming and completing a job writes no entry; a job enters one when it fails or
# is cancelled. Other states are found through the claim, executing and stage indexes, or a
# newest-first walk of the primary key (most jobs are completed).
Index(
    "pgflow_jobs_failed_idx",
    jobs.c.state,
    jobs.c.id,
    postgresql_where=text(_FAILED),
    sqlite_where=text(_FAILED),
)
Index(
    "pgflow_jobs_failed_queue_idx",
    jobs.c.queue,
    jobs.c.state,
    jobs.c.id,
    postgresql_where=text(_FAILED),
    sqlite_where=text(_FAILED),
)
#: The predicate of the partial index holding a state's jobs (newest first, or nearly), for
#: an SQLite query to repeat word for word: it uses a partial index only for a term it sees.
STATE_INDEX_PREDICATES: dict[str, str] = {
    "retryable": _FAILED,
    "discarded": _FAILED,
    "cancelled": _FAILED,
    "scheduled": _STAGED,
}

instances = Table(
    "pgflow_instances",
    metadata,
    Column("instance_id", String(128), primary_key=True),
    Column("status", String(8), nullable=False),
    Column("heartbeat_at", UTCDateTime(), nullable=False),
    Column("started_at", UTCDateTime(), nullable=False),
    Column("hostname", String(255), nullable=False, server_default=text("''")),
    Column("pid", Integer, nullable=False, server_default=text("0")),
    Column("queues", JSONType, nullable=False),
    # The process that registered under the id last; claims of earlier ones are rescued.
    Column("incarnation", String(64), nullable=False, server_default=text("''")),
    # Threads of timed-out work still running in the instance (each still holds its slot).
    Column("abandoned", Integer, nullable=False, server_default=text("0")),
    # The flow definitions it serves: a JSON list of [flow name, fingerprint] pairs.
    Column("flows", JSONType, nullable=False, server_default=text("'[]'")),
    CheckConstraint("status IN ('online', 'offline')", name="pgflow_instances_status_check"),
)

runs = Table(
    "pgflow_runs",
    metadata,
    Column("workflow_id", String(64), primary_key=True),
    Column("workflow", String(255), nullable=False),
    Column("state", String(16), nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("max_attempts", Integer, nullable=False),
    Column("input", JSONType),
    Column("output", JSONType),
    Column("error", JSONType),
    Column("started_at", UTCDateTime(), nullable=False),
    Column("finished_at", UTCDateTime()),
    Column("job_id", BigInteger),
    # The definition the run was started with (step names in order, later the graph) and
    # its hash: a resume under another definition is refused.
    Column("fingerprint", String(64)),
    Column("definition", JSONType),
    # Distributed flow runs only (app.start_run): steps not yet finished; the run completes
    # in the transaction that brings it to 0. NULL for in-process runs.
    Column("remaining_steps", Integer),
    # A sub-flow's child run: its parent run, the parent's step, and the queue of the relay
    # task its end inserts for that step.
    Column("parent_id", String(64)),
    Column("parent_step", String(255)),
    Column("parent_queue", String(63)),
    # restart_run: the run this one restarts.
    Column("restart_of", String(64)),
    # start_run(deadline=): the leader fails the run when it is still running by then.
    Column("deadline_at", UTCDateTime()),
    CheckConstraint(_in("state", RUN_STATES), name="pgflow_runs_state_check"),
    CheckConstraint("max_attempts >= 1 AND attempt >= 1", name="pgflow_runs_attempt_check"),
    # Counter updates stay HOT (no index holds a counter) when pages keep room for them.
    postgresql_with={"fillfactor": "80"},
)
Index("pgflow_runs_started_idx", runs.c.started_at)
Index("pgflow_runs_workflow_idx", runs.c.workflow, runs.c.started_at)
Index(
    "pgflow_runs_prune_idx",
    runs.c.finished_at,
    postgresql_where=text("state <> 'running'"),
    sqlite_where=text("state <> 'running'"),
)

# A run's children (cancel and inspection); partial: most runs have no parent.
Index(
    "pgflow_runs_parent_idx",
    runs.c.parent_id,
    postgresql_where=text("parent_id IS NOT NULL"),
    sqlite_where=text("parent_id IS NOT NULL"),
)
# Running runs with a deadline, by deadline: the leader's deadline sweep.
Index(
    "pgflow_runs_deadline_idx",
    runs.c.deadline_at,
    postgresql_where=text(_RUNNING_DEADLINE),
    sqlite_where=text(_RUNNING_DEADLINE),
)

# The running distributed runs by definition: the leader's unserved-flow sweep.
Index(
    "pgflow_runs_running_flows_idx",
    runs.c.workflow,
    runs.c.fingerprint,
    runs.c.started_at,
    postgresql_where=text(_RUNNING_FLOW),
    sqlite_where=text(_RUNNING_FLOW),
)

steps = Table(
    "pgflow_steps",
    metadata,
    Column("id", BigInteger().with_variant(Integer(), "sqlite"), Identity(), primary_key=True),
    Column(
        "workflow_id",
        String(64),
        ForeignKey("pgflow_runs.workflow_id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("step", String(255), nullable=False),
    Column("idx", Integer, nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("output", JSONType),
    Column("error", JSONType),
    Column("started_at", UTCDateTime(), nullable=False),
    Column("duration", Float, nullable=False),
    # The map element an attempt ran (in-process graph runs); NULL for whole steps.
    Column("element", Integer),
    CheckConstraint(_in("outcome", STEP_OUTCOMES), name="pgflow_steps_outcome_check"),
)
Index("pgflow_steps_run_idx", steps.c.workflow_id, steps.c.id)

leader = Table(
    "pgflow_leader",
    metadata,
    Column("name", String(63), primary_key=True),
    Column("instance_id", String(128), nullable=False),
    Column("expires_at", UTCDateTime(), nullable=False),
)

cron_slots = Table(
    "pgflow_cron",
    metadata,
    # One row per cron entry: the newest slot enqueued, kept apart from the jobs so that
    # pruning a slot's job never lets the same slot be enqueued again.
    Column("name", String(255), primary_key=True),
    Column("last_slot", UTCDateTime(), nullable=False),
)

step_states = Table(
    "pgflow_step_states",
    metadata,
    # One row per step of a distributed flow run, all created when the run starts.
    Column(
        "workflow_id",
        String(64),
        ForeignKey("pgflow_runs.workflow_id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("step", String(255), primary_key=True),
    # Position in the definition's topological order: rows are always locked in this order.
    Column("step_index", Integer, nullable=False),
    Column("kind", String(8), nullable=False),
    Column("state", String(10), nullable=False),
    # Dependencies not yet settled; the step becomes ready when this reaches 0.
    Column("remaining_deps", Integer, nullable=False),
    # How many tasks the step has (a map's element count), NULL until it is ready.
    Column("tasks_total", Integer),
    Column("tasks_done", Integer, nullable=False, server_default=text("0")),
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    Column("output", JSONType),
    Column("error", JSONType),
    Column("skip_reason", String(2000)),
    Column("started_at", UTCDateTime()),
    Column("completed_at", UTCDateTime()),
    CheckConstraint(_in("state", STEP_STATES), name="pgflow_step_states_state_check"),
    CheckConstraint(_in("kind", STEP_KINDS), name="pgflow_step_states_kind_check"),
    # Counters are updated once per settled task: leave room for HOT updates.
    postgresql_with={"fillfactor": "70"},
)

task_outputs = Table(
    "pgflow_task_outputs",
    metadata,
    # Insert-only: one row per completed task (map element), keyed so that a task can never
    # be counted twice. Aggregated into the step's output, in index order, when it settles.
    # No foreign key: the key check would lock the run row once per element.
    Column("workflow_id", String(64), primary_key=True),
    Column("step", String(255), primary_key=True),
    Column("task_index", Integer, primary_key=True),
    Column("output", JSONType),
)

signals = Table(
    "pgflow_signals",
    metadata,
    # The first signal sent to a wait_for step, kept until the run is pruned: one per
    # (run, step), so a second one is refused, and one sent early waits here for the step.
    Column(
        "workflow_id",
        String(64),
        ForeignKey("pgflow_runs.workflow_id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("step", String(255), primary_key=True),
    Column("payload", JSONType),
    Column("sent_at", UTCDateTime(), nullable=False),
)

queue_controls = Table(
    "pgflow_queue_controls",
    metadata,
    # What an operator (pause) or a RateLimited (hold) set on a queue, read by every claim.
    Column("queue", String(63), primary_key=True),
    Column("paused", Boolean(create_constraint=False), nullable=False, server_default=false()),
    Column("paused_at", UTCDateTime()),
    Column("hold_until", UTCDateTime()),
    # A partitioned queue's round robin: the partition its last claim ended with.
    Column("cursor", String(255)),
    # Which args key the queue's jobs were keyed by (pgflow_jobs.partition_key), every job of
    # it up to id keyed_through keyed (but for inserts committed late: swept at swept_at).
    Column("keyed_by", String(255)),
    Column("keyed_through", BigInteger),
    Column("swept_at", UTCDateTime()),
    Column("updated_at", UTCDateTime(), nullable=False),
)

partition_holds = Table(
    "pgflow_partition_holds",
    metadata,
    # A partition of a partitioned queue held by a RateLimited until hold_until.
    Column("queue", String(63), primary_key=True),
    Column("partition", String(255), primary_key=True),
    Column("hold_until", UTCDateTime(), nullable=False),
)

rate_starts = Table(
    "pgflow_rate_starts",
    metadata,
    # One row per job started on a rate-limited queue (partition "" for the queue-wide
    # window), kept for the longest window: the sliding windows count these.
    Column("id", BigInteger().with_variant(Integer(), "sqlite"), Identity(), primary_key=True),
    Column("queue", String(63), nullable=False),
    Column("partition", String(255), nullable=False),
    Column("started_at", UTCDateTime(), nullable=False),
)
Index(
    "pgflow_rate_starts_window_idx",
    rate_starts.c.queue,
    rate_starts.c.partition,
    rate_starts.c.started_at,
)
