"""After the claim: complete, fail, snooze and cancel, each fenced by the claimed attempt."""

from __future__ import annotations

import pytest

from pgflow.backend import Backend
from pgflow.errors import SerializationError
from pgflow.records import JobRef, JobState

from .support import claim_one, error, insert


def test_complete_marks_completed_and_keeps_reserved_by(backend: Backend) -> None:
    insert(backend)
    job = claim_one(backend, instance="node-b")

    assert backend.complete_jobs([job.ref]) == [job.id]

    done = backend.get_job(job.id)
    assert done is not None
    assert done.state is JobState.COMPLETED
    assert done.reserved_by == "node-b"
    assert done.attempt == 1
    assert done.completed_at is not None and done.attempted_at is not None
    assert done.completed_at >= done.attempted_at


def test_complete_returns_only_the_ids_it_changed(backend: Backend) -> None:
    insert(backend)
    insert(backend)
    first, second = backend.claim_jobs("default", "node-a", 2)
    waiting = insert(backend)

    changed = backend.complete_jobs(
        [first.ref, JobRef(second.id, second.attempt + 1), JobRef(waiting.id, 0), JobRef(999, 1)]
    )

    assert changed == [first.id]
    assert backend.get_job(second.id).state is JobState.EXECUTING  # type: ignore[union-attr]
    assert backend.get_job(waiting.id).state is JobState.AVAILABLE  # type: ignore[union-attr]
    assert backend.complete_jobs([first.ref]) == []  # already completed


def test_fail_with_retry_makes_the_job_retryable(backend: Backend) -> None:
    insert(backend, max_attempts=3)
    job = claim_one(backend)

    assert backend.fail_job(job.ref, error(1), retry_in=3600) is JobState.RETRYABLE

    failed = backend.get_job(job.id)
    assert failed is not None
    assert failed.state is JobState.RETRYABLE
    assert failed.errors == (error(1),)
    assert failed.attempted_at is not None
    delay = (failed.scheduled_at - failed.attempted_at).total_seconds()
    assert 3590 < delay < 3610
    assert backend.claim_jobs("default", "node-a", 1) == []


def test_every_attempts_error_is_kept_until_discarded(backend: Backend) -> None:
    insert(backend, max_attempts=2)
    first = claim_one(backend)
    assert backend.fail_job(first.ref, error(1, "one"), retry_in=0) is JobState.RETRYABLE
    assert backend.stage_jobs() == ["default"]
    second = claim_one(backend)
    assert second.attempt == 2

    assert backend.fail_job(second.ref, error(2, "two"), retry_in=0) is JobState.DISCARDED

    final = backend.get_job(second.id)
    assert final is not None
    assert final.state is JobState.DISCARDED
    assert final.errors == (error(1, "one"), error(2, "two"))
    assert final.completed_at is not None


def test_fail_without_retry_discards_at_once(backend: Backend) -> None:
    insert(backend, max_attempts=5)
    job = claim_one(backend)

    assert backend.fail_job(job.ref, error(1), retry_in=None) is JobState.DISCARDED
    assert backend.get_job(job.id).state is JobState.DISCARDED  # type: ignore[union-attr]


def test_fail_is_fenced_by_attempt(backend: Backend) -> None:
    insert(backend)
    job = claim_one(backend)

    assert backend.fail_job(JobRef(job.id, job.attempt + 1), error(2), retry_in=0) is None
    assert backend.fail_job(JobRef(job.id + 1000, 1), error(1), retry_in=0) is None

    unchanged = backend.get_job(job.id)
    assert unchanged is not None
    assert unchanged.state is JobState.EXECUTING and unchanged.errors == ()


def test_fail_with_a_non_json_error_writes_nothing(backend: Backend) -> None:
    insert(backend)
    job = claim_one(backend)

    with pytest.raises(SerializationError, match="detail"):
        backend.fail_job(job.ref, {"kind": "X", "detail": object()}, retry_in=0)

    unchanged = backend.get_job(job.id)
    assert unchanged is not None
    assert unchanged.state is JobState.EXECUTING and unchanged.errors == ()


def test_snooze_reschedules_without_counting_the_attempt(backend: Backend) -> None:
    inserted = insert(backend, max_attempts=3)
    job = claim_one(backend)

    assert backend.snooze_job(job.ref, 3600) is True

    snoozed = backend.get_job(job.id)
    assert snoozed is not None
    assert snoozed.state is JobState.SCHEDULED
    assert snoozed.max_attempts - snoozed.attempt == inserted.max_attempts - inserted.attempt
    assert snoozed.errors == ()
    assert snoozed.scheduled_at > job.scheduled_at
    assert backend.claim_jobs("default", "node-a", 1) == []
    assert backend.complete_jobs([job.ref]) == []  # the snoozed attempt holds it no more
    assert backend.snooze_job(job.ref, 10) is False


def test_cancel_a_waiting_job_at_once(backend: Backend) -> None:
    available = insert(backend)
    scheduled = insert(backend, schedule_in=3600)

    for job in (available, scheduled):
        cancelled = backend.cancel_job(job.id)
        assert cancelled is not None
        assert cancelled.state is JobState.CANCELLED
        assert cancelled.completed_at is not None
        assert backend.get_job(job.id) == cancelled
    assert backend.claim_jobs("default", "node-a", 10) == []


def test_cancel_a_retryable_job_at_once(backend: Backend) -> None:
    insert(backend)
    job = claim_one(backend)
    backend.fail_job(job.ref, error(1), retry_in=3600)

    assert backend.cancel_job(job.id).state is JobState.CANCELLED  # type: ignore[union-attr]


def test_cancel_an_executing_job_requests_it(backend: Backend) -> None:
    insert(backend)
    insert(backend)
    running, other = backend.claim_jobs("default", "node-a", 2)

    flagged = backend.cancel_job(running.id)

    assert flagged is not None
    assert flagged.state is JobState.EXECUTING
    assert flagged.cancel_requested
    assert backend.cancel_requested([running.id, other.id, 12345]) == {running.id}


def test_a_cancel_requested_job_that_fails_is_cancelled(backend: Backend) -> None:
    insert(backend, max_attempts=5)
    job = claim_one(backend)
    backend.cancel_job(job.id)

    assert backend.fail_job(job.ref, error(1), retry_in=0) is JobState.CANCELLED
    final = backend.get_job(job.id)
    assert final is not None
    assert final.state is JobState.CANCELLED and final.errors == (error(1),)
    assert backend.cancel_requested([job.id]) == set()


def test_a_cancel_requested_job_that_completes_is_completed(backend: Backend) -> None:
    insert(backend)
    job = claim_one(backend)
    backend.cancel_job(job.id)

    assert backend.complete_jobs([job.ref]) == [job.id]
    assert backend.get_job(job.id).state is JobState.COMPLETED  # type: ignore[union-attr]


def test_cancel_leaves_finished_jobs_alone(backend: Backend) -> None:
    insert(backend)
    job = claim_one(backend)
    backend.complete_jobs([job.ref])
    before = backend.get_job(job.id)

    after = backend.cancel_job(job.id)

    assert after is not None and after.state is JobState.COMPLETED
    assert after == before
    assert backend.cancel_job(job.id + 1000) is None
