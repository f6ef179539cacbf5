"""Cron slots are durable: each entry's slot is enqueued at most once, whatever pruning or
leader hand-overs do (the last slot is kept apart from the jobs)."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest

from pgflow.backend import Backend
from pgflow.errors import DefinitionError, SerializationError

from .support import new

SLOT = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def test_a_slot_is_enqueued_once_and_only_newer_slots_after_it(backend: Backend) -> None:
    job = backend.insert_cron_job("entry", SLOT, new(meta={"cron_slot": SLOT.isoformat()}))
    assert job is not None and not job.conflict
    assert [j.id for j in backend.list_jobs()] == [job.id]

    assert backend.insert_cron_job("entry", SLOT, new()) is None
    assert backend.insert_cron_job("entry", SLOT - timedelta(minutes=1), new()) is None
    assert backend.insert_cron_job("other", SLOT, new()) is not None  # entries are apart
    later = backend.insert_cron_job("entry", SLOT + timedelta(minutes=1), new())
    assert later is not None
    assert len(backend.list_jobs()) == 3


def test_a_pruned_slots_job_is_not_enqueued_again(backend: Backend) -> None:
    job = backend.insert_cron_job("entry", SLOT, new())
    assert job is not None
    (claimed,) = backend.claim_jobs("default", "node-a", 1)
    assert backend.complete_jobs([claimed.ref]) == [job.id]
    assert backend.prune_jobs(max_age=-60) == 1
    assert backend.list_jobs() == []

    assert backend.insert_cron_job("entry", SLOT, new()) is None
    assert backend.list_jobs() == []


def test_a_bad_job_writes_nothing_not_even_the_slot(backend: Backend) -> None:
    with pytest.raises(SerializationError):
        backend.insert_cron_job("entry", SLOT, new(args={"bad": object()}))
    with pytest.raises(DefinitionError):
        backend.insert_cron_job("", SLOT, new())

    assert backend.list_jobs() == []
    assert backend.insert_cron_job("entry", SLOT, new()) is not None


def test_racing_inserts_of_one_slot_enqueue_it_once(backend: Backend) -> None:
    barrier = threading.Barrier(4)
    results: list[object] = []
    lock = threading.Lock()

    def race() -> None:
        barrier.wait()
        stored = backend.insert_cron_job("entry", SLOT, new())
        with lock:
            results.append(stored)

    threads = [threading.Thread(target=race) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert len(results) == 4
    assert len([r for r in results if r is not None]) == 1
    assert len(backend.list_jobs()) == 1
