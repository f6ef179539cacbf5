"""The dashboard's reads (`pgflow.inspection.Inspection`) on the in-memory backend.

Plain scans under the backend's lock: the memory backend holds what one test or demo
makes, so nothing here needs an index.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from pgflow.inspection import (
    JobFilter,
    RunCount,
    StateCount,
    ThroughputBucket,
    check_deletable,
    sorted_counts,
)
from pgflow.records import Job, JobState

if TYPE_CHECKING:
    from pgflow_backends.memory.backend import InMemoryBackend

__all__ = ["MemoryInspection"]


class MemoryInspection:
    """Inspection reads of an InMemoryBackend's tables."""

    def __init__(self, backend: InMemoryBackend) -> None:
        self._backend = backend

    def state_counts(self) -> list[StateCount]:
        with self._backend._lock:
            self._backend._check_open()
            tally = Counter((row.queue, row.state) for row in self._backend._jobs.rows.values())
        return sorted_counts([StateCount(q, state, n) for (q, state), n in tally.items()])

    def run_counts(self) -> list[RunCount]:
        runs = self._backend.runs()
        tally = Counter((run.workflow, run.state) for run in runs)
        counts = [RunCount(flow, state, n) for (flow, state), n in tally.items()]
        return sorted(counts, key=lambda c: (c.flow, c.state.value))

    def throughput(self, since: datetime, bucket_seconds: int) -> list[ThroughputBucket]:
        if bucket_seconds < 1:
            raise ValueError(f"bucket_seconds must be at least 1, got {bucket_seconds!r}")
        done: Counter[tuple[str, int]] = Counter()
        failed: Counter[tuple[str, int]] = Counter()
        with self._backend._lock:
            self._backend._check_open()
            for row in self._backend._jobs.rows.values():
                if row.completed_at is None or row.completed_at < since:
                    continue
                key = (row.queue, int(row.completed_at.timestamp()) // bucket_seconds)
                if row.state is JobState.COMPLETED:
                    done[key] += 1
                elif row.state is JobState.DISCARDED:
                    failed[key] += 1
        return [
            ThroughputBucket(
                queue=queue,
                start=datetime.fromtimestamp(number * bucket_seconds, UTC),
                completed=done[(queue, number)],
                failed=failed[(queue, number)],
            )
            for queue, number in sorted(set(done) | set(failed))
        ]

    def find_jobs(self, where: JobFilter) -> list[Job]:
        needle = where.text.lower() if where.text else None
        found: list[Job] = []
        with self._backend._lock:
            self._backend._check_open()
            for row in reversed(self._backend._jobs.rows.values()):
                if len(found) >= where.limit:
                    break
                if (
                    (where.before is None or row.id < where.before)
                    and (where.queue is None or row.queue == where.queue)
                    and (where.state is None or row.state is where.state)
                    and (where.worker is None or row.worker == where.worker)
                    and (needle is None or needle in row.args.lower())
                ):
                    found.append(row.to_job())
        return found

    def delete_job(self, job_id: int) -> bool:
        with self._backend._lock:
            self._backend._check_open()
            row = self._backend._jobs.rows.get(job_id)
            if row is None:
                return False
            check_deletable(job_id, row.state, None if row.task is None else row.task.workflow_id)
            self._backend._jobs.delete(job_id)
        return True

    def leader(self) -> str | None:
        with self._backend._lock:
            self._backend._check_open()
            table = self._backend._instances
            now = self._backend._now()
            if table._lease_until is None or table._lease_until <= now:
                return None
            return table._leader

    def cron_slots(self) -> list[tuple[str, datetime]]:
        with self._backend._lock:
            self._backend._check_open()
            return sorted(self._backend._cron_slots.items())
