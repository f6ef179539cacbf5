"""Inserting jobs: defaults, order, atomicity, JSON-only args, scheduling, uniqueness, names."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from pgflow.backend import Backend
from pgflow.errors import DefinitionError, SerializationError
from pgflow.records import JobState, UniqueSpec

from .support import WORKER, claim_one, insert, new


def test_insert_one_stores_the_defaults(backend: Backend) -> None:
    job = insert(backend, args={"n": 1, "tags": ["a", "b"]})

    assert isinstance(job.id, int)
    assert (job.queue, job.worker, job.args) == ("default", WORKER, {"n": 1, "tags": ["a", "b"]})
    assert job.state is JobState.AVAILABLE
    assert (job.priority, job.attempt, job.max_attempts) == (0, 0, 3)
    assert (job.reserved_by, job.attempted_at, job.completed_at) == (None, None, None)
    assert job.errors == ()
    assert job.meta == {}
    assert not job.conflict
    assert job.inserted_at.tzinfo is not None
    assert job.scheduled_at.tzinfo is not None
    assert job.scheduled_at <= job.inserted_at + timedelta(seconds=1)
    assert backend.get_job(job.id) == job


def test_insert_many_returns_jobs_in_input_order(backend: Backend) -> None:
    jobs = backend.insert_jobs([new(args={"n": n}, priority=n % 3) for n in range(5)])

    assert [job.args["n"] for job in jobs] == [0, 1, 2, 3, 4]
    ids = [job.id for job in jobs]
    assert ids == sorted(ids) and len(set(ids)) == 5
    assert [job.id for job in backend.list_jobs()] == ids


def test_insert_nothing_returns_nothing(backend: Backend) -> None:
    assert backend.insert_jobs([]) == []
    assert backend.list_jobs() == []


def test_insert_stores_options(backend: Backend) -> None:
    job = insert(backend, queue="mail", priority=7, max_attempts=5, meta={"origin": "test"})

    stored = backend.get_job(job.id)
    assert stored is not None
    assert (stored.queue, stored.priority, stored.max_attempts) == ("mail", 7, 5)
    assert stored.meta == {"origin": "test"}


def test_a_batch_with_one_bad_arg_writes_nothing(backend: Backend) -> None:
    batch = [new(args={"n": 1}), new(args={"when": datetime.now(UTC)}), new(args={"n": 3})]

    with pytest.raises(SerializationError) as caught:
        backend.insert_jobs(batch)

    assert "when" in str(caught.value)
    assert "when" in caught.value.path
    assert backend.list_jobs() == []


def test_serialization_error_names_a_nested_key(backend: Backend) -> None:
    with pytest.raises(SerializationError) as caught:
        insert(backend, args={"user": {"tags": {"a", "b"}}})

    assert "tags" in caught.value.path
    assert backend.list_jobs() == []


def test_stored_args_are_a_json_copy(backend: Backend) -> None:
    args: dict[str, Any] = {"items": (1, 2), "nested": {"k": "v"}}
    job = insert(backend, args=args)
    args["nested"]["k"] = "changed"

    stored = backend.get_job(job.id)
    assert stored is not None
    assert stored.args == {"items": [1, 2], "nested": {"k": "v"}}


def test_schedule_in_the_future_makes_a_scheduled_job(backend: Backend) -> None:
    job = insert(backend, schedule_in=3600)

    assert job.state is JobState.SCHEDULED
    delay = (job.scheduled_at - job.inserted_at).total_seconds()
    assert 3590 < delay < 3610
    assert backend.claim_jobs("default", "node-a", 10) == []


def test_due_jobs_are_available_at_once(backend: Backend) -> None:
    past = datetime.now(UTC) - timedelta(hours=1)
    jobs = backend.insert_jobs([new(schedule_in=0), new(scheduled_at=past), new()])

    assert [job.state for job in jobs] == [JobState.AVAILABLE] * 3
    assert jobs[1].scheduled_at == past


def test_absolute_future_scheduled_at_is_scheduled(backend: Backend) -> None:
    later = datetime.now(UTC) + timedelta(hours=1)
    job = insert(backend, scheduled_at=later)

    assert job.state is JobState.SCHEDULED
    assert job.scheduled_at == later


def test_a_unique_duplicate_returns_the_existing_job(backend: Backend) -> None:
    first = insert(backend, args={"to": "ann"}, unique=UniqueSpec())
    again = insert(backend, args={"to": "ann"}, unique=UniqueSpec())
    other = insert(backend, args={"to": "bob"}, unique=UniqueSpec())

    assert not first.conflict
    assert again.conflict
    assert again.id == first.id
    assert not other.conflict and other.id != first.id
    assert len(backend.list_jobs()) == 2


def test_unique_by_chosen_keys_ignores_the_other_args(backend: Backend) -> None:
    # records.py's optional(tuple) converter is typed as a generic Iterable by mypy
    spec = UniqueSpec(keys=("to",))
    first = insert(backend, args={"to": "ann", "body": "hi"}, unique=spec)
    again = insert(backend, args={"to": "ann", "body": "hello"}, unique=spec)

    assert again.conflict and again.id == first.id
    assert again.args == {"to": "ann", "body": "hi"}


def test_unique_within_a_period_returns_the_existing_job(backend: Backend) -> None:
    spec = UniqueSpec(period=10**9)  # ~31 years: both inserts fall in the same bucket
    first = insert(backend, args={"x": 1}, unique=spec)
    again = insert(backend, args={"x": 1}, unique=spec)
    forever = insert(backend, args={"x": 1}, unique=UniqueSpec())

    assert again.conflict and again.id == first.id
    assert not forever.conflict and forever.id != first.id


def test_unique_is_per_queue_and_worker(backend: Backend) -> None:
    spec = UniqueSpec()
    a = insert(backend, args={"x": 1}, unique=spec)
    b = insert(backend, args={"x": 1}, unique=spec, queue="other")
    c = insert(backend, args={"x": 1}, unique=spec, worker="tests.contract.Other")

    assert len({a.id, b.id, c.id}) == 3
    assert not (b.conflict or c.conflict)


def test_unique_duplicate_in_one_batch_is_returned_twice(backend: Backend) -> None:
    jobs = backend.insert_jobs([new(args={"x": 1}, unique=UniqueSpec())] * 2)

    assert jobs[0].id == jobs[1].id
    assert [job.conflict for job in jobs] == [False, True]


def test_unique_key_outlives_completion_by_default(backend: Backend) -> None:
    first = insert(backend, args={"x": 1}, unique=UniqueSpec())
    backend.complete_jobs([claim_one(backend).ref])

    again = insert(backend, args={"x": 1}, unique=UniqueSpec())
    assert again.conflict and again.id == first.id


def test_unique_without_a_period_lasts_until_the_job_is_pruned(backend: Backend) -> None:
    first = insert(backend, args={"x": 1}, unique=UniqueSpec())
    backend.complete_jobs([claim_one(backend).ref])
    assert backend.prune_jobs(max_age=3600) == 0
    assert insert(backend, args={"x": 1}, unique=UniqueSpec()).conflict

    assert backend.prune_jobs(max_age=-60) == 1  # everything finished counts as old

    again = insert(backend, args={"x": 1}, unique=UniqueSpec())
    assert not again.conflict and again.id != first.id


def test_unique_while_unfinished_is_released_when_finished(backend: Backend) -> None:
    spec = UniqueSpec(while_unfinished=True)
    first = insert(backend, args={"x": 1}, unique=spec)
    assert insert(backend, args={"x": 1}, unique=spec).conflict

    backend.complete_jobs([claim_one(backend).ref])
    second = insert(backend, args={"x": 1}, unique=spec)
    assert not second.conflict and second.id != first.id

    backend.cancel_job(second.id)
    third = insert(backend, args={"x": 1}, unique=spec)
    assert not third.conflict and third.id not in {first.id, second.id}


def test_racing_unique_inserts_store_one_job(backend: Backend) -> None:
    results: list[int] = []
    failures: list[BaseException] = []
    start = threading.Barrier(6)

    def racer() -> None:
        try:
            start.wait(timeout=10)
            (job,) = backend.insert_jobs([new(args={"k": "same"}, unique=UniqueSpec())])
            results.append(job.id)
        except BaseException as exc:  # reported by the main thread
            failures.append(exc)

    threads = [threading.Thread(target=racer) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert failures == []
    assert len(results) == 6 and len(set(results)) == 1
    assert len(backend.list_jobs()) == 1


HOSTILE_QUEUE = "x'; DROP TABLE pgflow_jobs; --"


def test_a_hostile_queue_name_is_refused(backend: Backend) -> None:
    with pytest.raises(DefinitionError, match="DROP TABLE"):
        insert(backend, queue=HOSTILE_QUEUE)

    job = insert(backend)  # the table is still there and usable
    assert [j.id for j in backend.list_jobs()] == [job.id]
    assert backend.claim_jobs(HOSTILE_QUEUE, "node-a", 5) == []


def test_a_batch_with_one_bad_name_writes_nothing(backend: Backend) -> None:
    with pytest.raises(DefinitionError, match="bad queue"):
        backend.insert_jobs([new(), new(queue="bad queue"), new()])
    assert backend.list_jobs() == []


@pytest.mark.parametrize("queue", ["", " default", "a b", "-lead", "é", "q" * 64])
def test_bad_queue_names_are_refused(backend: Backend, queue: str) -> None:
    with pytest.raises(DefinitionError):
        insert(backend, queue=queue)
    assert backend.list_jobs() == []


@pytest.mark.parametrize("worker", ["", "1abc", "a..b", "os.system('x')", "a b"])
def test_bad_worker_names_are_refused(backend: Backend, worker: str) -> None:
    with pytest.raises(DefinitionError):
        insert(backend, worker=worker)
    assert backend.list_jobs() == []
