"""What the dashboard's pages show, read from the store and cached for a few seconds.

Counts by queue and state, runs by flow and state and the hour's throughput are the only
reads whose cost grows with the table; each is cached for `cache_seconds` (one query per
period, however many browsers poll), the rest is read per request.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, TypeVar

import attrs
from croniter import croniter

from pgflow.backend import Backend
from pgflow.inspection import Inspection, RunCount, StateCount, ThroughputBucket
from pgflow.queue_config import Queue, published_options
from pgflow.records import JobState

__all__ = ["CronRow", "QueueRow", "ReadModel", "TTLCache"]

T = TypeVar("T")
logger = logging.getLogger("pgflow.dashboard")

#: The overview's chart: this many buckets of BUCKET_SECONDS, ending now.
BUCKETS = 60
BUCKET_SECONDS = 60
STATES = tuple(state.value for state in JobState)


class TTLCache:
    """Values computed at most once per `seconds` each (per key), shared by all threads.

    A value past its time is still served while one background thread computes the next
    (so no page waits for a count over a million jobs once the first one is known); only a
    key never computed, or dropped by `forget`, makes its caller wait. With `seconds` 0
    nothing is cached.
    """

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds = seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._values: dict[str, tuple[float, Any]] = {}
        self._refreshing: set[str] = set()

    def get(self, key: str, compute: Callable[[], T]) -> T:
        """The value (stale ones refreshed behind); a key never computed is computed now."""
        if self.seconds <= 0:
            return compute()
        with self._lock:
            found = self._values.get(key)
            if found is not None:
                self._refresh_if_stale(key, found[0], compute)
                value: T = found[1]
                return value
        value = compute()
        with self._lock:
            self._values[key] = (self._clock(), value)
        return value

    def peek(self, key: str, compute: Callable[[], T]) -> T | None:
        """Like `get`, but never waits: a key never computed starts computing on a thread
        of its own and None is returned (the page says "counting" until it is known)."""
        if self.seconds <= 0:
            return compute()
        with self._lock:
            found = self._values.get(key)
            if found is None:
                self._refresh_if_stale(key, -math.inf, compute)
                return None
            self._refresh_if_stale(key, found[0], compute)
            value: T = found[1]
            return value

    def _refresh_if_stale(self, key: str, computed_at: float, compute: Callable[[], Any]) -> None:
        """Start the one background refresh of `key` when due (the lock is held)."""
        if self._clock() - computed_at >= self.seconds and key not in self._refreshing:
            self._refreshing.add(key)
            threading.Thread(
                target=self._refresh,
                args=(key, compute),
                daemon=True,
                name=f"pgflow-dashboard-{key}",
            ).start()

    def _refresh(self, key: str, compute: Callable[[], Any]) -> None:
        try:
            value = compute()
        except Exception:  # the stale value stays; the next request tries again
            logger.warning(
                "dashboard: refreshing %s failed", key, exc_info=True, extra={"cache_key": key}
            )
            with self._lock:
                self._refreshing.discard(key)
            return
        with self._lock:
            self._values[key] = (self._clock(), value)
            self._refreshing.discard(key)

    def clear(self) -> None:
        """Make every value stale (after an action): the next read refreshes it."""
        with self._lock:
            self._values = {key: (-math.inf, value) for key, (_, value) in self._values.items()}

    def forget(self) -> None:
        """Drop every value: the next read of each waits for a fresh one."""
        with self._lock:
            self._values.clear()


@attrs.frozen
class QueueRow:
    """One queue on the overview."""

    name: str
    #: Jobs by state; None while the first count runs (the page fills it in live).
    counts: dict[str, int] | None
    paused: bool
    held_until: datetime | None
    #: The options the online instances serving it published, most common first.
    options: tuple[tuple[Queue, int], ...]
    #: BUCKETS buckets, oldest first, each (start, completed, failed).
    throughput: tuple[tuple[datetime, int, int], ...]

    @property
    def total_limit(self) -> int:
        """Jobs the online instances may run at once, all together."""
        return sum(options.limit * count for options, count in self.options)

    @property
    def completed_hour(self) -> int:
        return sum(bucket[1] for bucket in self.throughput)

    @property
    def failed_hour(self) -> int:
        return sum(bucket[2] for bucket in self.throughput)

    @property
    def failure_rate(self) -> float | None:
        """Discarded / finished over the hour; None when nothing finished."""
        finished = self.completed_hour + self.failed_hour
        return None if finished == 0 else self.failed_hour / finished


@attrs.frozen
class CronRow:
    """A cron entry known from `pgflow_cron`: its worker, expression and slots."""

    name: str
    worker: str
    expression: str | None
    last_slot: datetime
    next_slot: datetime | None


def cron_row(name: str, last_slot: datetime, now: datetime) -> CronRow:
    """Read worker and expression back from an entry's name ("worker m h dom mon dow
    [digest]", see `CronEntry.name`); the next slot is the first minute after `now`."""
    parts = name.split(" ")
    expression = " ".join(parts[1:6]) if len(parts) >= 6 else None
    next_slot: datetime | None = None
    if expression is not None and croniter.is_valid(expression):
        next_slot = croniter(expression, now).get_next(datetime)
    else:
        expression = None
    return CronRow(name, parts[0], expression, last_slot, next_slot)


class ReadModel:
    """The dashboard's reads of one store."""

    def __init__(self, backend: Backend, inspection: Inspection, cache_seconds: float) -> None:
        self.backend = backend
        self.inspection = inspection
        self.cache = TTLCache(cache_seconds)

    def now(self) -> datetime:
        return self.backend.database_time()

    def warm(self) -> None:
        """Compute the cached reads once, so that even the first page finds them (run on a
        thread of its own when the dashboard starts; a failure is only logged)."""
        try:
            self.state_counts()
            self.run_counts()
            now = self.now()
            since = now - timedelta(seconds=BUCKETS * BUCKET_SECONDS)
            self.cache.get("throughput", lambda: self.inspection.throughput(since, BUCKET_SECONDS))
        except Exception:  # the store may not be reachable yet: pages will say so
            logger.warning("dashboard: warming the counts failed", exc_info=True)

    def state_counts(self) -> list[StateCount]:
        """Jobs by queue and state, waiting for them when they were never counted."""
        return self.cache.get("state_counts", self.inspection.state_counts)

    def run_counts(self) -> list[RunCount]:
        return self.cache.get("run_counts", self.inspection.run_counts)

    def counted(self) -> list[StateCount] | None:
        """Jobs by queue and state for a page: None while the first count runs."""
        return self.cache.peek("state_counts", self.inspection.state_counts)

    def runs_counted(self) -> list[RunCount] | None:
        return self.cache.peek("run_counts", self.inspection.run_counts)

    def throughput(self, now: datetime) -> list[ThroughputBucket] | None:
        since = now - timedelta(seconds=BUCKETS * BUCKET_SECONDS)
        return self.cache.peek(
            "throughput", lambda: self.inspection.throughput(since, BUCKET_SECONDS)
        )

    def queues(self, only: str | None = None) -> list[QueueRow]:
        """Every queue known from its jobs, its online instances or a stored control."""
        now = self.now()
        counted = self.counted()
        counts: dict[str, dict[str, int]] = {}
        for row in counted or ():
            counts.setdefault(row.queue, dict.fromkeys(STATES, 0))[row.state.value] = row.count
        instances = self.backend.list_instances()
        options = published_options(instances)
        controls = {control.queue: control for control in self.backend.queue_controls()}
        flows = self._buckets(now)
        names = sorted(set(counts) | set(options) | set(controls))
        if only is not None:  # while the first count runs, any name may be a queue's
            names = [only] if only in names or counted is None else []
        rows = []
        for name in names:
            control = controls.get(name)
            hold = control.hold_until if control is not None else None
            rows.append(
                QueueRow(
                    name=name,
                    counts=None if counted is None else counts.get(name, dict.fromkeys(STATES, 0)),
                    paused=control is not None and control.paused,
                    held_until=hold if hold is not None and hold > now else None,
                    options=options.get(name, ()),
                    throughput=flows.get(name, _empty_buckets(now)),
                )
            )
        return rows

    def _buckets(self, now: datetime) -> dict[str, tuple[tuple[datetime, int, int], ...]]:
        """Each queue's last BUCKETS minutes, oldest first, zeros where nothing finished."""
        found: dict[str, dict[datetime, tuple[int, int]]] = {}
        for bucket in self.throughput(now) or ():
            found.setdefault(bucket.queue, {})[bucket.start] = (bucket.completed, bucket.failed)
        starts = [start for start, _, _ in _empty_buckets(now)]
        return {
            queue: tuple((start, *by_start.get(start, (0, 0))) for start in starts)
            for queue, by_start in found.items()
        }

    def cron(self, now: datetime) -> list[CronRow]:
        return [cron_row(name, slot, now) for name, slot in self.inspection.cron_slots()]


def _empty_buckets(now: datetime) -> tuple[tuple[datetime, int, int], ...]:
    epoch = int(now.timestamp()) // BUCKET_SECONDS * BUCKET_SECONDS
    first = epoch - (BUCKETS - 1) * BUCKET_SECONDS
    return tuple(
        (datetime.fromtimestamp(first + i * BUCKET_SECONDS, now.tzinfo), 0, 0)
        for i in range(BUCKETS)
    )
