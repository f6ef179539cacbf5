"""The in-memory job table: rows, the indexes claiming needs, and every job transition.

Not thread-safe on its own: InMemoryBackend holds its lock around every call and passes the
current time in, so the table is a plain, deterministic model of the SQL job table.
"""

from __future__ import annotations

import bisect
import heapq
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

import attrs

from pgflow.errors import DefinitionError, JobStateError
from pgflow.identifiers import validate_queue, validate_worker_name
from pgflow.queue_config import partition_of
from pgflow.records import (
    FINISHED_STATES,
    WAITING_STATES,
    Job,
    JobCount,
    JobError,
    JobRef,
    JobState,
    NewJob,
    RescueReport,
    TaskKey,
)
from pgflow.serialization import dumps, dumps_job_field, loads
from pgflow.unique import unique_key


@attrs.define
class _Row:
    """One stored job; JSON columns are kept as text, exactly as a SQL backend stores them."""

    id: int
    queue: str
    worker: str
    args: str
    state: JobState
    priority: int
    attempt: int
    max_attempts: int
    scheduled_at: datetime
    inserted_at: datetime
    meta: str
    unique_key: str | None
    release_unique: bool
    attempted_at: datetime | None = None
    completed_at: datetime | None = None
    reserved_by: str | None = None
    errors: list[str] = attrs.Factory(list)
    result: str | None = None
    task: TaskKey | None = None
    #: The args key the cached partition was read with, and that partition.
    partition_key: str | None = None
    partition: str = ""

    def to_job(self, *, conflict: bool = False) -> Job:
        return Job(
            id=self.id,
            queue=self.queue,
            worker=self.worker,
            args=loads(self.args),
            state=self.state,
            priority=self.priority,
            attempt=self.attempt,
            max_attempts=self.max_attempts,
            scheduled_at=self.scheduled_at,
            inserted_at=self.inserted_at,
            attempted_at=self.attempted_at,
            completed_at=self.completed_at,
            reserved_by=self.reserved_by,
            errors=tuple(loads(error) for error in self.errors),
            meta=loads(self.meta),
            unique_key=self.unique_key,
            conflict=conflict,
            result=loads(self.result),
            task=self.task,
        )

    def summary(self) -> Job:
        """The job without its JSON payloads (args, meta, errors, result): what a narrow
        query reads."""
        return Job(
            id=self.id,
            queue=self.queue,
            worker=self.worker,
            args={},
            state=self.state,
            priority=self.priority,
            attempt=self.attempt,
            max_attempts=self.max_attempts,
            scheduled_at=self.scheduled_at,
            inserted_at=self.inserted_at,
            attempted_at=self.attempted_at,
            completed_at=self.completed_at,
            reserved_by=self.reserved_by,
            unique_key=self.unique_key,
        )

    def claim_order(self) -> tuple[int, datetime, int]:
        return (-self.priority, self.scheduled_at, self.id)


@attrs.define
class _Partitions:
    """A partitioned queue's available jobs: a claim-order heap per partition."""

    key: str
    heaps: dict[str, list[tuple[int, datetime, int]]] = attrs.Factory(dict)
    #: The keys of `heaps`, sorted: the round robin's order, kept without sorting per claim.
    names: list[str] = attrs.Factory(list)

    def push(self, name: str, entry: tuple[int, datetime, int]) -> None:
        heap = self.heaps.get(name)
        if heap is None:
            heap = self.heaps[name] = []
            bisect.insort(self.names, name)
        heapq.heappush(heap, entry)

    def drop(self, name: str) -> None:
        if self.heaps.pop(name, None) is not None:
            del self.names[bisect.bisect_left(self.names, name)]


def partition_value(args: Any, key: str, *, task: bool) -> str:
    """A job's partition (the rule every backend uses: pgflow.queue_config.partition_of)."""
    return partition_of(args, key, task)


@attrs.define
class _Prepared:
    """A NewJob validated and encoded, ready to become a row; built before anything is written."""

    job: NewJob
    args: str
    meta: str
    scheduled_at: datetime
    unique_key: str | None


class JobTable:
    """Jobs by id, with an index of available jobs per queue and one of unique keys."""

    def __init__(self) -> None:
        self.rows: dict[int, _Row] = {}
        self._next_id = 1
        # Per queue, a heap of claim-order keys; entries go stale when a row leaves the
        # available state and are skipped (and dropped) when they reach the top.
        self._available: dict[str, list[tuple[int, datetime, int]]] = {}
        self._waiting: set[int] = set()  # scheduled or retryable: what staging looks at
        self._unique: dict[str, int] = {}
        self._executing: dict[str, set[int]] = {}  # per queue: for global/partition limits
        # A queue claimed with partition_by keeps its available jobs here instead, one heap
        # per partition (same stale-entry rule), under the args key they were split by.
        self._partitioned: dict[str, _Partitions] = {}

    # -- writes ----------------------------------------------------------------------------

    def insert(
        self, jobs: Sequence[NewJob], now: datetime, limit: int | None
    ) -> tuple[list[Job], set[str]]:
        """Insert all or none; return the stored jobs and the queues that gained available ones."""
        prepared = [self._prepare(job, now, limit) for job in jobs]  # may raise: none written
        stored: list[Job] = []
        woken: set[str] = set()
        for item in prepared:
            if item.unique_key is not None and item.unique_key in self._unique:
                stored.append(self.rows[self._unique[item.unique_key]].to_job(conflict=True))
                continue
            row = self._add(item, now)
            if row.state is JobState.AVAILABLE:
                woken.add(row.queue)
            stored.append(row.to_job())
        return stored, woken

    def claim(self, queue: str, instance_id: str, limit: int, now: datetime) -> list[Job]:
        return self.start(self.take_available(queue, limit), instance_id, now)

    def take_available(self, queue: str, limit: int) -> list[_Row]:
        """Pop up to `limit` available jobs of `queue` in claim order, now executing (the
        caller finishes the claim with `start`)."""
        if queue in self._partitioned:
            self._unpartition(queue)  # claimed without partitions again: one heap
        heap = self._available.get(queue)
        chosen: list[_Row] = []
        while heap and len(chosen) < limit:
            row = self._pop_valid(heap)
            if row is not None:
                chosen.append(row)
        return chosen

    def take_from_partition(self, queue: str, partition: str) -> _Row | None:
        """Pop the next available job of one partition (see `partitions`), now executing;
        None, and the partition forgotten, when it has none left."""
        index = self._partitioned[queue]
        heap = index.heaps.get(partition)
        while heap:
            row = self._pop_valid(heap)
            if row is not None:
                return row
        index.drop(partition)
        return None

    def start(self, chosen: Sequence[_Row], instance_id: str, now: datetime) -> list[Job]:
        """Finish a claim of rows taken (executing already): attempt, time, claimer."""
        for row in chosen:
            row.attempt += 1
            row.attempted_at = now
            row.reserved_by = instance_id
        return [row.to_job() for row in chosen]

    def _pop_valid(self, heap: list[tuple[int, datetime, int]]) -> _Row | None:
        """Pop the heap's top; the row, moved to executing, unless the entry was stale."""
        key = heapq.heappop(heap)
        row = self.rows.get(key[2])
        if row is not None and row.state is JobState.AVAILABLE and row.claim_order() == key:
            self._move(row, JobState.EXECUTING)  # so a duplicate entry is stale now
            return row
        return None

    def claim_ids(
        self, ids: Sequence[int], queue: str, instance_id: str, limit: int, now: datetime
    ) -> list[Job]:
        """Claim up to `limit` of these jobs that are available on `queue` (a successor
        claim: the caller just made them available)."""
        chosen: list[_Row] = []
        for job_id in ids:
            if len(chosen) >= limit:
                break
            row = self.rows.get(job_id)
            if row is not None and row.queue == queue and row.state is JobState.AVAILABLE:
                chosen.append(row)
                self._move(row, JobState.EXECUTING)  # its heap entry is stale now
        return self.start(chosen, instance_id, now)

    def complete(
        self, refs: Sequence[JobRef], now: datetime, results: Sequence[str | None] | None = None
    ) -> list[int]:
        done: list[int] = []
        for index, ref in enumerate(refs):
            row = self._holding(ref)
            if row is not None:
                self._finish(row, JobState.COMPLETED, now)
                row.result = None if results is None else results[index]
                done.append(row.id)
        return done

    def retry(self, job_id: int, now: datetime) -> tuple[Job | None, set[str]]:
        """Make a finished or waiting job available now (see JobQueue.retry_job)."""
        row = self.rows.get(job_id)
        if row is None:
            return None, set()
        if row.state is JobState.EXECUTING:
            raise JobStateError(
                f"job {job_id} is executing; it can be retried once it has finished "
                "(cancel it first to stop it)"
            )
        if row.state is JobState.AVAILABLE:
            return row.to_job(), set()
        meta = loads(row.meta)
        if meta.pop("cancel_requested", None) is not None:
            row.meta = dumps(meta, what="meta")
        row.max_attempts = max(row.max_attempts, row.attempt + 1)
        row.completed_at = None
        row.result = None
        row.scheduled_at = now
        self._move(row, JobState.AVAILABLE)
        return row.to_job(), {row.queue}

    def executing(self, queue: str, instance_id: str) -> list[Job]:
        return [
            row.summary()
            for row in self.rows.values()
            if row.state is JobState.EXECUTING
            and row.queue == queue
            and row.reserved_by == instance_id
        ]

    def fail(
        self, ref: JobRef, encoded: str, retry_in: float | None, now: datetime
    ) -> JobState | None:
        """Record a failed attempt whose error is already encoded (JSON text)."""
        row = self._holding(ref)
        if row is None:
            return None
        row.errors.append(encoded)
        if loads(row.meta).get("cancel_requested"):
            self._finish(row, JobState.CANCELLED, now)
        elif retry_in is None or row.attempt >= row.max_attempts:
            self._finish(row, JobState.DISCARDED, now)
        else:
            row.scheduled_at = now + timedelta(seconds=max(retry_in, 0.0))
            self._move(row, JobState.RETRYABLE)
        return row.state

    def snooze(self, ref: JobRef, seconds: float, now: datetime) -> JobState | None:
        """Reschedule, giving the attempt back; return the new state, None when fenced out.

        A job whose cancellation was requested ends cancelled instead of coming back."""
        row = self._holding(ref)
        if row is None:
            return None
        if loads(row.meta).get("cancel_requested"):
            self._finish(row, JobState.CANCELLED, now)
            return row.state
        row.attempt -= 1
        row.scheduled_at = now + timedelta(seconds=max(seconds, 0.0))
        self._move(row, JobState.SCHEDULED if row.scheduled_at > now else JobState.AVAILABLE)
        return row.state

    def cancel(self, job_id: int, now: datetime) -> Job | None:
        row = self.rows.get(job_id)
        if row is None:
            return None
        if row.state in WAITING_STATES:
            self._finish(row, JobState.CANCELLED, now)
        elif row.state is JobState.EXECUTING:
            meta = loads(row.meta)
            meta["cancel_requested"] = True
            row.meta = dumps(meta, what="meta")
        return row.to_job()

    def cancel_requested(self, job_ids: Iterable[int]) -> set[int]:
        found: set[int] = set()
        for job_id in job_ids:
            row = self.rows.get(job_id)
            if (
                row is not None
                and row.state is JobState.EXECUTING
                and loads(row.meta).get("cancel_requested")
            ):
                found.add(job_id)
        return found

    def stage(self, limit: int, now: datetime) -> set[str]:
        due = (self.rows[i] for i in self._waiting if self.rows[i].scheduled_at <= now)
        chosen = heapq.nsmallest(max(limit, 0), due, key=lambda row: (row.scheduled_at, row.id))
        for row in chosen:
            self._move(row, JobState.AVAILABLE)
        return {row.queue for row in chosen}

    def rescue(
        self, lost: Callable[[_Row], bool], why: Callable[[_Row], str], now: datetime
    ) -> tuple[RescueReport, set[str]]:
        """Requeue, discard or (cancel requested) cancel the executing jobs `lost` picks."""
        rescued: list[int] = []
        discarded: list[int] = []
        cancelled: list[int] = []
        woken: set[str] = set()
        for row in self.rows.values():
            if row.state is not JobState.EXECUTING or not lost(row):
                continue
            error = JobError(
                attempt=row.attempt,
                at=now,
                kind="rescued",
                message=why(row),
                instance_id=row.reserved_by,
            )
            row.errors.append(dumps(error.to_dict(), what="error"))
            if loads(row.meta).get("cancel_requested"):
                cancelled.append(row.id)
            elif row.attempt >= row.max_attempts:
                discarded.append(row.id)
            else:
                rescued.append(row.id)
                woken.add(row.queue)
        for job_id in cancelled:
            self._finish(self.rows[job_id], JobState.CANCELLED, now)
        for job_id in discarded:
            self._finish(self.rows[job_id], JobState.DISCARDED, now)
        for job_id in rescued:
            self._move(self.rows[job_id], JobState.AVAILABLE)
        report = RescueReport(
            rescued=tuple(sorted(rescued)),
            discarded=tuple(sorted(discarded)),
            cancelled=tuple(sorted(cancelled)),
        )
        return report, woken

    def prune(self, cutoff: datetime, limit: int) -> int:
        old = (
            row
            for row in self.rows.values()
            if row.state in FINISHED_STATES
            and row.completed_at is not None
            and row.completed_at < cutoff
        )
        doomed = heapq.nsmallest(max(limit, 0), old, key=lambda row: (row.completed_at, row.id))
        for row in doomed:
            if row.unique_key is not None and self._unique.get(row.unique_key) == row.id:
                del self._unique[row.unique_key]
            del self.rows[row.id]
        return len(doomed)

    def holding(self, ref: JobRef) -> _Row | None:
        """The row if `ref` still holds it: same attempt and, when the ref carries it, the
        same claim time (a flow task's completion fence)."""
        row = self._holding(ref)
        if row is None or (ref.claimed_at is not None and row.attempted_at != ref.claimed_at):
            return None
        return row

    def finish_task(self, row: _Row, now: datetime) -> None:
        """Complete a flow task's job (its output is stored by the flow table)."""
        self._finish(row, JobState.COMPLETED, now)

    def stop(self, job_id: int, now: datetime) -> None:
        """End a job because its run ended: a waiting one is cancelled, an executing one is
        flagged so its instance stops it; a finished or pruned one is left alone."""
        row = self.rows.get(job_id)
        if row is None:
            return
        if row.state in WAITING_STATES or row.state is JobState.AVAILABLE:
            self._finish(row, JobState.CANCELLED, now)
        elif row.state is JobState.EXECUTING:
            meta = loads(row.meta)
            meta["cancel_requested"] = True
            row.meta = dumps(meta, what="meta")

    # -- flow control ----------------------------------------------------------------------

    def executing_count(self, queue: str) -> int:
        return len(self._executing.get(queue, ()))

    def executing_rows(self, queue: str) -> list[_Row]:
        return [self.rows[job_id] for job_id in self._executing.get(queue, ())]

    def partitions(self, queue: str, key: str) -> list[str]:
        """The queue's partitions (by args `key`) that may have available jobs, sorted (a
        live list: copy it before taking jobs). Switches the queue to per-partition heaps,
        once, and again only if the key changes."""
        index = self._partitioned.get(queue)
        if index is not None and index.key == key:
            return index.names
        entries = self._live_entries(queue)
        index = self._partitioned[queue] = _Partitions(key)
        for entry in entries:
            name = self.partition_of(self.rows[entry[2]], key)
            index.heaps.setdefault(name, []).append(entry)
        for heap in index.heaps.values():
            heapq.heapify(heap)
        index.names = sorted(index.heaps)
        return index.names

    def partition_of(self, row: _Row, key: str) -> str:
        """The row's partition under args `key` (cached on the row: args never change)."""
        if row.partition_key != key:
            row.partition = partition_value(loads(row.args), key, task=row.task is not None)
            row.partition_key = key
        return row.partition

    def queue_counts(self, queue: str) -> tuple[int, int]:
        """(executing, available) jobs of the queue."""
        available = sum(
            1
            for row in self.rows.values()
            if row.queue == queue and row.state is JobState.AVAILABLE
        )
        return self.executing_count(queue), available

    def top_partitions(self, queue: str, key: str, limit: int) -> tuple[tuple[str, int, int], ...]:
        """The queue's partitions with the most available jobs: (partition, available,
        executing), most available first, then by name."""
        available: Counter[str] = Counter()
        executing: Counter[str] = Counter()
        for row in self.rows.values():
            if row.queue != queue:
                continue
            if row.state is JobState.AVAILABLE:
                available[self.partition_of(row, key)] += 1
            elif row.state is JobState.EXECUTING:
                executing[self.partition_of(row, key)] += 1
        names = sorted(available.keys() | executing.keys(), key=lambda n: (-available[n], n))
        return tuple((name, available[name], executing[name]) for name in names[:limit])

    def _unpartition(self, queue: str) -> None:
        """Back to one heap of the queue's available jobs (a plain claim of a queue that was
        claimed by partitions)."""
        entries = self._live_entries(queue)
        heapq.heapify(entries)
        self._available[queue] = entries

    def _live_entries(self, queue: str) -> list[tuple[int, datetime, int]]:
        """Every live heap entry of the queue (once each), taken out of whichever index holds
        them."""
        heaps = [self._available.pop(queue, [])]
        index = self._partitioned.pop(queue, None)
        if index is not None:
            heaps.extend(index.heaps.values())
        live: dict[int, tuple[int, datetime, int]] = {}
        for heap in heaps:
            for entry in heap:
                row = self.rows.get(entry[2])
                if (
                    row is not None
                    and row.state is JobState.AVAILABLE
                    and (row.claim_order() == entry)
                ):
                    live[entry[2]] = entry
        return list(live.values())

    def delete(self, job_id: int) -> None:
        """Drop a job that is not executing (the caller checked); its heap entry, if any,
        goes stale and is skipped like any other."""
        row = self.rows.pop(job_id)
        self._waiting.discard(job_id)
        if row.unique_key is not None and self._unique.get(row.unique_key) == job_id:
            del self._unique[row.unique_key]

    # -- reads -----------------------------------------------------------------------------

    def get(self, job_id: int) -> Job | None:
        row = self.rows.get(job_id)
        return None if row is None else row.to_job()

    def select(
        self, queue: str | None, state: JobState | None, worker: str | None, limit: int | None
    ) -> list[Job]:
        found: list[Job] = []
        for row in self.rows.values():  # dicts keep insertion order, which is id order
            if limit is not None and len(found) >= limit:
                break
            if (
                (queue is None or row.queue == queue)
                and (state is None or row.state is JobState(state))
                and (worker is None or row.worker == worker)
            ):
                found.append(row.to_job())
        return found

    def counts(self) -> list[JobCount]:
        tally = Counter((row.queue, row.state, row.reserved_by) for row in self.rows.values())
        return [
            JobCount(queue=queue, state=state, reserved_by=reserved_by, count=count)
            for (queue, state, reserved_by), count in sorted(
                tally.items(), key=lambda item: (item[0][0], item[0][1].value, item[0][2] or "")
            )
        ]

    # -- internals -------------------------------------------------------------------------

    def _prepare(self, job: NewJob, now: datetime, limit: int | None) -> _Prepared:
        validate_queue(job.queue)
        validate_worker_name(job.worker)
        if job.scheduled_at is not None and job.schedule_in is not None:
            raise DefinitionError(
                f"job for {job.worker!r} sets both scheduled_at and schedule_in; choose one"
            )
        if job.scheduled_at is not None:
            scheduled_at = job.scheduled_at
        else:
            scheduled_at = now + timedelta(seconds=job.schedule_in or 0.0)
        return _Prepared(
            job=job,
            args=dumps_job_field(job.args, what="args", limit=limit, worker=job.worker),
            meta=dumps_job_field(job.meta, what="meta", limit=limit, worker=job.worker),
            scheduled_at=scheduled_at,
            unique_key=unique_key(job, now),
        )

    def _add(self, item: _Prepared, now: datetime) -> _Row:
        job = item.job
        row = _Row(
            id=self._next_id,
            queue=job.queue,
            worker=job.worker,
            args=item.args,
            state=JobState.SCHEDULED,
            priority=job.priority,
            attempt=0,
            max_attempts=job.max_attempts,
            scheduled_at=item.scheduled_at,
            inserted_at=now,
            meta=item.meta,
            unique_key=item.unique_key,
            release_unique=job.unique is not None and job.unique.while_unfinished,
            task=job.task,
        )
        self._next_id += 1
        self.rows[row.id] = row
        self._waiting.add(row.id)
        if row.unique_key is not None:
            self._unique[row.unique_key] = row.id
        self._move(row, JobState.SCHEDULED if row.scheduled_at > now else JobState.AVAILABLE)
        return row

    def _holding(self, ref: JobRef) -> _Row | None:
        """The row if `ref`'s attempt still holds it (executing at that attempt), else None."""
        row = self.rows.get(ref.id)
        if row is None or row.state is not JobState.EXECUTING or row.attempt != ref.attempt:
            return None
        return row

    def _finish(self, row: _Row, state: JobState, now: datetime) -> None:
        self._move(row, state)
        row.completed_at = now
        if row.release_unique and row.unique_key is not None:
            if self._unique.get(row.unique_key) == row.id:
                del self._unique[row.unique_key]
            row.unique_key = None

    def _move(self, row: _Row, state: JobState) -> None:
        """Change a row's state, keeping the available and waiting indexes in step.

        Only scheduled and retryable rows live in `_waiting`; an available row's entry in the
        queue heap is checked against the row when popped instead of being removed here.
        """
        if row.state in WAITING_STATES:
            self._waiting.discard(row.id)
        elif row.state is JobState.EXECUTING:
            self._executing[row.queue].discard(row.id)
        row.state = state
        if state is JobState.AVAILABLE:
            index = self._partitioned.get(row.queue)
            if index is None:
                heapq.heappush(self._available.setdefault(row.queue, []), row.claim_order())
            else:
                index.push(self.partition_of(row, index.key), row.claim_order())
        elif state is JobState.EXECUTING:
            self._executing.setdefault(row.queue, set()).add(row.id)
        elif state in WAITING_STATES:
            self._waiting.add(row.id)
