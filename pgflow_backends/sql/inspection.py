"""The dashboard's reads (`pgflow.inspection.Inspection`) on SQLite and PostgreSQL.

Each read is one bounded statement: job pages walk an index newest first with a LIMIT (a
filter no index serves reads at most the newest SCAN_LIMIT jobs), throughput reads the
finished jobs of the last hour through the prune index. Counts read the table (the
dashboard runs them in the background).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    Float,
    Integer,
    bindparam,
    case,
    cast,
    delete,
    func,
    literal_column,
    select,
    text,
    type_coerce,
)
from sqlalchemy.sql.elements import BindParameter, ColumnElement, TextClause

from pgflow.inspection import (
    INDEXED_STATES,
    SCAN_LIMIT,
    JobFilter,
    RunCount,
    StateCount,
    ThroughputBucket,
    check_deletable,
    like_pattern,
    scans_window,
    sorted_counts,
)
from pgflow.records import FINISHED_STATES, Job, JobState
from pgflow.schema import STATE_INDEX_PREDICATES, cron_slots, jobs, leader, runs
from pgflow_backends.sql.expressions import db_now
from pgflow_backends.sql.rows import JOB_COLUMNS, job_from_row
from pgflow_backends.sql.statements import LEADER_NAME

if TYPE_CHECKING:
    from pgflow_backends.sql.base import SQLBackend

__all__ = ["SQLInspection"]

_THROUGHPUT_STATES = (JobState.COMPLETED.value, JobState.DISCARDED.value)
_FINISHED = tuple(state.value for state in FINISHED_STATES)


class SQLInspection:
    """Inspection reads through an SQLBackend's connections (and its error translation)."""

    def __init__(self, backend: SQLBackend) -> None:
        self._backend = backend
        self._dialect = backend.engine.dialect.name

    def state_counts(self) -> list[StateCount]:
        # A scan of the table: an index of every job would cost each claim and completion an
        # entry. The dashboard counts in the background, so no page waits for it.
        statement = (
            select(jobs.c.queue, jobs.c.state, func.count())
            .group_by(jobs.c.queue, jobs.c.state)
            .order_by(jobs.c.queue, jobs.c.state)
        )
        with self._backend._read() as connection:
            rows = connection.execute(statement).all()
        return sorted_counts([StateCount(queue, state, count) for queue, state, count in rows])

    def run_counts(self) -> list[RunCount]:
        statement = select(runs.c.workflow, runs.c.state, func.count()).group_by(
            runs.c.workflow, runs.c.state
        )
        with self._backend._read() as connection:
            rows = connection.execute(statement).all()
        counts = [RunCount(flow, state, count) for flow, state, count in rows]
        return sorted(counts, key=lambda c: (c.flow, c.state.value))

    def throughput(self, since: datetime, bucket_seconds: int) -> list[ThroughputBucket]:
        if bucket_seconds < 1:
            raise ValueError(f"bucket_seconds must be at least 1, got {bucket_seconds!r}")
        bucket = self._bucket(bucket_seconds)
        failed = func.sum(case((jobs.c.state == JobState.DISCARDED.value, 1), else_=0))
        statement = (
            select(jobs.c.queue, bucket.label("bucket"), func.count(), failed)
            # All finished states, so the partial prune index (completed_at) serves it.
            .where(jobs.c.state.in_(_FINISHED), jobs.c.completed_at >= since)
            .where(jobs.c.state.in_(_THROUGHPUT_STATES))
            .group_by(jobs.c.queue, literal_column("bucket"))
        )
        with self._backend._read() as connection:
            rows = connection.execute(statement).all()
        found = [
            ThroughputBucket(
                queue=queue,
                start=datetime.fromtimestamp(int(number) * bucket_seconds, UTC),
                completed=int(total) - int(failures or 0),
                failed=int(failures or 0),
            )
            for queue, number, total, failures in rows
        ]
        return sorted(found, key=lambda b: (b.queue, b.start))

    def _bucket(self, bucket_seconds: int) -> ColumnElement[Any]:
        """The bucket number of `completed_at` (floor of epoch seconds / bucket)."""
        if self._dialect == "sqlite":  # epoch seconds already; positive, so CAST floors
            return cast(type_coerce(jobs.c.completed_at, Float()) / bucket_seconds, Integer)
        epoch = func.extract("epoch", jobs.c.completed_at)
        return cast(func.floor(epoch / bucket_seconds), Integer)

    def find_jobs(self, where: JobFilter) -> list[Job]:
        indexed, scanned = _filters(jobs.c, where, self._dialect == "sqlite")
        newest = select(*JOB_COLUMNS).where(*indexed).order_by(jobs.c.id.desc())
        if not scans_window(where):
            statement = newest.where(*scanned).limit(where.limit)
        else:
            # The newest SCAN_LIMIT jobs the indexed filters leave, walked newest first (a
            # LIMIT keeps the subquery apart, so the walk stops at the page's last match).
            window = newest.limit(SCAN_LIMIT).subquery("recent")
            scanned = _filters(window.c, where, False)[1]
            if where.text:  # the args as text (JOB_COLUMNS casts them)
                scanned.append(window.c.args.ilike(like_pattern(where.text), escape="\\"))
            statement = (
                select(*window.c).where(*scanned).order_by(window.c.id.desc()).limit(where.limit)
            )
        with self._backend._read() as connection:
            rows = connection.execute(statement).all()
        return [job_from_row(row) for row in rows]

    def delete_job(self, job_id: int) -> bool:
        with self._backend._tx() as connection:
            row = connection.execute(
                select(jobs.c.state, jobs.c.workflow_id)
                .where(jobs.c.id == job_id)
                .with_for_update()
            ).first()
            if row is None:
                return False
            state, workflow_id = JobState(row[0]), row[1]
            check_deletable(job_id, state, workflow_id)
            connection.execute(delete(jobs).where(jobs.c.id == job_id))
        return True

    def leader(self) -> str | None:
        statement = select(leader.c.instance_id).where(
            leader.c.name == LEADER_NAME, leader.c.expires_at > db_now()
        )
        with self._backend._read() as connection:
            found: str | None = connection.execute(statement).scalar()
        return found

    def cron_slots(self) -> list[tuple[str, datetime]]:
        statement = select(cron_slots.c.name, cron_slots.c.last_slot).order_by(cron_slots.c.name)
        with self._backend._read() as connection:
            rows = connection.execute(statement).all()
        return [(name, slot) for name, slot in rows]


_Condition = ColumnElement[bool] | TextClause


def _filters(
    columns: Any, where: JobFilter, repeat_predicate: bool
) -> tuple[list[_Condition], list[_Condition]]:
    """`where` but its text as (conditions an index serves, conditions read in a bounded
    scan). `repeat_predicate` for SQLite, which uses a partial index only for a WHERE term
    it sees (PostgreSQL proves the implication, and would count the state's rarity twice)."""
    indexed: list[_Condition] = []
    scanned: list[_Condition] = []
    served = where.state in INDEXED_STATES
    if where.before is not None:
        indexed.append(columns.id < where.before)
    if where.state is not None:
        # Inline (a validated enum value): a partial index's predicate matches only a state
        # the planner sees, never the parameter of a generic plan.
        value: BindParameter[str] = bindparam(
            "state", where.state.value, unique=True, literal_execute=True
        )
        (indexed if served else scanned).append(columns.state == value)
        predicate = STATE_INDEX_PREDICATES.get(where.state.value)
        if served and predicate is not None and repeat_predicate:
            indexed.append(text(predicate))
    if where.queue is not None:
        (indexed if served else scanned).append(columns.queue == where.queue)
    if where.worker is not None:
        scanned.append(columns.worker == where.worker)
    return indexed, scanned
