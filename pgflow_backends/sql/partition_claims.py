"""Partitioned claims that never scan a queue's backlog (issue 12).

A job's partition is read from its args by the database, but only by a claim: inserts know
nothing of partitions. Each partitioned claim first keys the queue's jobs that have no
`partition_key` yet (those inserted since the previous claim: ids above the queue's
`keyed_through`), so the claim itself reads only `pgflow_jobs_partition_idx`: the partitions
with available jobs in key order (a skip scan, starting after the cursor and stopping once the
budget has as many partitions), and each one's next jobs.

A job whose insert committed after a later id was keyed (a long transaction) is keyed by the
queue's sweep, at most SWEEP_SECONDS later (PostgreSQL only: SQLite's writer lock orders
commits by id). A claim with another `partition_by` than the one the jobs were keyed by keys
every unfinished job of the queue again.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import attrs
from sqlalchemy import (
    BigInteger,
    Connection,
    Float,
    Integer,
    Select,
    String,
    TextClause,
    Update,
    any_,
    bindparam,
    column,
    exists,
    func,
    literal_column,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql.elements import BindParameter, ColumnElement

from pgflow.schema import UTCDateTime, jobs, partition_holds, queue_controls, rate_starts
from pgflow_backends.sql.expressions import db_now, relaxed_commit
from pgflow_backends.sql.queue_statements import (
    partition_key,
    partition_params,
    pg_partition_sql,
    shaped_values,
    time_minus,
)
from pgflow_backends.sql.rows import CLAIM_COLUMNS
from pgflow_backends.sql.statements import registered_incarnation

__all__ = [
    "PG_INDEX_ONLY",
    "SWEEP_SECONDS",
    "KeyState",
    "PartitionClaims",
    "partition_claims_for",
    "pg_pick_sql",
]

#: How often a partitioned queue's claims look for jobs whose insert committed late.
SWEEP_SECONDS = 10.0
_UNFINISHED = ("available", "scheduled", "retryable", "executing")


def _p(name: str, type_: Any = None) -> Any:
    return bindparam(name, type_=type_)


def _const(value: str) -> Any:
    return literal_column(f"'{value}'")


@attrs.frozen
class KeyState:
    """What the queue's control row says of its keys, and the newest job id, as the head read
    them after the lock."""

    keyed_by: str | None
    keyed_through: int | None
    swept_at: datetime | None
    newest_id: int | None


#: The PostgreSQL claim's choice of jobs, one statement. The walk: the partitions with
#: available jobs from after the cursor (wrapping once), each with its next job (the first
#: index entry past the previous partition) and its cap (0: held, or at its limits),
#: stopping once `p_limit` partitions can give a job. Round one takes those jobs; only when
#: fewer partitions than the budget can give one do the next rounds read more of each.
_PG_PICK = """
WITH RECURSIVE walk(k, id, wrapped, cap, n) AS (
    SELECT y.k, y.id, y.wrapped, %(cap)s, 0
    FROM (SELECT 1) AS one
    LEFT JOIN LATERAL (%(entry)s AND j.partition_key > CAST(:p_cursor AS TEXT) COLLATE "C"
                       %(order)s) AS x ON true
    LEFT JOIN LATERAL (%(entry)s AND x.k IS NULL %(order)s) AS f ON true
    -- OFFSET 0: each step's subqueries run once, not once per reference.
    CROSS JOIN LATERAL (
        SELECT CAST(COALESCE(x.k, f.k) AS TEXT) COLLATE "C" AS k, COALESCE(x.id, f.id) AS id,
               CASE WHEN x.k IS NULL THEN 1 ELSE 0 END AS wrapped OFFSET 0) AS y
    WHERE y.k IS NOT NULL
  UNION ALL
    SELECT y.k, y.id, y.wrapped, %(cap)s, y.n
    FROM walk AS w
    LEFT JOIN LATERAL (%(entry)s AND j.partition_key > w.k %(order)s) AS x ON true
    LEFT JOIN LATERAL (%(entry)s AND x.k IS NULL AND w.wrapped = 0 %(order)s) AS f ON true
    CROSS JOIN LATERAL (
        SELECT CAST(COALESCE(x.k, f.k) AS TEXT) COLLATE "C" AS k, COALESCE(x.id, f.id) AS id,
               CASE WHEN x.k IS NULL THEN 1 ELSE w.wrapped END AS wrapped,
               w.n + CASE WHEN w.cap > 0 THEN 1 ELSE 0 END AS n OFFSET 0) AS y
    WHERE w.n + CASE WHEN w.cap > 0 THEN 1 ELSE 0 END < :p_limit
      AND y.k IS NOT NULL
      AND (y.wrapped = 0 OR CAST(:p_cursor AS TEXT) IS NULL
           OR y.k <= CAST(:p_cursor AS TEXT) COLLATE "C")
),
eligible AS (SELECT k, id, wrapped, cap FROM walk WHERE cap > 0),
counted AS (SELECT count(*) AS e FROM eligible),
candidates AS (
    SELECT id, k, wrapped, 1 AS rnk FROM eligible
  UNION ALL
    SELECT c.id, e.k, e.wrapped,
           1 + row_number() OVER (PARTITION BY e.k
                                  ORDER BY c.priority DESC, c.scheduled_at, c.id) AS rnk
    FROM eligible AS e
    CROSS JOIN counted
    CROSS JOIN LATERAL (
        SELECT j.id, j.priority, j.scheduled_at FROM pgflow_jobs AS j
        WHERE j.queue = :p_queue AND j.state = 'available' AND j.partition_key = e.k
        ORDER BY j.priority DESC, j.scheduled_at, j.id
        -- Round one took a job of every eligible partition: one partition gets at most
        -- the rest of the budget after that.
        OFFSET 1 LIMIT LEAST(e.cap, :p_limit - counted.e + 1) - 1) AS c
    WHERE counted.e < :p_limit AND e.cap > 1
)
SELECT id FROM candidates ORDER BY rnk, wrapped, k LIMIT :p_limit
"""
#: Before the PostgreSQL claim, for the rest of its transaction: its plan walks the indexes,
#: even when the statistics were taken before any job was keyed (they then promise no keyed
#: row, and a scan and sort of "one row" looks cheaper than any index). No JIT: the cost the
#: settings give the scans they forbid would make every plan look worth compiling.
PG_INDEX_ONLY = (
    "SET LOCAL enable_seqscan = off; SET LOCAL enable_bitmapscan = off; SET LOCAL jit = off"
)
#: The first index entry (partition, job) of the queue's keyed available jobs, past a bound.
_PG_ENTRY = (
    "SELECT j.partition_key AS k, j.id FROM pgflow_jobs AS j WHERE j.queue = :p_queue "
    "AND j.state = 'available' AND j.partition_key IS NOT NULL"
)
_PG_ORDER = "ORDER BY j.partition_key, j.priority DESC, j.scheduled_at, j.id LIMIT 1"


def pg_pick_sql(
    per_limit: bool,
    per_rate: bool,
    *,
    limit: str = ":p_limit",
    at: str = ":p_at",
    cursor: str = "CAST(:p_cursor AS TEXT)",
) -> str:
    """_PG_PICK for a shape, its budget, clock and cursor given as SQL (bound parameters,
    or a statement's own values)."""
    sql = _PG_PICK % {
        "entry": _PG_ENTRY,
        "order": _PG_ORDER,
        "cap": _pg_cap("y.k", per_limit, per_rate),
    }
    sql = sql.replace(":p_limit", limit).replace(":p_at", at)
    return sql.replace("CAST(:p_cursor AS TEXT)", cursor)


def _pg_cap(key: str, per_limit: bool, per_rate: bool) -> str:
    """A partition's cap: what the round robin may take of it (0 when held)."""
    # The holds' and windows' partitions are in the database's collation: compare in it,
    # so their indexes serve.
    other = f'({key} COLLATE "default")'
    limits = [":p_limit"]
    if per_limit:
        # Executing jobs not keyed (claimed by a claim without partitions) read their args;
        # whether the queue has any is asked once (an InitPlan), each partition's only then.
        unkeyed = pg_partition_sql("b.args", "b.workflow_id", ":p_key")
        limits.append(
            ":p_plimit - (SELECT count(*) FROM pgflow_jobs AS b WHERE b.queue = :p_queue "
            f"AND b.state = 'executing' AND b.partition_key = {key}) "
            "- CASE WHEN (SELECT EXISTS (SELECT 1 FROM pgflow_jobs AS u "
            "WHERE u.queue = :p_queue AND u.state = 'executing' AND u.partition_key IS NULL)) "
            "THEN (SELECT count(*) FROM pgflow_jobs AS b WHERE b.queue = :p_queue "
            f"AND b.state = 'executing' AND b.partition_key IS NULL AND {unkeyed} = {key}) "
            "ELSE 0 END"
        )
    if per_rate:
        limits.append(
            ":p_prate_allowed - (SELECT count(*) FROM pgflow_rate_starts AS r "
            f"WHERE r.queue = :p_queue AND r.partition = {other} "
            "AND r.started_at >= :p_at - make_interval(secs => :p_prate_period))"
        )
    # Whether the queue holds any partition is asked once (an InitPlan), each partition's
    # hold only then.
    return (
        "CASE WHEN (SELECT EXISTS (SELECT 1 FROM pgflow_partition_holds AS q "
        "WHERE q.queue = :p_queue AND q.hold_until > :p_at)) "
        "AND EXISTS (SELECT 1 FROM pgflow_partition_holds AS h WHERE h.queue = :p_queue "
        f"AND h.partition = {other} AND h.hold_until > :p_at) THEN 0 "
        f"ELSE LEAST({', '.join(limits)}) END"
    )


class PartitionClaims:
    """The statements of partitioned claims for one dialect."""

    def __init__(self, dialect: str) -> None:
        self.dialect = dialect
        #: Whether inserts can commit out of id order (and the sweep is needed).
        self.late_commits = dialect == "postgresql"
        queue = _p("p_queue", String())
        key = partition_key(jobs.c.args, jobs.c.workflow_id)
        unfinished = jobs.c.state.in_([_const(state) for state in _UNFINISHED])
        keyed = update(jobs).values(partition_key=key)
        #: Every unfinished job of the queue, keyed anew (the key changed, or never keyed).
        self.key_all: Update = keyed.where(jobs.c.queue == queue, unfinished)
        # Ids in order from the primary key, whatever the planner thinks of the table: the
        # `p_n` ids above `p_through` (all jobs inserted since, of any queue).
        since = (
            select(jobs.c.id)
            .where(jobs.c.id > _p("p_through", BigInteger()))
            .order_by(jobs.c.id)
            .limit(_p("p_n", Integer()))
        )
        new_ids: ColumnElement[bool] = (
            jobs.c.id == any_(func.array(since.scalar_subquery()))
            if dialect == "postgresql"
            else jobs.c.id.in_(since)
        )
        #: The queue's jobs inserted since the last claim (ids above `p_through`).
        self.key_new: Update = keyed.where(
            new_ids, jobs.c.queue == queue, jobs.c.partition_key.is_(None), unfinished
        )
        #: The queue's available jobs left without a key (their insert committed late).
        self.sweep: Update = keyed.where(
            jobs.c.queue == queue,
            jobs.c.state == _const("available"),
            jobs.c.partition_key.is_(None),
        )
        insert_fn: Any = postgresql.insert if dialect == "postgresql" else sqlite.insert
        now = db_now()
        progress = insert_fn(queue_controls).values(
            queue=queue,
            paused=False,
            cursor=_p("p_cursor", String()),
            keyed_by=_p("p_key", String()),
            keyed_through=_p("p_through", BigInteger()),
            swept_at=_p("p_swept", UTCDateTime()),
            updated_at=now,
        )
        excluded = progress.excluded
        #: A partitioned claim's record: the cursor, and how far the queue's jobs are keyed.
        self.set_progress: Any = progress.on_conflict_do_update(
            index_elements=[queue_controls.c.queue],
            set_={
                "cursor": excluded.cursor,
                "keyed_by": excluded.keyed_by,
                "keyed_through": excluded.keyed_through,
                "swept_at": excluded.swept_at,
                "updated_at": now,
            },
        )
        available = (
            jobs.c.queue == queue,
            jobs.c.state == _const("available"),
            jobs.c.partition_key.is_not(None),
        )
        first: Select[Any] = (
            select(jobs.c.partition_key).where(*available).order_by(jobs.c.partition_key)
        )
        #: SQLite's walk, one statement a step: the first partition with available jobs...
        self.first_key: Select[Any] = first.limit(1)
        #: ... and the next one after `p_after`.
        self.next_key: Select[Any] = first.where(
            jobs.c.partition_key > _p("p_after", String())
        ).limit(1)
        #: SQLite: the next jobs of partition `p_part`.
        self.next_jobs: Select[Any] = (
            select(jobs.c.id)
            .where(
                jobs.c.queue == queue,
                jobs.c.state == _const("available"),
                jobs.c.partition_key == _p("p_part", String()),
            )
            .order_by(jobs.c.priority.desc(), jobs.c.scheduled_at, jobs.c.id)
            .limit(_p("p_n", Integer()))
        )

    @functools.cache  # noqa: B019 - one instance per dialect, kept for the process
    def key_load(self, per_limit: bool, per_rate: bool) -> Select[Any]:
        """SQLite: (held, executing, window starts) of partition `p_part`."""
        queue = _p("p_queue", String())
        part = _p("p_part", String())
        held = exists().where(
            partition_holds.c.queue == queue,
            partition_holds.c.partition == part,
            partition_holds.c.hold_until > _p("p_at", UTCDateTime()),
        )
        busy: Any = literal_column("0")
        if per_limit:
            executing = (jobs.c.queue == queue, jobs.c.state == _const("executing"))
            keyed = select(func.count()).where(*executing, jobs.c.partition_key == part)
            # Executing jobs not keyed (claimed by a claim without partitions): their args.
            unkeyed = select(func.count()).where(
                *executing,
                jobs.c.partition_key.is_(None),
                partition_key(jobs.c.args, jobs.c.workflow_id) == part,
            )
            busy = keyed.scalar_subquery() + unkeyed.scalar_subquery()
        used: Any = literal_column("0")
        if per_rate:
            since = time_minus(_p("p_at", UTCDateTime()), _p("p_prate_period", Float()))
            used = (
                select(func.count())
                .where(
                    rate_starts.c.queue == queue,
                    rate_starts.c.partition == part,
                    rate_starts.c.started_at >= since,
                )
                .scalar_subquery()
            )
        return select(held, busy, used)

    @functools.cache  # noqa: B019
    def claim_ids(self) -> Update:
        """Claim the jobs of `p_ids` still available (SQLite: the walk chose them)."""
        return self._claim(jobs.c.id.in_(bindparam("p_ids", expanding=True)))

    @functools.cache  # noqa: B019
    def claim(self, per_limit: bool, per_rate: bool) -> Update:
        """PostgreSQL: choose and claim in one statement (see _PG_PICK)."""
        sql = pg_pick_sql(per_limit, per_rate)
        params: list[BindParameter[Any]] = [
            bindparam("p_queue", type_=String()),
            bindparam("p_cursor", type_=String()),
            bindparam("p_limit", type_=Integer()),
            bindparam("p_at", type_=UTCDateTime()),
        ]
        if per_limit:
            params.append(bindparam("p_plimit", type_=Integer()))
            params.append(bindparam("p_key", type_=String()))
        if per_rate:
            params.append(bindparam("p_prate_allowed", type_=Integer()))
            params.append(bindparam("p_prate_period", type_=Float()))
        picked: TextClause = text(sql).bindparams(*params)
        ids = picked.columns(column("id", BigInteger())).scalar_subquery()
        return self._claim(jobs.c.id == any_(func.array(ids)))

    def _claim(self, chosen: ColumnElement[bool]) -> Update:
        return (
            update(jobs)
            .where(
                registered_incarnation(),
                chosen,
                # Taken meanwhile by a claim that does not shape the queue: skipped. (COALESCE
                # hides the claim index's predicate: the ids are fetched by primary key.)
                func.coalesce(jobs.c.state, literal_column("''")) == _const("available"),
                relaxed_commit(),
            )
            .values(**shaped_values())
            .returning(*CLAIM_COLUMNS, jobs.c.partition_key)
        )

    # -- running them -------------------------------------------------------------------

    def key_jobs(
        self, connection: Connection, params: dict[str, Any], key: str, state: KeyState
    ) -> tuple[int, datetime | None]:
        """Key the queue's jobs that need it (under the queue's lock); returns the new
        (keyed_through, swept_at)."""
        at: datetime = params["p_at"]
        values = dict(params, **partition_params(key))
        newest = state.newest_id or 0
        if state.keyed_by != key:
            connection.execute(self.key_all, values)
            return newest, at
        through = state.keyed_through or 0
        if newest > through:
            connection.execute(self.key_new, dict(values, p_through=through, p_n=newest - through))
        swept = state.swept_at
        if self.late_commits and (swept is None or (at - swept).total_seconds() >= SWEEP_SECONDS):
            connection.execute(self.sweep, values)
            swept = at
        return max(newest, through), swept

    def choose_and_claim(
        self,
        connection: Connection,
        params: dict[str, Any],
        cursor: str | None,
        per_limit: bool,
        per_rate: bool,
    ) -> Sequence[Any]:
        """The claimed rows (claim columns, then the partition)."""
        if self.dialect == "postgresql":
            connection.exec_driver_sql(PG_INDEX_ONLY)
            return connection.execute(self.claim(per_limit, per_rate), params).all()
        ids = self._walk(connection, params, cursor, per_limit, per_rate)
        if not ids:
            return []
        return connection.execute(self.claim_ids(), dict(params, p_ids=ids)).all()

    def _walk(
        self,
        connection: Connection,
        params: dict[str, Any],
        cursor: str | None,
        per_limit: bool,
        per_rate: bool,
    ) -> list[int]:
        """SQLite (statements cost no round trip): _PG_PICK step by step."""
        budget: int = params["p_limit"]
        load = self.key_load(per_limit, per_rate)
        eligible: list[tuple[bool, str, int]] = []
        wrapped = cursor is None
        part = (
            connection.execute(self.first_key, params).scalar()
            if cursor is None
            else connection.execute(self.next_key, dict(params, p_after=cursor)).scalar()
        )
        while len(eligible) < budget:
            if part is None:
                if wrapped:
                    break
                wrapped = True
                part = connection.execute(self.first_key, params).scalar()
                continue
            if wrapped and cursor is not None and part > cursor:
                break
            held, busy, used = connection.execute(load, dict(params, p_part=part)).one()
            cap = 0 if held else budget
            if per_limit:
                cap = min(cap, params["p_plimit"] - busy)
            if per_rate:
                cap = min(cap, params["p_prate_allowed"] - used)
            if cap > 0:
                eligible.append((wrapped and cursor is not None, part, cap))
            part = connection.execute(self.next_key, dict(params, p_after=part)).scalar()
        ranked: list[tuple[int, bool, str, int]] = []
        most = budget - len(eligible) + 1
        for late, part, cap in eligible:
            found = connection.execute(
                self.next_jobs, dict(params, p_part=part, p_n=min(cap, most))
            ).scalars()
            ranked.extend((rank, late, part, job_id) for rank, job_id in enumerate(found))
        ranked.sort()
        return [job_id for *_, job_id in ranked[:budget]]


@functools.cache
def partition_claims_for(dialect: str) -> PartitionClaims:
    """The partitioned claims' statements for `dialect`, built on first use."""
    return PartitionClaims(dialect)
