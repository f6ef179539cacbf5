"""Job results, retrying finished jobs and the narrow read of executing jobs, on every backend."""

from __future__ import annotations

from typing import Any

import pytest

from pgflow.errors import JobStateError, SerializationError
from pgflow.records import JobRef, JobState
from pgflow.serialization import dumps
from tests.contract.support import claim_one, error, insert, new


def test_complete_stores_each_result_with_its_job(backend: Any) -> None:
    for _ in range(3):
        insert(backend)
    first, second, third = backend.claim_jobs("default", "node-a", 3)
    results = [dumps({"total": 3, "names": ["a", "é"]}, what="result"), None, "42"]

    changed = backend.complete_jobs([first.ref, second.ref, third.ref], results)

    assert changed == sorted([first.id, second.id, third.id])
    assert backend.get_job(first.id).result == {"total": 3, "names": ["a", "é"]}
    assert backend.get_job(second.id).result is None
    assert backend.get_job(third.id).result == 42
    assert backend.list_jobs(state=JobState.COMPLETED)[0].result == {
        "total": 3,
        "names": ["a", "é"],
    }


def test_results_survive_quotes_backslashes_and_braces(backend: Any) -> None:
    insert(backend)
    job = claim_one(backend)
    value = {"q": 'say "hi" \\ {a,b} NULL', "list": ["}", "{", ","]}

    backend.complete_jobs([job.ref], [dumps(value, what="result")])

    assert backend.get_job(job.id).result == value


def test_a_fenced_completion_stores_no_result(backend: Any) -> None:
    insert(backend)
    job = claim_one(backend)
    stale = JobRef(job.id, job.attempt + 1)

    assert backend.complete_jobs([stale], ['"late"']) == []

    stored = backend.get_job(job.id)
    assert stored.state is JobState.EXECUTING
    assert stored.result is None


def test_an_oversized_result_is_refused_with_nothing_written(backend: Any) -> None:
    insert(backend)
    insert(backend)
    small, large = backend.claim_jobs("default", "node-a", 2)
    backend.max_payload_bytes = 1_000
    too_big = dumps("x" * 1_000, what="result")

    with pytest.raises(SerializationError, match=f"job {large.id}: result is 1,002 bytes"):
        backend.complete_jobs([small.ref, large.ref], ['"ok"', too_big])

    assert backend.get_job(small.id).state is JobState.EXECUTING
    assert backend.get_job(large.id).state is JobState.EXECUTING


def test_results_must_pair_with_refs(backend: Any) -> None:
    insert(backend)
    job = claim_one(backend)
    with pytest.raises(ValueError, match="1 refs but 2 results"):
        backend.complete_jobs([job.ref], ["1", "2"])


def test_retry_a_discarded_job_gives_it_one_more_attempt(backend: Any) -> None:
    insert(backend, max_attempts=1, args={"n": 1})
    job = claim_one(backend)
    assert backend.fail_job(job.ref, error(1), retry_in=None) is JobState.DISCARDED

    retried = backend.retry_job(job.id)

    assert retried.state is JobState.AVAILABLE
    assert (retried.attempt, retried.max_attempts) == (1, 2)
    assert retried.completed_at is None
    assert retried.errors == (error(1),)  # the history stays
    again = claim_one(backend)
    assert (again.id, again.attempt, again.args) == (job.id, 2, {"n": 1})


def test_retry_keeps_max_attempts_when_attempts_are_left(backend: Any) -> None:
    insert(backend, max_attempts=5)
    job = claim_one(backend)
    backend.fail_job(job.ref, error(1), retry_in=None)  # Discard-like: attempts left

    retried = backend.retry_job(job.id)

    assert (retried.state, retried.attempt, retried.max_attempts) == (JobState.AVAILABLE, 1, 5)


def test_retry_a_completed_job_clears_its_result(backend: Any) -> None:
    insert(backend)
    job = claim_one(backend)
    backend.complete_jobs([job.ref], ['"first"'])

    retried = backend.retry_job(job.id)

    assert retried.state is JobState.AVAILABLE
    assert retried.result is None
    assert backend.get_job(job.id).result is None
    assert claim_one(backend).id == job.id


def test_retry_a_cancelled_job_forgets_the_cancel_request(backend: Any) -> None:
    insert(backend)
    job = claim_one(backend)
    backend.cancel_job(job.id)  # executing: flagged
    assert backend.fail_job(job.ref, error(1), retry_in=1.0) is JobState.CANCELLED

    retried = backend.retry_job(job.id)

    assert retried.state is JobState.AVAILABLE
    assert not retried.cancel_requested
    again = claim_one(backend)
    assert backend.fail_job(again.ref, error(2), retry_in=0.0) is JobState.RETRYABLE


def test_retry_a_scheduled_job_makes_it_available_now(backend: Any) -> None:
    job = insert(backend, schedule_in=3600)
    assert job.state is JobState.SCHEDULED

    retried = backend.retry_job(job.id)

    assert retried.state is JobState.AVAILABLE
    assert claim_one(backend).id == job.id


def test_retry_an_available_job_changes_nothing(backend: Any) -> None:
    job = insert(backend)
    assert backend.retry_job(job.id) == backend.get_job(job.id) == job


def test_retry_refuses_an_executing_job(backend: Any) -> None:
    insert(backend)
    job = claim_one(backend)
    with pytest.raises(JobStateError, match=f"job {job.id} is executing"):
        backend.retry_job(job.id)
    assert backend.get_job(job.id).state is JobState.EXECUTING


def test_retry_an_unknown_job_is_none(backend: Any) -> None:
    assert backend.retry_job(12345) is None


def test_retry_wakes_listeners_of_the_queue(backend: Any) -> None:
    insert(backend, max_attempts=1, queue="mail")
    job = claim_one(backend, queue="mail")
    backend.fail_job(job.ref, error(1), retry_in=None)
    listener = backend.listener()
    try:
        backend.retry_job(job.id)
        assert "mail" in listener.wait(5.0)
    finally:
        listener.close()


def test_list_executing_reads_only_this_instances_jobs_without_payloads(backend: Any) -> None:
    backend.insert_jobs([new(args={"n": n}, meta={"m": n}) for n in range(3)])
    backend.insert_jobs([new(queue="other")])
    mine = backend.claim_jobs("default", "node-a", 2)
    backend.claim_jobs("default", "node-b", 1)
    backend.claim_jobs("other", "node-a", 1)
    backend.fail_job(mine[1].ref, error(1), retry_in=3600)  # no longer executing

    found = backend.list_executing("default", "node-a")

    assert [job.id for job in found] == [mine[0].id]
    (job,) = found
    assert (job.state, job.attempt, job.reserved_by) == (JobState.EXECUTING, 1, "node-a")
    assert job.ref == mine[0].ref and job.ref.claimed_at == mine[0].attempted_at
    assert (job.args, job.meta, job.errors, job.result) == ({}, {}, (), None)
