"""Rows to records: the column lists statements return, and the mapping from them.

Statements return columns in exactly these orders, so mapping is by position (fast, and
independent of how a driver names result columns).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, overload

from sqlalchemy import Text, cast
from sqlalchemy.sql.elements import ColumnElement

from pgflow.records import Instance, Job, JobState, RunRecord, StepRecord, TaskKey
from pgflow.schema import instances, jobs, runs, steps
from pgflow.serialization import loads

__all__ = [
    "CLAIM_COLUMNS",
    "INSTANCE_COLUMNS",
    "JOB_COLUMNS",
    "RUN_COLUMNS",
    "STEP_COLUMNS",
    "SUMMARY_COLUMNS",
    "decode_errors",
    "decode_object",
    "instance_from_row",
    "job_from_driver_row",
    "job_from_row",
    "job_summary_from_row",
    "run_from_row",
    "step_from_row",
    "stored_copy",
    "task_key",
    "utc",
]

# JSON columns of jobs come back as text and are decoded here: json.loads is several times
# cheaper than a driver's per-value JSON loader, and "{}" / "[]" need no parsing at all.
JOB_COLUMNS: tuple[ColumnElement[Any], ...] = (
    jobs.c.id,
    jobs.c.queue,
    jobs.c.worker,
    cast(jobs.c.args, Text).label("args"),
    jobs.c.state,
    jobs.c.priority,
    jobs.c.attempt,
    jobs.c.max_attempts,
    jobs.c.scheduled_at,
    jobs.c.inserted_at,
    jobs.c.attempted_at,
    jobs.c.completed_at,
    jobs.c.reserved_by,
    cast(jobs.c.errors, Text).label("errors"),
    cast(jobs.c.meta, Text).label("meta"),
    jobs.c.unique_key,
    jobs.c.workflow_id,
    jobs.c.step,
    jobs.c.task_index,
    cast(jobs.c.result, Text).label("result"),
)
#: What a claim returns: a claimed job has no result yet (a retried job's was cleared).
CLAIM_COLUMNS = JOB_COLUMNS[:19]
#: A job without its JSON payloads, for reads that only need to know which jobs exist.
SUMMARY_COLUMNS: tuple[ColumnElement[Any], ...] = tuple(
    column for column in JOB_COLUMNS if column.name not in {"args", "errors", "meta", "result"}
)
INSTANCE_COLUMNS: tuple[ColumnElement[Any], ...] = (
    instances.c.instance_id,
    instances.c.status,
    instances.c.heartbeat_at,
    instances.c.started_at,
    instances.c.hostname,
    instances.c.pid,
    instances.c.queues,
    instances.c.incarnation,
    instances.c.abandoned,
    instances.c.flows,
)
RUN_COLUMNS: tuple[ColumnElement[Any], ...] = (
    runs.c.workflow_id,
    runs.c.workflow,
    runs.c.state,
    runs.c.attempt,
    runs.c.max_attempts,
    runs.c.input,
    runs.c.started_at,
    runs.c.output,
    runs.c.error,
    runs.c.finished_at,
    runs.c.job_id,
    runs.c.fingerprint,
    runs.c.definition,
    runs.c.parent_id,
    runs.c.parent_step,
    runs.c.restart_of,
    runs.c.deadline_at,
)
STEP_COLUMNS: tuple[ColumnElement[Any], ...] = (
    steps.c.workflow_id,
    steps.c.step,
    steps.c.idx,
    steps.c.attempt,
    steps.c.outcome,
    steps.c.started_at,
    steps.c.duration,
    steps.c.output,
    steps.c.error,
    steps.c.element,
)

_STATES = {state.value: state for state in JobState}
_scan = json.JSONDecoder().raw_decode


@overload
def utc(value: datetime) -> datetime: ...
@overload
def utc(value: None) -> None: ...
@overload
def utc(value: datetime | None) -> datetime | None: ...
def utc(value: datetime | None) -> datetime | None:
    """The same instant in UTC (drivers return the session's time zone)."""
    if value is None or value.tzinfo is UTC:
        return value
    return value.astimezone(UTC)


def decode_object(text: str | None) -> dict[str, Any]:
    """A JSON object column as a fresh dict ("{}" is common and needs no parser).

    The text is a whole JSON document from the database or pgflow's encoder, so the
    scanner runs directly (json.loads adds two whitespace regex matches per call).
    """
    if not text or text == "{}":
        return {}
    value: dict[str, Any] = _scan(text)[0]
    return value


_SCALARS = frozenset({str, int, float, bool, type(None)})


def stored_copy(value: dict[str, Any], text: str) -> dict[str, Any]:
    """`value` as it comes back after being stored as `text` (its JSON encoding).

    A flat dict of str keys and scalar values survives JSON unchanged (floats are finite:
    the encoder refuses NaN and infinities), so a shallow copy is the same as decoding and
    several times cheaper; anything else (lists, nested dicts, tuples, subclasses) is
    decoded from the text.
    """
    scalars = _SCALARS
    for key, item in value.items():
        if type(key) is not str or type(item) not in scalars:
            return decode_object(text)
    return dict(value)


def decode_errors(text: str | None) -> tuple[Any, ...]:
    """The errors column ("[]" until a job first fails)."""
    if not text or text == "[]":
        return ()
    return tuple(loads(text))


def job_from_row(row: Sequence[Any], *, conflict: bool = False) -> Job:
    """A Job from a row of JOB_COLUMNS or CLAIM_COLUMNS (times already made UTC by
    UTCDateTime).

    Job.trusted: every value is already of its final type here, so no converters run."""
    return Job.trusted(
        id=row[0],
        queue=row[1],
        worker=row[2],
        args=decode_object(row[3]),
        state=_STATES[row[4]],
        priority=row[5],
        attempt=row[6],
        max_attempts=row[7],
        scheduled_at=row[8],
        inserted_at=row[9],
        attempted_at=row[10],
        completed_at=row[11],
        reserved_by=row[12],
        errors=decode_errors(row[13]),
        meta=decode_object(row[14]),
        unique_key=row[15],
        conflict=conflict,
        result=loads(row[19]) if len(row) > 19 else None,
        task=task_key(row[16], row[17], row[18]),
    )


def job_from_driver_row(row: Sequence[Any]) -> Job:
    """A Job from a row of CLAIM_COLUMNS as the driver returned it (no SQLAlchemy types
    applied): times are made UTC here."""
    return Job.trusted(
        id=row[0],
        queue=row[1],
        worker=row[2],
        args=decode_object(row[3]),
        state=_STATES[row[4]],
        priority=row[5],
        attempt=row[6],
        max_attempts=row[7],
        scheduled_at=utc(row[8]),
        inserted_at=utc(row[9]),
        attempted_at=utc(row[10]),
        completed_at=utc(row[11]),
        reserved_by=row[12],
        errors=decode_errors(row[13]),
        meta=decode_object(row[14]),
        unique_key=row[15],
        task=task_key(row[16], row[17], row[18]),
    )


def task_key(workflow_id: str | None, step: str | None, index: int | None) -> TaskKey | None:
    """The flow run unit a job row is, from its task columns (None for ordinary jobs)."""
    if workflow_id is None or step is None:
        return None
    return TaskKey(workflow_id, step, index or 0)


def job_summary_from_row(row: Sequence[Any]) -> Job:
    """A Job from a row of SUMMARY_COLUMNS: args, meta, errors and result left empty."""
    return Job.trusted(
        id=row[0],
        queue=row[1],
        worker=row[2],
        args={},
        state=_STATES[row[3]],
        priority=row[4],
        attempt=row[5],
        max_attempts=row[6],
        scheduled_at=row[7],
        inserted_at=row[8],
        attempted_at=row[9],
        completed_at=row[10],
        reserved_by=row[11],
        unique_key=row[12],
        task=task_key(row[13], row[14], row[15]),
    )


def instance_from_row(row: Sequence[Any]) -> Instance:
    # A keyword dict: mypy's attrs plugin cannot type a `converter=tuple` field's argument.
    served: dict[str, Any] = {"flows": _flow_pairs(row[9])}
    return Instance(
        instance_id=row[0],
        status=row[1],
        heartbeat_at=row[2],
        started_at=row[3],
        hostname=row[4],
        pid=row[5],
        queues=row[6] or {},
        incarnation=row[7],
        abandoned=row[8] or 0,
        **served,
    )


def _flow_pairs(stored: Any) -> tuple[tuple[str, str], ...]:
    """The (flow name, fingerprint) pairs of an instance row: JSON keeps them as lists."""
    return tuple((str(name), str(fingerprint)) for name, fingerprint in stored or ())


def run_from_row(row: Sequence[Any]) -> RunRecord:
    return RunRecord(
        workflow_id=row[0],
        workflow=row[1],
        state=row[2],
        attempt=row[3],
        max_attempts=row[4],
        input=row[5],
        started_at=row[6],
        output=row[7],
        error=row[8],
        finished_at=row[9],
        job_id=row[10],
        fingerprint=row[11],
        definition=row[12],
        parent_id=row[13],
        parent_step=row[14],
        restart_of=row[15],
        deadline_at=row[16],
    )


def step_from_row(row: Sequence[Any]) -> StepRecord:
    return StepRecord(
        workflow_id=row[0],
        step=row[1],
        index=row[2],
        attempt=row[3],
        outcome=row[4],
        started_at=row[5],
        duration=row[6],
        output=row[7],
        error=row[8],
        element=row[9],
    )
