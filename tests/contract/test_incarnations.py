"""Restarts under the same instance id: every claim belongs to one process incarnation.

Registering a new incarnation rescues, at once, what the earlier one left executing; the
heartbeat of an incarnation that another one replaced says so (and changes nothing).
"""

from __future__ import annotations

from pgflow.backend import Backend
from pgflow.records import InstanceInfo, JobState, Liveness

from .support import claim_one, insert


def info(incarnation: str, instance_id: str = "node-a", pid: int = 1) -> InstanceInfo:
    return InstanceInfo(
        instance_id=instance_id,
        hostname=f"host-{incarnation}",
        pid=pid,
        queues={"default": 10},
        incarnation=incarnation,
    )


def test_the_stored_instance_shows_its_incarnation(backend: Backend) -> None:
    backend.register_instance(info("first"))
    (instance,) = backend.list_instances()
    assert instance.incarnation == "first"

    backend.register_instance(info("second", pid=2))
    (instance,) = backend.list_instances()
    assert (instance.incarnation, instance.pid, instance.status) == ("second", 2, "online")


def test_a_new_incarnation_rescues_what_the_earlier_one_left_executing(backend: Backend) -> None:
    backend.register_instance(info("first"))
    backend.register_instance(info("other", instance_id="node-b"))
    again = insert(backend, queue="again", max_attempts=3)
    last = insert(backend, queue="last", max_attempts=1)
    cancelled = insert(backend, queue="cancelled", max_attempts=3)
    elsewhere = insert(backend, queue="elsewhere")
    for queue in ("again", "last", "cancelled"):
        claim_one(backend, queue=queue, instance="node-a")
    claim_one(backend, queue="elsewhere", instance="node-b")
    backend.cancel_job(cancelled.id)

    report = backend.register_instance(info("second"))

    assert report.rescued == (again.id,)
    assert report.discarded == (last.id,)
    assert report.cancelled == (cancelled.id,)
    requeued = backend.get_job(again.id)
    assert requeued is not None and requeued.state is JobState.AVAILABLE
    (lost,) = requeued.errors
    assert lost["kind"] == "rescued" and lost["instance_id"] == "node-a"
    assert "earlier incarnation" in lost["message"]
    assert backend.get_job(last.id).state is JobState.DISCARDED  # type: ignore[union-attr]
    assert backend.get_job(cancelled.id).state is JobState.CANCELLED  # type: ignore[union-attr]
    assert backend.get_job(elsewhere.id).state is JobState.EXECUTING  # type: ignore[union-attr]
    rerun = claim_one(backend, queue="again", instance="node-a")
    assert (rerun.id, rerun.attempt) == (again.id, 2)


def test_registering_the_same_incarnation_again_rescues_nothing(backend: Backend) -> None:
    backend.register_instance(info("first"))
    job = insert(backend)
    claim_one(backend, instance="node-a")
    backend.mark_offline("node-a", "first")  # presumed dead, then back: the same process

    report = backend.register_instance(info("first"))

    assert report.rescued == report.discarded == report.cancelled == ()
    assert backend.get_job(job.id).state is JobState.EXECUTING  # type: ignore[union-attr]


def test_the_earlier_incarnations_heartbeat_says_it_was_displaced(backend: Backend) -> None:
    backend.register_instance(info("first"))
    backend.register_instance(info("second", pid=2))
    (before,) = backend.list_instances()

    assert backend.heartbeat("node-a", "first") is Liveness.DISPLACED

    (after,) = backend.list_instances()
    assert after == before  # nothing written: the row is the second incarnation's
    assert backend.heartbeat("node-a", "second") is Liveness.ALIVE


def test_the_earlier_incarnations_clean_stop_leaves_the_new_one_online(backend: Backend) -> None:
    backend.register_instance(info("first"))
    backend.register_instance(info("second"))

    backend.mark_offline("node-a", "first")

    (instance,) = backend.list_instances()
    assert (instance.status, instance.incarnation) == ("online", "second")
    backend.mark_offline("node-a", "second")
    (instance,) = backend.list_instances()
    assert instance.status == "offline"
