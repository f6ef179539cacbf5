"""Read-side queries for tools that look at a whole store (the dashboard, /metrics).

The engine's protocol (`pgflow.backend`) is what workers need; browsing a million jobs needs
other reads: newest-first pages with filters, counts by queue and state, throughput per
minute, the leader, the cron slots. A backend offers them through one accessor,
`backend.inspection()`, so the protocol the engine depends on stays as it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

import attrs

from pgflow.errors import BackendError, JobStateError
from pgflow.records import Job, JobState, RunState

__all__ = [
    "INDEXED_STATES",
    "SCAN_LIMIT",
    "Inspection",
    "JobFilter",
    "RunCount",
    "StateCount",
    "ThroughputBucket",
    "check_deletable",
    "inspection_for",
    "like_pattern",
    "scans_window",
    "sorted_counts",
]

#: A filter no index serves (worker, args text, a queue without an indexed state, the
#: completed state) reads at most this many of the newest jobs the indexed filters leave:
#: an index per filter would cost every claim and completion an entry, so the scan is bounded.
SCAN_LIMIT = 50_000

#: States a partial index finds newest first on the SQL backends (claim, executing and stage
#: indexes; the dashboard's index of retryable, discarded and cancelled jobs). Completed jobs
#: are most of a store: a newest-first walk of the primary key finds them.
INDEXED_STATES = frozenset(
    {
        JobState.AVAILABLE,
        JobState.EXECUTING,
        JobState.SCHEDULED,
        JobState.RETRYABLE,
        JobState.DISCARDED,
        JobState.CANCELLED,
    }
)


def _check_limit(_instance: object, _attribute: attrs.Attribute[int], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1000:
        raise ValueError(f"limit must be an int between 1 and 1000, got {value!r}")


def _optional_state(value: JobState | str | None) -> JobState | None:
    return None if value is None else JobState(value)


@attrs.frozen
class JobFilter:
    """Which jobs a page lists: newest first, all filters combined, `before` an id to page
    back from (keyset paging: the next page starts below the last id shown)."""

    queue: str | None = None
    state: JobState | None = attrs.field(default=None, converter=_optional_state)
    worker: str | None = None
    #: A substring of the args' JSON text (case-insensitive).
    text: str | None = None
    before: int | None = None
    limit: int = attrs.field(default=50, validator=_check_limit)


@attrs.frozen
class StateCount:
    """How many jobs of one queue are in one state."""

    queue: str
    state: JobState = attrs.field(converter=JobState)
    count: int


@attrs.frozen
class RunCount:
    """How many runs of one flow are in one state."""

    flow: str
    state: RunState = attrs.field(converter=RunState)
    count: int


@attrs.frozen
class ThroughputBucket:
    """Jobs of one queue that finished in one time bucket: completed and discarded."""

    queue: str
    start: datetime
    completed: int
    failed: int


@runtime_checkable
class Inspection(Protocol):
    """What the dashboard reads from a store, each a bounded query on indexes."""

    def state_counts(self) -> list[StateCount]:
        """Jobs by queue and state (no instance split: cheaper than `job_counts`)."""
        ...

    def run_counts(self) -> list[RunCount]:
        """Runs by flow and state."""
        ...

    def throughput(self, since: datetime, bucket_seconds: int) -> list[ThroughputBucket]:
        """Jobs finished (completed or discarded) since `since`, per queue and bucket of
        `bucket_seconds` (buckets aligned on the epoch); buckets without any are left out."""
        ...

    def find_jobs(self, where: JobFilter) -> list[Job]:
        """Up to `where.limit` jobs matching every filter, newest (highest id) first; on the
        SQL backends only among the newest SCAN_LIMIT jobs when `scans_window(where)`."""
        ...

    def delete_job(self, job_id: int) -> bool:
        """Delete a job that is not executing (a running job must be cancelled first:
        JobStateError naming it). False when there is no such job."""
        ...

    def leader(self) -> str | None:
        """The instance holding an unexpired leader lease, if any."""
        ...

    def cron_slots(self) -> list[tuple[str, datetime]]:
        """Every cron entry that enqueued a slot: (entry name, newest slot), by name."""
        ...


def inspection_for(backend: Any) -> Inspection:
    """The backend's `inspection()`, or BackendError naming a backend that has none."""
    accessor = getattr(backend, "inspection", None)
    if accessor is None:
        raise BackendError(
            f"{type(backend).__name__} offers no inspection() (the reads the dashboard "
            "needs); use a bundled backend (PostgreSQL, SQLite or memory)"
        )
    found = accessor()
    if not isinstance(found, Inspection):
        raise BackendError(f"{type(backend).__name__}.inspection() is no pgflow Inspection")
    return found


def like_pattern(text: str) -> str:
    """A LIKE pattern matching `text` anywhere, its wildcards escaped (escape char "\\")."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def scans_window(where: JobFilter) -> bool:
    """Whether the SQL backends answer `where` from the newest SCAN_LIMIT jobs (below
    `before`, in `where.state` when that state is indexed) rather than from an index alone."""
    if where.worker is not None or where.text:
        return True
    if where.state is None:
        return where.queue is not None
    return where.state not in INDEXED_STATES


def sorted_counts(counts: Sequence[StateCount]) -> list[StateCount]:
    """Counts in a stable order (queue, then state), whatever order a backend found them in."""
    return sorted(counts, key=lambda c: (c.queue, c.state.value))


def check_deletable(job_id: int, state: JobState, workflow_id: str | None) -> None:
    """A running job, or a live task of a flow run, is not deleted (the run would hang)."""
    if state is JobState.EXECUTING:
        raise JobStateError(f"job {job_id} is executing; cancel it, then delete it once it ended")
    if workflow_id is not None and not state.finished:
        raise JobStateError(
            f"job {job_id} is a {state.value} task of flow run {workflow_id!r}; cancel the "
            "run instead of deleting its task"
        )
