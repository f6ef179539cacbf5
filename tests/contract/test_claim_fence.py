"""Claims are fenced by the process incarnation, not just the instance id.

A process displaced by a newer incarnation under its id may still try to claim before its
heartbeat tells it; such a claim must get nothing, or the jobs would stay executing under
the id of a live process (the new one) whose heartbeat keeps them from any rescue.
"""

from __future__ import annotations

from pgflow.backend import Backend
from pgflow.records import InstanceInfo, JobState

from .support import insert


def register(backend: Backend, incarnation: str, instance_id: str = "node-a") -> None:
    backend.register_instance(
        InstanceInfo(instance_id=instance_id, hostname="test", pid=1, incarnation=incarnation)
    )


def test_a_displaced_incarnation_claims_nothing(backend: Backend) -> None:
    register(backend, "first")
    register(backend, "second")
    job = insert(backend)

    assert backend.claim_jobs("default", "node-a", 10, incarnation="first") == []
    stored = backend.get_job(job.id)
    assert stored is not None and (stored.state, stored.attempt) == (JobState.AVAILABLE, 0)

    (claimed,) = backend.claim_jobs("default", "node-a", 10, incarnation="second")
    assert (claimed.id, claimed.reserved_by, claimed.attempt) == (job.id, "node-a", 1)


def test_an_incarnation_of_an_unregistered_id_claims_nothing(backend: Backend) -> None:
    register(backend, "first", instance_id="node-b")
    job = insert(backend)

    assert backend.claim_jobs("default", "node-a", 10, incarnation="first") == []
    assert backend.get_job(job.id).state is JobState.AVAILABLE  # type: ignore[union-attr]


def test_a_claim_without_an_incarnation_is_not_fenced(backend: Backend) -> None:
    job = insert(backend)  # no instance registered at all: direct callers and tools

    (claimed,) = backend.claim_jobs("default", "node-a", 10)
    assert claimed.id == job.id


def test_listing_my_executing_jobs_is_fenced_by_the_incarnation(backend: Backend) -> None:
    # A displaced process must not see (and release as orphans) what the new one runs.
    register(backend, "first")
    register(backend, "second")
    job = insert(backend)
    backend.claim_jobs("default", "node-a", 10, incarnation="second")

    assert backend.list_executing("default", "node-a", incarnation="first") == []
    (mine,) = backend.list_executing("default", "node-a", incarnation="second")
    assert mine.id == job.id
    assert [j.id for j in backend.list_executing("default", "node-a")] == [job.id]
