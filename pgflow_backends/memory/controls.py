"""The in-memory flow-control tables: queue pauses and holds, partition holds, rate windows,
and the shaped claim (global limit, rate limit, partitions served round robin).

The memory counterpart of pgflow_queue_controls, pgflow_partition_holds and
pgflow_rate_starts. Not thread-safe on its own: InMemoryBackend holds its one lock around
every call, which is what serializes the claims of a queue as the SQL backends' locks do.
"""

from __future__ import annotations

import bisect
import math
from collections import Counter, deque
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import attrs

from pgflow.errors import DefinitionError
from pgflow.records import Job, QueueControl

if TYPE_CHECKING:
    from pgflow.queue_config import Queue, RateLimit
    from pgflow_backends.memory.jobs import JobTable, _Row

#: The rate window key of a queue's own (not per partition) window. Not "": that is the
#: default partition, whose per-partition window must stay apart from the queue's.
_QUEUE_WIDE = None


@attrs.define
class _Control:
    """One queue's stored control, as a row of pgflow_queue_controls."""

    updated_at: datetime
    paused: bool = False
    paused_at: datetime | None = None
    hold_until: datetime | None = None
    #: The partition the latest shaped claim of the queue ended with.
    cursor: str | None = None


class ControlTable:
    """Controls by queue, partition holds by queue and partition, rate windows."""

    def __init__(self) -> None:
        self.controls: dict[str, _Control] = {}
        self._holds: dict[str, dict[str, datetime]] = {}
        # (queue, partition or _QUEUE_WIDE) -> start times, oldest first.
        self._windows: dict[tuple[str, str | None], deque[datetime]] = {}
        self._next_sweep: dict[str, datetime] = {}

    # -- controls ---------------------------------------------------------------------------

    def blocked(self, queue: str, now: datetime) -> bool:
        """True while the queue is paused or held as a whole: no claim may start a job."""
        control = self.controls.get(queue)
        return control is not None and (
            control.paused or (control.hold_until is not None and control.hold_until > now)
        )

    def pause(self, queue: str, now: datetime) -> None:
        control = self._control(queue, now)
        if not control.paused:  # a second pause keeps the time of the first
            control.paused, control.paused_at = True, now

    def resume(self, queue: str, now: datetime) -> None:
        control = self._control(queue, now)
        control.paused, control.paused_at = False, None

    def hold(self, queue: str, until: datetime, partition: str | None, now: datetime) -> None:
        """Hold the queue (or one partition) until `until`, never shortening a hold."""
        if partition is None:
            control = self._control(queue, now)
            if control.hold_until is None or control.hold_until < until:
                control.hold_until = until
            return
        holds = self._holds.setdefault(queue, {})
        if partition not in holds or holds[partition] < until:
            holds[partition] = until

    def partition_holds(self, queue: str, now: datetime) -> dict[str, datetime]:
        """The queue's partitions held after `now` (expired holds are dropped)."""
        holds = self._holds.get(queue)
        if not holds:
            return {}
        for partition in [p for p, until in holds.items() if until <= now]:
            del holds[partition]
        if not holds:
            del self._holds[queue]
            return {}
        return dict(holds)

    def snapshot(self, queue: str, now: datetime) -> QueueControl:
        control = self.controls.get(queue)
        holds = self.partition_holds(queue, now)
        if control is None:
            return QueueControl(queue=queue, partition_holds=holds)
        return QueueControl(
            queue=queue,
            paused=control.paused,
            paused_at=control.paused_at,
            hold_until=control.hold_until,
            partition_holds=holds,
        )

    def snapshots(self, now: datetime) -> list[QueueControl]:
        """Every queue with a stored control or a held partition, by name."""
        queues = set(self.controls)
        queues.update(q for q in list(self._holds) if self.partition_holds(q, now))
        return [self.snapshot(queue, now) for queue in sorted(queues)]

    def _control(self, queue: str, now: datetime) -> _Control:
        control = self.controls.get(queue)
        if control is None:
            control = self.controls[queue] = _Control(updated_at=now)
        control.updated_at = now
        return control

    # -- rate windows -----------------------------------------------------------------------

    def used(self, queue: str, partition: str | None, period: float, now: datetime) -> int:
        """Starts recorded in the window (now - period, now], dropping older ones."""
        window = self._windows.get((queue, partition))
        if window is None:
            return 0
        edge = now - timedelta(seconds=period)
        while window and window[0] <= edge:
            window.popleft()
        return len(window)

    def record(self, queue: str, partition: str | None, now: datetime, count: int) -> None:
        if count > 0:
            self._windows.setdefault((queue, partition), deque()).extend([now] * count)

    def sweep(self, queue: str, longest: float, now: datetime) -> None:
        """Drop the queue's starts older than its longest window (at most once a window), so
        partitions that stopped getting jobs do not keep their windows forever."""
        due = self._next_sweep.get(queue)
        if due is not None and due > now:
            return
        self._next_sweep[queue] = now + timedelta(seconds=longest)
        edge = now - timedelta(seconds=longest)
        for key in [key for key in self._windows if key[0] == queue]:
            window = self._windows[key]
            while window and window[0] <= edge:
                window.popleft()
            if not window:
                del self._windows[key]


def hold_seconds(seconds: object) -> float:
    """`hold_queue`'s seconds as a float: a finite number (<= 0 holds nothing)."""
    if (
        isinstance(seconds, bool)
        or not isinstance(seconds, (int, float))
        or not math.isfinite(seconds)
    ):
        raise DefinitionError(f"hold_queue: seconds must be a finite number, got {seconds!r}")
    return float(seconds)


def claim_shaped(
    jobs: JobTable,
    controls: ControlTable,
    queue: str,
    instance_id: str,
    limit: int,
    now: datetime,
    shape: Queue,
) -> list[Job]:
    """Claim up to `limit` jobs of `queue` within `shape`'s cluster-wide limits (the caller
    holds the lock and has checked the fence and the queue's pause and hold)."""
    budget = limit
    if shape.global_limit is not None:
        budget = min(budget, shape.global_limit - jobs.executing_count(queue))
    if shape.rate_limit is not None:
        allowed, period = shape.rate_limit
        budget = min(budget, allowed - controls.used(queue, _QUEUE_WIDE, period, now))
    if budget <= 0:
        return []
    if shape.partition_by is None:
        chosen = jobs.take_available(queue, budget)
    else:
        chosen = _round_robin(jobs, controls, queue, budget, now, shape, shape.partition_by)
    if shape.rate_limit is not None:
        controls.record(queue, _QUEUE_WIDE, now, len(chosen))
    periods = [rate[1] for rate in (shape.rate_limit, shape.partition_rate_limit) if rate]
    if periods:
        controls.sweep(queue, max(periods), now)
    return jobs.start(chosen, instance_id, now)


def _round_robin(
    jobs: JobTable,
    controls: ControlTable,
    queue: str,
    budget: int,
    now: datetime,
    shape: Queue,
    key: str,
) -> list[_Row]:
    """Take at most one job per partition per round, from the partition after the queue's
    cursor on, until `budget` is used or no partition can give more; move the cursor to the
    partition taken from last. Partitions are looked at only as the rounds reach them, so a
    claim's cost follows its budget more than the number of partitions."""
    names = jobs.partitions(queue, key)
    if not names:
        return []
    control = controls.controls.get(queue)
    cursor = None if control is None else control.cursor
    first = 0 if cursor is None else bisect.bisect_right(names, cursor)
    order = names[first:] + names[:first]  # a copy: drained partitions leave `names`
    held = controls.partition_holds(queue, now)
    executing: Counter[str] | None = None
    if shape.partition_limit is not None:
        executing = Counter(jobs.partition_of(row, key) for row in jobs.executing_rows(queue))
    rate: RateLimit | None = shape.partition_rate_limit

    def room_of(name: str) -> float:
        """How many more jobs the partition may start now (before this claim's)."""
        if name in held:
            return 0
        room: float = math.inf
        if executing is not None and shape.partition_limit is not None:
            room = shape.partition_limit - executing[name]
        if rate is not None and room > 0:
            room = min(room, rate[0] - controls.used(queue, name, rate[1], now))
        return room

    rooms: dict[str, float] = {}
    chosen: list[_Row] = []
    taken: Counter[str] = Counter()
    last: str | None = None
    active = order
    while active and len(chosen) < budget:
        still: list[str] = []
        for name in active:
            if len(chosen) >= budget:
                break
            room = rooms.get(name)
            if room is None:
                room = rooms[name] = room_of(name)
            if room <= 0:
                continue
            row = jobs.take_from_partition(queue, name)
            if row is None:
                continue  # drained: it leaves the rotation
            chosen.append(row)
            taken[name] += 1
            last = name
            rooms[name] = room - 1
            if room > 1:
                still.append(name)
        active = still
    if last is not None:
        controls._control(queue, now).cursor = last
    if rate is not None:
        for name, count in taken.items():
            controls.record(queue, name, now, count)
    return chosen
