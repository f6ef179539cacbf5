"""Claiming: order, limits, what a claim writes, and never the same job twice."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from pgflow.backend import Backend
from pgflow.records import JobState

from .support import claim_one, insert, new


def test_claim_order_is_priority_then_scheduled_at_then_id(backend: Backend) -> None:
    base = datetime.now(UTC) - timedelta(minutes=5)

    def at(seconds: int) -> datetime:
        return base + timedelta(seconds=seconds)

    jobs = backend.insert_jobs(
        [
            new(args={"name": "a"}, priority=0, scheduled_at=at(20)),
            new(args={"name": "b"}, priority=5, scheduled_at=at(15)),
            new(args={"name": "c"}, priority=5, scheduled_at=at(0)),
            new(args={"name": "d"}, priority=1, scheduled_at=at(-10)),
            new(args={"name": "e"}, priority=5, scheduled_at=at(0)),
            new(args={"name": "f"}, priority=-1, scheduled_at=at(-60)),
        ]
    )
    assert all(job.state is JobState.AVAILABLE for job in jobs)

    order = [claim_one(backend).args["name"] for _ in jobs]

    assert order == ["c", "e", "b", "d", "a", "f"]


def test_a_batch_claim_takes_the_first_jobs_in_claim_order(backend: Backend) -> None:
    low = insert(backend, priority=0)
    high = insert(backend, priority=9)
    mid = insert(backend, priority=4)

    claimed = backend.claim_jobs("default", "node-a", 2)

    assert {job.id for job in claimed} == {high.id, mid.id}
    assert claim_one(backend).id == low.id


def test_claim_respects_the_limit(backend: Backend) -> None:
    backend.insert_jobs([new(args={"n": n}) for n in range(5)])

    assert len(backend.claim_jobs("default", "node-a", 2)) == 2
    assert len(backend.claim_jobs("default", "node-a", 10)) == 3
    assert backend.claim_jobs("default", "node-a", 10) == []


def test_claim_marks_the_job_executing_for_the_instance(backend: Backend) -> None:
    inserted = insert(backend)

    job = claim_one(backend, instance="node-b")

    assert job.id == inserted.id
    assert job.state is JobState.EXECUTING
    assert job.attempt == 1
    assert job.reserved_by == "node-b"
    assert job.attempted_at is not None and job.attempted_at >= inserted.inserted_at
    assert backend.get_job(job.id) == job


def test_claim_only_takes_its_queue_and_available_jobs(backend: Backend) -> None:
    insert(backend, queue="other")
    insert(backend, schedule_in=3600)

    assert backend.claim_jobs("default", "node-a", 10) == []
    assert backend.claim_jobs("nothing-here", "node-a", 10) == []
    assert len(backend.claim_jobs("other", "node-a", 10)) == 1


def test_a_claimed_job_is_not_claimed_again(backend: Backend) -> None:
    insert(backend)
    claim_one(backend)

    assert backend.claim_jobs("default", "node-b", 10) == []


def test_concurrent_claimers_get_every_job_exactly_once(backend: Backend) -> None:
    inserted = {job.id for job in backend.insert_jobs([new(args={"n": n}) for n in range(200)])}
    claimed: list[int] = []
    failures: list[BaseException] = []
    start = threading.Barrier(8)
    guard = threading.Lock()

    def claimer(number: int) -> None:
        try:
            start.wait(timeout=10)
            while True:
                jobs = backend.claim_jobs("default", f"node-{number}", 5)
                if not jobs:
                    return
                with guard:
                    claimed.extend(job.id for job in jobs)
                backend.complete_jobs([job.ref for job in jobs])
        except BaseException as exc:  # reported by the main thread
            failures.append(exc)

    threads = [threading.Thread(target=claimer, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert failures == []
    assert not any(thread.is_alive() for thread in threads)
    duplicates = [job_id for job_id, count in Counter(claimed).items() if count > 1]
    assert duplicates == []
    assert set(claimed) == inserted
    assert len(backend.list_jobs(state=JobState.COMPLETED, limit=1000)) == 200


_CLAIMER = textwrap.dedent(
    """
    import importlib, json, sys
    module, name, url, instance = sys.argv[1:5]
    backend = getattr(importlib.import_module(module), name)(url)
    seen = []
    try:
        while True:
            jobs = backend.claim_jobs("default", instance, 10)
            if not jobs:
                break
            seen.extend(job.id for job in jobs)
            backend.complete_jobs([job.ref for job in jobs])
    finally:
        backend.close()
    print(json.dumps(seen))
    """
)


def test_concurrent_processes_get_every_job_exactly_once(
    backend: Backend, backend_kind: str
) -> None:
    if backend_kind == "memory":
        pytest.skip("an in-memory backend is private to its process")
    inserted = {job.id for job in backend.insert_jobs([new(args={"n": n}) for n in range(300)])}
    cls = type(backend)
    url = backend.url  # the test databases have no password, so nothing is masked
    children = [
        subprocess.Popen(
            [sys.executable, "-c", _CLAIMER, cls.__module__, cls.__name__, url, f"proc-{n}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(3)
    ]
    claimed: list[int] = []
    try:
        for child in children:
            out, err = child.communicate(timeout=90)
            assert child.returncode == 0, err
            claimed.extend(json.loads(out))
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()

    assert sorted(claimed) == sorted(inserted)
