"""A cancel requested on an executing job is never lost: not by a snooze, not by a rescue."""

from __future__ import annotations

from pgflow.backend import Backend
from pgflow.records import JobState

from .support import claim_one, insert, register


def test_a_cancel_requested_job_that_snoozes_is_cancelled(backend: Backend) -> None:
    job = insert(backend)
    running = claim_one(backend)
    backend.cancel_job(job.id)

    assert backend.snooze_job(running.ref, 60) is True

    stored = backend.get_job(job.id)
    assert stored is not None
    assert stored.state is JobState.CANCELLED
    assert stored.completed_at is not None
    assert backend.stage_jobs() == []
    assert backend.claim_jobs("default", "node-a", 10) == []


def test_a_cancel_requested_job_that_snoozes_for_no_time_is_cancelled(backend: Backend) -> None:
    job = insert(backend)
    running = claim_one(backend)
    backend.cancel_job(job.id)

    assert backend.snooze_job(running.ref, 0) is True

    stored = backend.get_job(job.id)
    assert stored is not None and stored.state is JobState.CANCELLED
    assert backend.claim_jobs("default", "node-a", 10) == []


def test_a_cancel_requested_job_that_is_rescued_is_cancelled(backend: Backend) -> None:
    register(backend, "dead")
    job = insert(backend, max_attempts=5)
    claim_one(backend, instance="dead")
    backend.cancel_job(job.id)
    backend.mark_offline("dead")

    report = backend.rescue_stale(stale_after=3600)

    assert report.rescued == () and report.discarded == ()
    assert report.cancelled == (job.id,)
    stored = backend.get_job(job.id)
    assert stored is not None
    assert stored.state is JobState.CANCELLED
    assert stored.completed_at is not None
    assert [e["kind"] for e in stored.errors] == ["rescued"]
    assert backend.claim_jobs("default", "node-b", 10) == []
