"""The statements of flow control (issue 12), one set per dialect: pauses and holds, and the
shaped claim (global limit, sliding rate windows, partitions served round robin).

A shaped claim runs in one transaction that first serializes the queue's claims
(PostgreSQL: an advisory lock; SQLite: its writer lock), then reads the queue's head
(`head`: the clock, the control row, what executes, the rate window's use), then claims
within the budget that leaves. Partition keys are read from the jobs' args by
`partition_key`, bound as values: a queue name or a key never becomes SQL text.
"""

from __future__ import annotations

import functools
from datetime import datetime
from typing import Any

from sqlalchemy import (
    CTE,
    Delete,
    Float,
    Insert,
    Integer,
    Select,
    String,
    Update,
    any_,
    bindparam,
    case,
    delete,
    func,
    literal_column,
    null,
    select,
    true,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.functions import FunctionElement

from pgflow.schema import UTCDateTime, jobs, partition_holds, queue_controls, rate_starts
from pgflow_backends.sql.expressions import db_now, db_now_plus, relaxed_commit, seconds
from pgflow_backends.sql.rows import CLAIM_COLUMNS
from pgflow_backends.sql.statements import claimed_values, registered_incarnation

__all__ = [
    "QUEUE_LOCK_CLASS",
    "QueueStatements",
    "partition_params",
    "pg_partition_sql",
    "queue_statements_for",
    "shaped_values",
]

#: The first key of the two-key advisory lock a shaped claim takes (the second: hashtext of
#: the queue name): "pgfw", apart from any single-key lock an application takes.
QUEUE_LOCK_CLASS = 0x70676677
#: Partition keys longer than this are cut (the width of the partition columns).
PARTITION_WIDTH = 255
_SQLITE_NOW = "((julianday('now') - 2440587.5) * 86400.0)"


def _p(name: str, type_: Any = None) -> Any:
    return bindparam(name, type_=type_)


def partition_params(key: str) -> dict[str, str]:
    """The bind parameters `partition_key` reads: the args key, and SQLite's JSON paths to it
    (the key is quoted: "a.b" is one key, not a nested path; the Queue validator allows no
    quote in it)."""
    quoted = '"' + key.replace('"', "") + '"'
    return {
        "p_key": key,
        "p_path": f"$.{quoted}",
        "p_task_path": f"$.args[0].{quoted}",
        "p_input_path": f"$.kwargs.input.{quoted}",
    }


class partition_key(FunctionElement[str]):
    """A job's partition: its args' KEY as text; for a flow task (workflow_id set, args an
    envelope) KEY of its positional value, else of its `input` keyword; "" when missing or
    null. Cut to PARTITION_WIDTH characters."""

    type = String()
    inherit_cache = True
    name = "partition_key"


@compiles(partition_key, "postgresql")
def _partition_pg(element: partition_key, compiler: SQLCompiler, **kw: Any) -> str:
    args, workflow_id = (compiler.process(arg, **kw) for arg in element.clauses)
    return pg_partition_sql(args, workflow_id, compiler.process(_p("p_key"), **kw))


def pg_partition_sql(args: str, workflow_id: str, key: str) -> str:
    """`partition_key` as PostgreSQL text, of the columns `args` and `workflow_id` and the
    bound args key `key`."""
    key = f"CAST({key} AS TEXT)"
    return (
        f"COALESCE(LEFT(CASE WHEN {workflow_id} IS NULL THEN {args} ->> {key} "
        f"ELSE COALESCE({args} -> 'args' -> 0 ->> {key}, "
        f"{args} -> 'kwargs' -> 'input' ->> {key}) END, {PARTITION_WIDTH}), '') COLLATE \"C\""
    )


def _sqlite_text(args: str, path: str) -> str:
    """A JSON value at `path` as PostgreSQL's ->> gives it (true/false as words, null as
    NULL, strings unquoted)."""
    return (
        f"(CASE json_type({args}, {path}) WHEN 'true' THEN 'true' WHEN 'false' THEN 'false' "
        f"WHEN 'null' THEN NULL ELSE CAST(json_extract({args}, {path}) AS TEXT) END)"
    )


@compiles(partition_key, "sqlite")
def _partition_sqlite(element: partition_key, compiler: SQLCompiler, **kw: Any) -> str:
    args, workflow_id = (compiler.process(arg, **kw) for arg in element.clauses)
    path, task_path, input_path = (
        compiler.process(_p(name, String()), **kw)
        for name in ("p_path", "p_task_path", "p_input_path")
    )
    return (
        f"COALESCE(substr(CASE WHEN {workflow_id} IS NULL THEN {_sqlite_text(args, path)} "
        f"ELSE COALESCE({_sqlite_text(args, task_path)}, {_sqlite_text(args, input_path)}) END, "
        f"1, {PARTITION_WIDTH}), '')"
    )


class clock_now(FunctionElement[datetime]):
    """The database's clock now (PostgreSQL: clock_timestamp(), not the transaction's start),
    the time a shaped claim counts its windows from and records its starts at."""

    type = UTCDateTime()
    inherit_cache = True
    name = "clock_now"


@compiles(clock_now, "postgresql")
def _clock_pg(element: clock_now, compiler: SQLCompiler, **kw: Any) -> str:
    return "clock_timestamp()"


@compiles(clock_now, "sqlite")
def _clock_sqlite(element: clock_now, compiler: SQLCompiler, **kw: Any) -> str:
    return _SQLITE_NOW


class time_minus(FunctionElement[datetime]):
    """A time minus a number of seconds."""

    type = UTCDateTime()
    inherit_cache = True
    name = "time_minus"


@compiles(time_minus, "postgresql")
def _minus_pg(element: time_minus, compiler: SQLCompiler, **kw: Any) -> str:
    at, secs = (compiler.process(arg, **kw) for arg in element.clauses)
    return f"({at} - make_interval(secs => {secs}))"


@compiles(time_minus, "sqlite")
def _minus_sqlite(element: time_minus, compiler: SQLCompiler, **kw: Any) -> str:
    at, secs = (compiler.process(arg, **kw) for arg in element.clauses)
    return f"({at} - {secs})"


class later_of(FunctionElement[datetime]):
    """The later of two times, either of which may be NULL: a hold only ever extends."""

    type = UTCDateTime()
    inherit_cache = True
    name = "later_of"


@compiles(later_of, "postgresql")
def _later_pg(element: later_of, compiler: SQLCompiler, **kw: Any) -> str:
    first, second = (compiler.process(arg, **kw) for arg in element.clauses)
    return f"GREATEST({first}, {second})"


@compiles(later_of, "sqlite")
def _later_sqlite(element: later_of, compiler: SQLCompiler, **kw: Any) -> str:
    first, second = (compiler.process(arg, **kw) for arg in element.clauses)
    return f"(CASE WHEN {first} IS NULL OR {second} > {first} THEN {second} ELSE {first} END)"


def shaped_values() -> dict[str, Any]:
    """What a shaped claim writes: as a plain claim, but attempted_at is the clock the head
    read after the lock (`p_at`), the very time its starts are recorded at, so the jobs'
    start times keep the rate windows exactly (and still differ from claim to claim)."""
    return dict(claimed_values(), attempted_at=_p("p_at", UTCDateTime()))


class QueueStatements:
    """Flow control's statements for one dialect; the shaped claims' variants by shape."""

    def __init__(self, dialect: str) -> None:
        self.dialect = dialect
        insert_fn: Any = postgresql.insert if dialect == "postgresql" else sqlite.insert
        now = db_now()
        queue = _p("p_queue", String())
        controls = queue_controls.c

        pause = insert_fn(queue_controls).values(
            queue=queue, paused=True, paused_at=now, updated_at=now
        )
        self.pause: Insert = pause.on_conflict_do_update(
            index_elements=[controls.queue],
            set_={
                "paused": true(),
                # Paused already: keep the time it was paused first.
                "paused_at": case((controls.paused, controls.paused_at), else_=now),
                "updated_at": now,
            },
        )
        resume = insert_fn(queue_controls).values(queue=queue, paused=False, updated_at=now)
        self.resume: Insert = resume.on_conflict_do_update(
            index_elements=[controls.queue],
            set_={"paused": False, "paused_at": null(), "updated_at": now},
        )
        until = db_now_plus(seconds("p_seconds"))
        hold = insert_fn(queue_controls).values(
            queue=queue, paused=False, hold_until=until, updated_at=now
        )
        self.hold: Insert = hold.on_conflict_do_update(
            index_elements=[controls.queue],
            set_={"hold_until": later_of(controls.hold_until, until), "updated_at": now},
        )
        hold_part = insert_fn(partition_holds).values(
            queue=queue, partition=_p("p_partition", String()), hold_until=until
        )
        self.hold_partition: Insert = hold_part.on_conflict_do_update(
            index_elements=[partition_holds.c.queue, partition_holds.c.partition],
            set_={"hold_until": later_of(partition_holds.c.hold_until, until)},
        )
        #: Expired partition holds of a queue: gone when the queue is held again.
        self.drop_expired_holds: Delete = delete(partition_holds).where(
            partition_holds.c.queue == queue, partition_holds.c.hold_until <= now
        )
        self.controls: Select[Any] = select(
            controls.queue,
            controls.paused,
            controls.paused_at,
            case((controls.hold_until > now, controls.hold_until), else_=null()),
        ).order_by(controls.queue)
        self.control: Any = self.controls.where(controls.queue == queue)
        self.partition_holds: Select[Any] = (
            select(
                partition_holds.c.queue, partition_holds.c.partition, partition_holds.c.hold_until
            )
            .where(partition_holds.c.hold_until > now)
            .order_by(partition_holds.c.queue, partition_holds.c.partition)
        )
        self.queue_partition_holds: Any = self.partition_holds.where(
            partition_holds.c.queue == queue
        )
        at = _p("p_at", UTCDateTime())
        self.prune_starts: Delete = delete(rate_starts).where(
            rate_starts.c.queue == queue,
            rate_starts.c.started_at < time_minus(at, _p("p_longest", Float())),
        )
        self.record_starts: Insert = insert_fn(rate_starts).values(
            queue=queue, partition=_p("p_partition", String()), started_at=at
        )
        cursor = insert_fn(queue_controls).values(
            queue=queue, paused=False, cursor=_p("p_cursor", String()), updated_at=now
        )
        self.set_cursor: Insert = cursor.on_conflict_do_update(
            index_elements=[controls.queue],
            set_={"cursor": cursor.excluded.cursor, "updated_at": now},
        )
        self.rate_used: Select[Any] = select(func.count()).where(
            rate_starts.c.queue == queue,
            rate_starts.c.started_at >= time_minus(now, _p("p_period", Float())),
        )
        self.counts: Any = select(
            func.count().filter(jobs.c.state == literal_column("'executing'")),
            func.count().filter(jobs.c.state == literal_column("'available'")),
        ).where(
            jobs.c.queue == queue,
            jobs.c.state.in_([literal_column("'executing'"), literal_column("'available'")]),
        )
        part = partition_key(jobs.c.args, jobs.c.workflow_id)
        by_part = (
            select(
                part.label("part"),
                func.count().filter(jobs.c.state == literal_column("'available'")).label("a"),
                func.count().filter(jobs.c.state == literal_column("'executing'")).label("e"),
            )
            .where(
                jobs.c.queue == queue,
                jobs.c.state.in_([literal_column("'executing'"), literal_column("'available'")]),
            )
            .group_by(part)
            .subquery("by_part")
        )
        self.top_partitions: Select[Any] = (
            select(by_part.c.part, by_part.c.a, by_part.c.e)
            .where(by_part.c.a > 0)
            .order_by(by_part.c.a.desc(), self._ordered(by_part.c.part))
            .limit(10)
        )

    def _ordered(self, column: ColumnElement[str]) -> ColumnElement[str]:
        """Partition keys in code point order (Python's): `partition_key` is COLLATE "C" on
        PostgreSQL already, and SQLite compares bytes."""
        return column

    def lock(self) -> Any:
        """PostgreSQL: the transaction-scoped advisory lock that serializes a queue's shaped
        claims (bound: the queue's name)."""
        return select(
            func.pg_advisory_xact_lock(
                literal_column(str(QUEUE_LOCK_CLASS), Integer()),
                func.hashtext(_p("p_queue", String())),
            )
        )

    @functools.cache  # noqa: B019 - one instance per dialect, kept for the process
    def head(self, executing: bool, rate: bool, keys: bool = False) -> Select[Any]:
        """(clock now, blocked, cursor, executing, rate window use) of the queue, read after the
        lock. `executing` / `rate`: count those (else NULL). `keys`: then also (keyed_by,
        keyed_through, swept_at, the newest job id) for the partitioned claim's keying."""
        queue = _p("p_queue", String())
        clock: CTE = select(clock_now().label("at")).cte("clock")
        controls = queue_controls.c
        blocked = case(
            (controls.paused, true()),
            (controls.hold_until > clock.c.at, true()),
            else_=literal_column("false") if self.dialect == "postgresql" else literal_column("0"),
        )
        busy: Any = null()
        if executing:
            busy = (
                select(func.count())
                .where(jobs.c.queue == queue, jobs.c.state == literal_column("'executing'"))
                .scalar_subquery()
            )
        used: Any = null()
        if rate:
            used = (
                select(func.count())
                .where(
                    rate_starts.c.queue == queue,
                    rate_starts.c.started_at >= time_minus(clock.c.at, _p("p_period", Float())),
                )
                .scalar_subquery()
            )
        columns: list[Any] = [clock.c.at, blocked, controls.cursor, busy, used]
        if keys:
            newest = select(func.max(jobs.c.id)).scalar_subquery()
            columns += [controls.keyed_by, controls.keyed_through, controls.swept_at, newest]
        return select(*columns).select_from(
            clock.outerjoin(queue_controls, controls.queue == queue)
        )

    @functools.cache  # noqa: B019
    def claim(self) -> Update:
        """A shaped claim without partitions: the plain claim's statement with the budget as
        its limit (the pause was checked by the head, under the lock)."""
        candidates = (
            select(jobs.c.id)
            .where(jobs.c.state == literal_column("'available'"), jobs.c.queue == _p("p_queue"))
            .order_by(jobs.c.priority.desc(), jobs.c.scheduled_at, jobs.c.id)
            .limit(_p("p_limit", Integer()))
            .with_for_update(skip_locked=True)
        )
        return (
            update(jobs)
            .where(registered_incarnation(), self._id_in(candidates), relaxed_commit())
            .values(**shaped_values())
            .returning(*CLAIM_COLUMNS)
        )

    def _id_in(self, ids: Select[Any]) -> ColumnElement[bool]:
        if self.dialect == "postgresql":
            return jobs.c.id == any_(func.array(ids.scalar_subquery()))
        return jobs.c.id.in_(ids)


@functools.cache
def queue_statements_for(dialect: str) -> QueueStatements:
    """The flow-control statements for `dialect`, built on first use."""
    return QueueStatements(dialect)
