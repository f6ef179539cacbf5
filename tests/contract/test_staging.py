"""Staging due jobs, reading jobs back (get, list, counts) and pruning old finished ones."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from pgflow.backend import Backend
from pgflow.records import JobCount, JobState, RunState

from .support import claim_one, error, insert, new


def _retryable(backend: Backend, queue: str, retry_in: float) -> int:
    insert(backend, queue=queue)
    job = claim_one(backend, queue=queue)
    assert backend.fail_job(job.ref, error(1), retry_in=retry_in) is JobState.RETRYABLE
    return job.id


def test_stage_makes_only_due_jobs_available(backend: Backend) -> None:
    due = _retryable(backend, "due", retry_in=0)
    later = _retryable(backend, "later", retry_in=3600)
    scheduled = insert(backend, queue="scheduled", schedule_in=3600)

    assert backend.stage_jobs() == ["due"]

    assert backend.get_job(due).state is JobState.AVAILABLE  # type: ignore[union-attr]
    assert backend.get_job(later).state is JobState.RETRYABLE  # type: ignore[union-attr]
    assert backend.get_job(scheduled.id).state is JobState.SCHEDULED  # type: ignore[union-attr]
    again = claim_one(backend, queue="due")
    assert (again.id, again.attempt) == (due, 2)
    assert backend.stage_jobs() == []


def test_stage_makes_scheduled_jobs_available_once_due(backend: Backend) -> None:
    job = insert(backend, schedule_in=0.05)
    assert job.state is JobState.SCHEDULED
    time.sleep(0.1)

    assert backend.stage_jobs() == ["default"]
    assert claim_one(backend).id == job.id


def test_stage_reports_each_queue_once_and_respects_the_limit(backend: Backend) -> None:
    ids = [_retryable(backend, queue, retry_in=0) for queue in ("a", "a", "b")]

    assert sorted(backend.stage_jobs(limit=10)) == ["a", "b"]
    assert all(backend.get_job(i).state is JobState.AVAILABLE for i in ids)  # type: ignore[union-attr]

    more = [_retryable(backend, "c", retry_in=0) for _ in range(3)]
    assert backend.stage_jobs(limit=2) == ["c"]
    states = [backend.get_job(i).state for i in more]  # type: ignore[union-attr]
    assert sorted(states) == sorted([JobState.AVAILABLE] * 2 + [JobState.RETRYABLE])


def test_get_job_of_an_unknown_id_is_none(backend: Backend) -> None:
    assert backend.get_job(424242) is None


def test_list_jobs_filters_in_id_order(backend: Backend) -> None:
    jobs = backend.insert_jobs(
        [
            new(queue="a"),
            new(queue="b", worker="tests.contract.Other"),
            new(queue="a", schedule_in=3600),
            new(queue="a"),
        ]
    )
    ids = [job.id for job in jobs]

    assert [j.id for j in backend.list_jobs()] == ids
    assert [j.id for j in backend.list_jobs(queue="a")] == [ids[0], ids[2], ids[3]]
    assert [j.id for j in backend.list_jobs(state=JobState.SCHEDULED)] == [ids[2]]
    assert [j.id for j in backend.list_jobs(worker="tests.contract.Other")] == [ids[1]]
    assert [j.id for j in backend.list_jobs(queue="a", state=JobState.AVAILABLE)] == [
        ids[0],
        ids[3],
    ]
    assert [j.id for j in backend.list_jobs(limit=2)] == ids[:2]


def test_job_counts_group_by_queue_state_and_instance(backend: Backend) -> None:
    backend.insert_jobs([new(queue="a") for _ in range(4)] + [new(queue="b")])
    backend.claim_jobs("a", "node-1", 2)
    (done,) = backend.claim_jobs("a", "node-2", 1)
    backend.complete_jobs([done.ref])

    counts = {(c.queue, c.state, c.reserved_by): c.count for c in backend.job_counts()}

    assert counts == {
        ("a", JobState.AVAILABLE, None): 1,
        ("a", JobState.EXECUTING, "node-1"): 2,
        ("a", JobState.COMPLETED, "node-2"): 1,
        ("b", JobState.AVAILABLE, None): 1,
    }
    assert all(isinstance(c, JobCount) for c in backend.job_counts())


def test_prune_deletes_only_old_finished_jobs(backend: Backend) -> None:
    backend.insert_jobs([new(args={"n": n}) for n in range(5)])
    completed, discarded, running = backend.claim_jobs("default", "node-a", 3)
    backend.complete_jobs([completed.ref])
    backend.fail_job(discarded.ref, error(1), retry_in=None)
    cancelled, waiting = backend.list_jobs(state=JobState.AVAILABLE)
    backend.cancel_job(cancelled.id)
    backend.cancel_job(running.id)  # only requested: it is still executing
    time.sleep(0.05)

    assert backend.prune_jobs(max_age=3600) == 0
    assert backend.prune_jobs(max_age=0, limit=1) == 1
    assert backend.prune_jobs(max_age=0) == 2

    left = {job.id for job in backend.list_jobs()}
    assert left == {running.id, waiting.id}
    assert backend.get_job(completed.id) is None


def test_prune_deletes_finished_runs_but_not_running_ones(backend: Backend) -> None:
    backend.start_run(workflow_id="run-done", workflow="wf", input={}, max_attempts=1)
    backend.start_run(workflow_id="run-live", workflow="wf", input={}, max_attempts=1)
    assert backend.finish_run("run-done", 1, RunState.COMPLETED, output=1)
    time.sleep(0.05)

    backend.prune_jobs(max_age=3600)
    assert backend.get_run("run-done") is not None
    backend.prune_jobs(max_age=0)

    assert backend.get_run("run-done") is None
    assert backend.get_steps("run-done") == []
    assert backend.get_run("run-live") is not None


def test_timestamps_are_timezone_aware_utc(backend: Backend) -> None:
    insert(backend)
    job = claim_one(backend)
    backend.complete_jobs([job.ref])
    done = backend.get_job(job.id)
    assert done is not None

    for stamp in (done.inserted_at, done.scheduled_at, done.attempted_at, done.completed_at):
        assert stamp is not None and stamp.utcoffset() is not None
        assert abs((stamp - datetime.now(UTC)).total_seconds()) < 300
