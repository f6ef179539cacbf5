"""The Core statements of the SQL backends, built once per dialect and reused.

SQLAlchemy caches each statement's compiled form, so the hot paths pay for compilation once.
Bind parameter names start with "p_" (names equal to column names are reserved in SET).
"""

from __future__ import annotations

import functools
from typing import Any

from sqlalchemy import (
    Delete,
    Float,
    Insert,
    Integer,
    Select,
    String,
    Update,
    and_,
    any_,
    bindparam,
    case,
    delete,
    exists,
    func,
    literal,
    literal_column,
    null,
    or_,
    select,
    tuple_,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql.elements import ColumnElement

from pgflow.schema import (
    UTCDateTime,
    cron_slots,
    instances,
    jobs,
    leader,
    queue_controls,
    runs,
    steps,
)
from pgflow_backends.sql.expressions import (
    as_json,
    cancel_flag,
    db_now,
    db_now_plus,
    json_append,
    relaxed_commit,
    seconds,
)
from pgflow_backends.sql.rows import (
    CLAIM_COLUMNS,
    INSTANCE_COLUMNS,
    JOB_COLUMNS,
    RUN_COLUMNS,
    STEP_COLUMNS,
    SUMMARY_COLUMNS,
)

__all__ = ["LEADER_NAME", "Statements", "queue_open", "statements_for"]

LEADER_NAME = "leader"
_WAITING = ("available", "scheduled", "retryable")
_FINISHED = ("completed", "discarded", "cancelled")


def _const(value: str) -> ColumnElement[str]:
    """A state name written into the SQL text, not bound: a partial index's predicate
    (WHERE state = 'available') can then be matched when the statement is planned, also
    as a prepared statement's generic plan. Only pgflow's own constants go here."""
    if not value.isidentifier():
        raise ValueError(f"not a state name: {value!r}")
    return literal_column(f"'{value}'", String())


def _id_in_array(ids: Select[Any]) -> ColumnElement[bool]:
    """PostgreSQL: id = ANY(ARRAY(subquery)). The ids are collected first (an InitPlan),
    then fetched by primary key, whatever the planner guesses about the subquery's size;
    `id IN (subquery)` with a large LIMIT becomes a hash join over the whole table."""
    return jobs.c.id == any_(func.array(ids.scalar_subquery()))


def _id_in_subquery(ids: Select[Any]) -> ColumnElement[bool]:
    """SQLite: id IN (subquery), which it runs as a list lookup."""
    return jobs.c.id.in_(ids)


def _json(name: str) -> as_json:
    return as_json(bindparam(name, type_=String()))


def _p(name: str, type_: Any = None) -> Any:
    return bindparam(name, type_=type_)


#: A finished job gives its unique key back when inserted with while_unfinished.
RELEASED_KEY: ColumnElement[Any] = case((jobs.c.unique_release, null()), else_=jobs.c.unique_key)
_CLAIMED_AT = _p("p_claimed_at", UTCDateTime())
#: The attempt fence: the job is still executing the attempt the caller holds, and, when
#: the backend passes the claim's time (PostgreSQL), under that very claim.
FENCE = and_(
    jobs.c.id == _p("p_id", Integer()),
    jobs.c.attempt == _p("p_attempt", Integer()),
    jobs.c.state == _const("executing"),
    or_(_CLAIMED_AT.is_(None), jobs.c.attempted_at == _CLAIMED_AT),
)


def registered_incarnation(*, lock: bool = True) -> ColumnElement[bool]:
    """True when no incarnation is given (`p_incarnation` = ''), or when the instance id is
    registered by that very incarnation: the fence of a claim (and of "my executing jobs").

    One primary-key lookup per statement, not per job. With `lock`, the instance row is read
    FOR KEY SHARE (PostgreSQL), which waits for a registration's FOR UPDATE of the row and
    then re-checks it: a claim and a registration of one id serialize, so either the
    registration sees (and rescues) what the claim took, or the claim takes nothing. A
    heartbeat's FOR NO KEY UPDATE does not conflict with it. SQLite serializes writers anyway.
    """
    incarnation = _p("p_incarnation", String())
    row: Select[Any] = select(literal_column("1")).where(
        instances.c.instance_id == _p("p_instance", String()),
        instances.c.incarnation == incarnation,
    )
    if lock:
        row = row.with_for_update(read=True, key_share=True)
    return or_(incarnation == literal_column("''", String()), exists(row))


def queue_open(queue: ColumnElement[Any]) -> ColumnElement[bool]:
    """True unless `queue` is paused or held (pgflow_queue_controls): the one predicate every
    claim adds. Uncorrelated with the jobs scanned when `queue` is a bound value, so the
    database checks it once per statement (PostgreSQL: a one-time filter before the scan)."""
    return ~exists(
        select(literal_column("1")).where(
            queue_controls.c.queue == queue,
            or_(queue_controls.c.paused, queue_controls.c.hold_until > db_now()),
        )
    )


def run_insert(
    insert_fn: Any, extra: dict[Any, Any], condition: ColumnElement[bool] | None = None
) -> Insert:
    """A new run (running, attempt 1) unless its workflow_id exists, returned as stored;
    `extra` adds columns (a chain run's job, a flow run's step count)."""
    values: dict[Any, Any] = {
        runs.c.workflow_id: _p("p_workflow_id", String()),
        runs.c.workflow: _p("p_workflow", String()),
        runs.c.state: literal("running", String()),
        runs.c.attempt: literal(1, Integer()),
        runs.c.max_attempts: _p("p_max_attempts", Integer()),
        runs.c.input: _json("p_input"),
        runs.c.started_at: db_now(),
        runs.c.fingerprint: _p("p_fingerprint", String()),
        runs.c.definition: _json("p_definition"),
        **extra,
    }
    source = select(*values.values())
    if condition is not None:
        source = source.where(condition)
    insert: Insert = (
        insert_fn(runs)
        .from_select(list(values), source)
        .on_conflict_do_nothing(index_elements=[runs.c.workflow_id])
        .returning(*RUN_COLUMNS)
    )
    return insert


def claimed_values() -> dict[str, Any]:
    """What a claim writes: the next attempt, now, by the instance `p_instance`."""
    return {
        "state": "executing",
        "attempt": jobs.c.attempt + 1,
        "attempted_at": db_now(),
        "reserved_by": _p("p_instance", String()),
    }


#: What a rescue reads of each job it frees: never its payloads (errors are appended in SQL).
ORPHAN_COLUMNS = (
    jobs.c.id,
    jobs.c.attempt,
    jobs.c.max_attempts,
    jobs.c.reserved_by,
    cancel_flag(jobs.c.meta),
)


class Statements:
    """Every statement the SQL backends run, for one dialect."""

    def __init__(self, dialect: str) -> None:
        insert_fn: Any = postgresql.insert if dialect == "postgresql" else sqlite.insert
        id_in = _id_in_array if dialect == "postgresql" else _id_in_subquery
        now = db_now()

        # -- jobs ------------------------------------------------------------------------
        when = func.coalesce(
            _p("p_scheduled_at", UTCDateTime()), db_now_plus(seconds("p_schedule_in")), now
        )
        plain_insert = insert_fn(jobs).values(
            queue=_p("p_queue", String()),
            worker=_p("p_worker", String()),
            args=_json("p_args"),
            state=case((when > now, "scheduled"), else_="available"),
            priority=_p("p_priority", Integer()),
            attempt=0,
            max_attempts=_p("p_max_attempts", Integer()),
            scheduled_at=when,
            errors=as_json(literal("[]", String())),
            meta=_json("p_meta"),
            unique_key=_p("p_unique_key", String()),
            unique_release=_p("p_unique_release"),
            inserted_at=now,
            workflow_id=_p("p_workflow_id", String()),
            step=_p("p_step", String()),
            task_index=_p("p_task_index", Integer()),
        )
        #: One job, or the holder of its unique key (nothing returned on conflict).
        self.insert_job: Insert = plain_insert.on_conflict_do_nothing(
            index_elements=[jobs.c.unique_key], index_where=jobs.c.unique_key.is_not(None)
        ).returning(*JOB_COLUMNS)
        #: Many jobs without unique keys, executed with a list of parameter sets: SQLAlchemy
        #: batches them into multi-row INSERTs, rows returned in parameter order.
        self.insert_jobs: Insert = plain_insert.returning(
            *JOB_COLUMNS, sort_by_parameter_order=True
        )
        self.job_by_unique_key: Select[Any] = select(*JOB_COLUMNS).where(
            jobs.c.unique_key == _p("p_unique_key", String())
        )
        self.now: Select[Any] = select(now)
        self.claim: Update = (
            update(jobs)
            .where(
                registered_incarnation(),
                id_in(
                    select(jobs.c.id)
                    .where(
                        jobs.c.state == _const("available"),
                        jobs.c.queue == _p("p_queue", String()),
                        queue_open(_p("p_queue", String())),
                    )
                    .order_by(jobs.c.priority.desc(), jobs.c.scheduled_at, jobs.c.id)
                    .limit(_p("p_limit", Integer()))
                    .with_for_update(skip_locked=True)
                ),
                # A claim may commit without waiting for the WAL flush: see
                # PostgresBackend.claim_jobs for why that loses no guarantee.
                relaxed_commit(),
            )
            .values(**claimed_values())
            .returning(*CLAIM_COLUMNS)
        )
        self.complete: Update = (
            update(jobs)
            .where(
                jobs.c.state == _const("executing"),
                jobs.c.id.in_(bindparam("p_ids", expanding=True)),
                tuple_(jobs.c.id, jobs.c.attempt).in_(bindparam("p_refs", expanding=True)),
            )
            .values(state="completed", completed_at=now, unique_key=RELEASED_KEY)
            .returning(jobs.c.id)
        )
        #: One completion that stores a result (the batch statement above stores none).
        self.complete_with_result: Update = (
            update(jobs)
            .where(FENCE)
            .values(
                state="completed",
                completed_at=now,
                unique_key=RELEASED_KEY,
                result=_json("p_result"),
            )
            .returning(jobs.c.id)
        )
        # Only what the decision needs: never the job's args, errors or whole meta.
        self.fenced_job: Select[Any] = (
            select(jobs.c.attempt, jobs.c.max_attempts, cancel_flag(jobs.c.meta))
            .where(FENCE)
            .with_for_update()
        )
        appended_error = json_append(jobs.c.errors, _p("p_error", String()))
        self.retry: Update = (
            update(jobs)
            .where(jobs.c.id == _p("p_id", Integer()))
            .values(
                state="retryable",
                errors=appended_error,
                scheduled_at=db_now_plus(seconds("p_delay")),
            )
        )
        self.finish_failed: Update = (
            update(jobs)
            .where(jobs.c.id == _p("p_id", Integer()))
            .values(
                state=_p("p_state", String()),
                errors=appended_error,
                completed_at=now,
                unique_key=RELEASED_KEY,
            )
        )
        self.snooze: Update = (
            update(jobs)
            .where(FENCE)
            .values(
                state=_p("p_state", String()),
                attempt=jobs.c.attempt - 1,
                scheduled_at=db_now_plus(seconds("p_delay")),
            )
            .returning(jobs.c.queue, jobs.c.meta)
        )
        #: A snoozed job whose cancellation had been requested: cancelled, not rescheduled
        #: (the attempt the snooze gave back counts again).
        self.cancel_snoozed: Update = (
            update(jobs)
            .where(jobs.c.id == _p("p_id", Integer()))
            .values(
                state="cancelled",
                attempt=jobs.c.attempt + 1,
                completed_at=now,
                unique_key=RELEASED_KEY,
            )
        )
        self.job_for_update: Select[Any] = (
            select(*JOB_COLUMNS).where(jobs.c.id == _p("p_id", Integer())).with_for_update()
        )
        self.cancel_waiting: Update = (
            update(jobs)
            .where(
                jobs.c.id == _p("p_id", Integer()), jobs.c.state.in_([_const(v) for v in _WAITING])
            )
            .values(state="cancelled", completed_at=now, unique_key=RELEASED_KEY)
            .returning(*JOB_COLUMNS)
        )
        self.flag_cancel: Update = (
            update(jobs)
            .where(jobs.c.id == _p("p_id", Integer()), jobs.c.state == _const("executing"))
            .values(meta=_json("p_meta"))
            .returning(*JOB_COLUMNS)
        )
        self.cancel_flagged: Select[Any] = select(jobs.c.id).where(
            jobs.c.id.in_(bindparam("p_ids", expanding=True)),
            jobs.c.state == _const("executing"),
            cancel_flag(jobs.c.meta),
        )
        self.stage: Update = (
            update(jobs)
            .where(
                id_in(
                    select(jobs.c.id)
                    .where(
                        jobs.c.state.in_([_const("scheduled"), _const("retryable")]),
                        jobs.c.scheduled_at <= now,
                    )
                    .order_by(jobs.c.scheduled_at, jobs.c.id)
                    .limit(_p("p_limit", Integer()))
                    .with_for_update(skip_locked=True)
                )
            )
            .values(state="available")
            .returning(jobs.c.queue)
        )
        self.job: Select[Any] = select(*JOB_COLUMNS).where(jobs.c.id == _p("p_id", Integer()))
        self.retry_job: Update = (
            update(jobs)
            .where(jobs.c.id == _p("p_id", Integer()), jobs.c.state != _const("executing"))
            .values(
                state="available",
                scheduled_at=now,
                completed_at=null(),
                result=null(),
                max_attempts=_p("p_max_attempts", Integer()),
                meta=_json("p_meta"),
            )
            .returning(*JOB_COLUMNS)
        )
        self.executing_jobs: Select[Any] = (
            select(*SUMMARY_COLUMNS)
            .where(
                jobs.c.state == _const("executing"),
                jobs.c.queue == _p("p_queue", String()),
                jobs.c.reserved_by == _p("p_instance", String()),
                registered_incarnation(lock=False),
            )
            .order_by(jobs.c.id)
        )
        self.job_counts: Select[Any] = select(
            jobs.c.queue, jobs.c.state, jobs.c.reserved_by, func.count()
        ).group_by(jobs.c.queue, jobs.c.state, jobs.c.reserved_by)
        self.prune_jobs: Delete = delete(jobs).where(
            id_in(
                select(jobs.c.id)
                .where(
                    jobs.c.state.in_([_const(v) for v in _FINISHED]),
                    jobs.c.completed_at < db_now_plus(seconds("p_age")),
                )
                .order_by(jobs.c.completed_at, jobs.c.id)
                .limit(_p("p_limit", Integer()))
            )
        )
        self.old_runs: Select[Any] = (
            select(runs.c.workflow_id)
            .where(
                runs.c.state != _const("running"),
                runs.c.finished_at < db_now_plus(seconds("p_age")),
            )
            .order_by(runs.c.finished_at)
            .limit(_p("p_limit", Integer()))
        )
        self.delete_steps: Delete = delete(steps).where(
            steps.c.workflow_id.in_(bindparam("p_ids", expanding=True))
        )
        self.delete_runs: Delete = delete(runs).where(
            runs.c.workflow_id.in_(bindparam("p_ids", expanding=True))
        )

        # -- instances, rescue and leadership --------------------------------------------
        upsert = insert_fn(instances).values(
            instance_id=_p("p_instance", String()),
            status="online",
            heartbeat_at=now,
            started_at=now,
            hostname=_p("p_hostname", String()),
            pid=_p("p_pid", Integer()),
            queues=_json("p_queues"),
            incarnation=_p("p_incarnation", String()),
            flows=_json("p_flows"),
        )
        self.register: Insert = upsert.on_conflict_do_update(
            index_elements=[instances.c.instance_id],
            set_={
                "status": "online",
                "heartbeat_at": upsert.excluded.heartbeat_at,
                "started_at": upsert.excluded.started_at,
                "hostname": upsert.excluded.hostname,
                "pid": upsert.excluded.pid,
                "queues": upsert.excluded.queues,
                "incarnation": upsert.excluded.incarnation,
                "flows": upsert.excluded.flows,
            },
        )
        #: Registration's first statement: FOR UPDATE conflicts with a claim's FOR KEY SHARE
        #: (see `registered_incarnation`), so claims of the id wait for the registration.
        self.instance_status: Select[Any] = (
            select(instances.c.status, instances.c.incarnation)
            .where(instances.c.instance_id == _p("p_instance", String()))
            .with_for_update()
        )
        #: The heartbeat's read: FOR NO KEY UPDATE serializes it with registrations (and other
        #: beats) but not with claims, which never wait on a heartbeat.
        self.instance_liveness: Select[Any] = (
            select(instances.c.status, instances.c.incarnation)
            .where(instances.c.instance_id == _p("p_instance", String()))
            .with_for_update(key_share=True)
        )
        #: Every job the instance id holds: what an earlier incarnation left executing.
        self.held_by: Select[Any] = (
            select(*ORPHAN_COLUMNS)
            .where(
                jobs.c.state == _const("executing"),
                jobs.c.reserved_by == _p("p_instance", String()),
            )
            .order_by(jobs.c.id)
            .with_for_update()
        )
        self.heartbeat: Update = (
            update(instances)
            .where(instances.c.instance_id == _p("p_instance", String()))
            .values(status="online", heartbeat_at=now)
        )
        self.set_abandoned: Update = (
            update(instances)
            .where(instances.c.instance_id == _p("p_instance", String()))
            .values(abandoned=_p("p_count", Integer()))
        )
        incarnation = _p("p_incarnation", String())
        self.mark_offline: Update = (
            update(instances)
            .where(
                instances.c.instance_id == _p("p_instance", String()),
                or_(incarnation == "", instances.c.incarnation == incarnation),
            )
            .values(status="offline")
        )
        self.instances: Select[Any] = select(*INSTANCE_COLUMNS).order_by(
            case((instances.c.status == _const("online"), 0), else_=1), instances.c.instance_id
        )
        self.mark_stale: Update = (
            update(instances)
            .where(
                instances.c.status == _const("online"),
                instances.c.heartbeat_at < db_now_plus(seconds("p_age")),
            )
            .values(status="offline")
            .returning(instances.c.instance_id)
        )
        online = select(instances.c.instance_id).where(instances.c.status == _const("online"))
        self.orphaned: Select[Any] = (
            select(*ORPHAN_COLUMNS)
            .where(
                jobs.c.state == _const("executing"),
                or_(jobs.c.reserved_by.is_(None), jobs.c.reserved_by.not_in(online)),
            )
            .order_by(jobs.c.id)
            .with_for_update(skip_locked=True)
        )
        self.requeue: Update = (
            update(jobs)
            .where(jobs.c.id == _p("p_id", Integer()), jobs.c.state == _const("executing"))
            .values(state="available", errors=appended_error)
            .returning(jobs.c.queue)
        )
        #: Cron: advance an entry's last enqueued slot only forward (a compare-and-set)...
        cron_slot = _p("p_slot", UTCDateTime())
        self.cron_advance: Update = (
            update(cron_slots)
            .where(cron_slots.c.name == _p("p_name", String()), cron_slots.c.last_slot < cron_slot)
            .values(last_slot=cron_slot)
            .returning(cron_slots.c.name)
        )
        #: ...or record its first slot (nothing when a rival recorded one first).
        self.cron_first: Insert = (
            insert_fn(cron_slots)
            .values(name=_p("p_name", String()), last_slot=cron_slot)
            .on_conflict_do_nothing(index_elements=[cron_slots.c.name])
            .returning(cron_slots.c.name)
        )
        lease = insert_fn(leader).values(
            name=LEADER_NAME,
            instance_id=_p("p_instance", String()),
            expires_at=db_now_plus(seconds("p_ttl")),
        )
        self.acquire: Insert = lease.on_conflict_do_update(
            index_elements=[leader.c.name],
            set_={
                "instance_id": lease.excluded.instance_id,
                "expires_at": lease.excluded.expires_at,
            },
            where=or_(
                leader.c.instance_id == lease.excluded.instance_id, leader.c.expires_at <= now
            ),
        ).returning(leader.c.instance_id)
        self.release: Delete = delete(leader).where(
            leader.c.name == LEADER_NAME, leader.c.instance_id == _p("p_instance", String())
        )

        # -- runs ------------------------------------------------------------------------
        # Run and step writes carry relaxed_commit(): see PostgresBackend._run_write.
        self.insert_run: Insert = run_insert(
            insert_fn, {runs.c.job_id: _p("p_job_id", Integer())}, relaxed_commit()
        )
        self.run: Select[Any] = select(*RUN_COLUMNS).where(
            runs.c.workflow_id == _p("p_workflow_id", String())
        )
        # A compare-and-set: only a running or failed run still at the attempt before moves on.
        self.start_attempt: Update = (
            update(runs)
            .where(
                runs.c.workflow_id == _p("p_workflow_id", String()),
                runs.c.attempt == _p("p_previous", Integer()),
                runs.c.state.in_([_const("running"), _const("failed")]),
                relaxed_commit(),
            )
            .values(
                attempt=_p("p_attempt", Integer()),
                state="running",
                output=null(),
                error=null(),
                finished_at=null(),
            )
        )
        workflow_id = _p("p_workflow_id", String())
        attempt = _p("p_attempt", Integer())
        self.record_step: Insert = insert_fn(steps).execution_options(preserve_rowcount=True)
        self.record_step = self.record_step.from_select(
            [
                steps.c.workflow_id,
                steps.c.step,
                steps.c.idx,
                steps.c.attempt,
                steps.c.outcome,
                steps.c.output,
                steps.c.error,
                steps.c.started_at,
                steps.c.duration,
                steps.c.element,
            ],
            select(
                workflow_id,
                _p("p_step", String()),
                _p("p_idx", Integer()),
                attempt,
                _p("p_outcome", String()),
                _json("p_output"),
                _json("p_error"),
                _p("p_started_at", UTCDateTime()),
                _p("p_duration", Float()),
                _p("p_element", Integer()),
            ).where(
                exists().where(
                    runs.c.workflow_id == workflow_id,
                    runs.c.attempt == attempt,
                    runs.c.state == _const("running"),
                ),
                relaxed_commit(),
            ),
        )
        self.finish_run: Update = (
            update(runs)
            .where(
                runs.c.workflow_id == workflow_id,
                runs.c.attempt == attempt,
                runs.c.state == _const("running"),
                relaxed_commit(),
            )
            .values(
                state=_p("p_state", String()),
                output=_json("p_output"),
                error=_json("p_error"),
                finished_at=now,
            )
        )
        self.steps: Select[Any] = (
            select(*STEP_COLUMNS).where(steps.c.workflow_id == workflow_id).order_by(steps.c.id)
        )
        # Newest first; SQLite's clock ticks in milliseconds, so its rowid breaks ties.
        self.runs_newest_first: tuple[Any, ...] = (
            (runs.c.started_at.desc(), literal_column("pgflow_runs.rowid").desc())
            if dialect == "sqlite"
            else (runs.c.started_at.desc(), runs.c.workflow_id.desc())
        )


@functools.cache
def statements_for(dialect: str) -> Statements:
    """The statements for `dialect` ("postgresql" or "sqlite"), built on first use."""
    return Statements(dialect)
