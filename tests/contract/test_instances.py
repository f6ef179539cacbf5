"""Instances, heartbeats, rescue of a dead instance's jobs, zombies, and the leader lease."""

from __future__ import annotations

import time

import pytest

from pgflow.backend import Backend
from pgflow.errors import DefinitionError
from pgflow.records import InstanceInfo, JobState, Liveness

from .support import claim_one, insert, register


def _status(backend: Backend) -> dict[str, str]:
    return {i.instance_id: i.status for i in backend.list_instances()}


def test_register_records_an_online_instance(backend: Backend) -> None:
    info = InstanceInfo(instance_id="node-a", hostname="host-1", pid=42, queues={"default": 10})
    backend.register_instance(info)

    (instance,) = backend.list_instances()
    assert instance.instance_id == "node-a"
    assert instance.status == "online"
    assert (instance.hostname, instance.pid, instance.queues) == ("host-1", 42, {"default": 10})
    assert instance.heartbeat_at.utcoffset() is not None
    assert instance.started_at.utcoffset() is not None


def test_heartbeat_refreshes_an_online_instance(backend: Backend) -> None:
    register(backend, "node-a")
    (before,) = backend.list_instances()
    time.sleep(0.01)

    assert backend.heartbeat("node-a") is Liveness.ALIVE

    (after,) = backend.list_instances()
    assert after.heartbeat_at > before.heartbeat_at
    assert backend.heartbeat("never-registered") is Liveness.PRESUMED_DEAD
    assert [i.instance_id for i in backend.list_instances()] == ["node-a"]


def test_mark_offline_keeps_the_heartbeat_and_heartbeat_then_says_false(
    backend: Backend,
) -> None:
    register(backend, "node-a", "node-b")
    (before,) = [i for i in backend.list_instances() if i.instance_id == "node-a"]

    backend.mark_offline("node-a")

    assert _status(backend) == {"node-a": "offline", "node-b": "online"}
    (after,) = [i for i in backend.list_instances() if i.instance_id == "node-a"]
    assert after.heartbeat_at == before.heartbeat_at
    assert backend.heartbeat("node-a") is Liveness.PRESUMED_DEAD  # it was presumed dead
    assert backend.heartbeat("node-a") is Liveness.ALIVE  # ...and is back online now
    assert _status(backend)["node-a"] == "online"


def test_list_instances_puts_online_first(backend: Backend) -> None:
    register(backend, "a-down", "b-up", "c-down")
    backend.mark_offline("a-down")
    backend.mark_offline("c-down")

    statuses = [i.status for i in backend.list_instances()]

    assert statuses == ["online", "offline", "offline"]


def test_registering_again_brings_an_instance_back_online(backend: Backend) -> None:
    register(backend, "node-a")
    backend.mark_offline("node-a")
    register(backend, "node-a")

    assert _status(backend) == {"node-a": "online"}


@pytest.mark.parametrize("instance_id", ["", "a b", "x'y", 'x"y', "a\nb", "n" * 129])
def test_bad_instance_ids_are_refused(backend: Backend, instance_id: str) -> None:
    with pytest.raises(DefinitionError):
        backend.register_instance(InstanceInfo(instance_id=instance_id))
    assert backend.list_instances() == []


def test_rescue_requeues_or_discards_the_jobs_of_an_instance_that_is_gone(
    backend: Backend,
) -> None:
    register(backend, "dead", "alive")
    again = insert(backend, queue="again", max_attempts=3)
    last = insert(backend, queue="last", max_attempts=1)
    done = insert(backend, queue="done")
    kept = insert(backend, queue="kept")
    for queue in ("again", "last", "done"):
        claim_one(backend, queue=queue, instance="dead")
    claim_one(backend, queue="kept", instance="alive")
    backend.complete_jobs([backend.get_job(done.id).ref])  # type: ignore[union-attr]
    backend.mark_offline("dead")

    report = backend.rescue_stale(stale_after=3600)

    assert report.instances == ()
    assert report.rescued == (again.id,)
    assert report.discarded == (last.id,)
    requeued = backend.get_job(again.id)
    assert requeued is not None and requeued.state is JobState.AVAILABLE
    (rescue_error,) = requeued.errors
    assert rescue_error["kind"] == "rescued"
    assert rescue_error["attempt"] == 1
    assert rescue_error["instance_id"] == "dead"
    lost = backend.get_job(last.id)
    assert lost is not None and lost.state is JobState.DISCARDED and len(lost.errors) == 1
    assert backend.get_job(done.id).state is JobState.COMPLETED  # type: ignore[union-attr]
    assert backend.get_job(kept.id).state is JobState.EXECUTING  # type: ignore[union-attr]
    assert claim_one(backend, queue="again", instance="alive").attempt == 2


def test_rescue_marks_instances_with_an_old_heartbeat_offline(backend: Backend) -> None:
    register(backend, "quiet", "busy")
    job = insert(backend)
    claim_one(backend, instance="quiet")
    time.sleep(0.2)
    assert backend.heartbeat("busy") is Liveness.ALIVE

    # quiet's heartbeat is >= 0.2 s old; busy's is as old as the gap since the line above
    report = backend.rescue_stale(stale_after=0.15)

    assert report.instances == ("quiet",)
    assert report.rescued == (job.id,)
    assert _status(backend) == {"quiet": "offline", "busy": "online"}
    assert backend.heartbeat("quiet") is Liveness.PRESUMED_DEAD
    assert backend.rescue_stale(stale_after=3600).rescued == ()


def test_a_zombies_late_writes_change_nothing(backend: Backend) -> None:
    register(backend, "zombie", "healthy")
    insert(backend)
    stale = claim_one(backend, instance="zombie")
    backend.mark_offline("zombie")
    assert backend.rescue_stale(stale_after=3600).rescued == (stale.id,)
    fresh = claim_one(backend, instance="healthy")
    assert fresh.attempt == stale.attempt + 1

    assert backend.complete_jobs([stale.ref]) == []
    assert backend.fail_job(stale.ref, {"kind": "late"}, retry_in=0) is None
    assert backend.snooze_job(stale.ref, 10) is False
    current = backend.get_job(stale.id)
    assert current is not None
    assert (current.state, current.reserved_by) == (JobState.EXECUTING, "healthy")

    assert backend.complete_jobs([fresh.ref]) == [fresh.id]
    final = backend.get_job(fresh.id)
    assert final is not None
    assert (final.state, final.reserved_by) == (JobState.COMPLETED, "healthy")
    assert [e["kind"] for e in final.errors] == ["rescued"]


def test_leadership_is_exclusive_renewable_and_releasable(backend: Backend) -> None:
    assert backend.acquire_leadership("node-a", ttl=60) is True
    assert backend.acquire_leadership("node-b", ttl=60) is False
    assert backend.acquire_leadership("node-a", ttl=60) is True  # renewal

    backend.release_leadership("node-b")  # not the holder: nothing happens
    assert backend.acquire_leadership("node-b", ttl=60) is False

    backend.release_leadership("node-a")
    assert backend.acquire_leadership("node-b", ttl=60) is True
    assert backend.acquire_leadership("node-a", ttl=60) is False


def test_an_expired_lease_can_be_taken_over(backend: Backend) -> None:
    assert backend.acquire_leadership("node-a", ttl=0.1) is True
    time.sleep(0.2)

    assert backend.acquire_leadership("node-b", ttl=60) is True
    assert backend.acquire_leadership("node-a", ttl=60) is False


def test_database_time_is_the_backends_clock(backend: Backend) -> None:
    from datetime import UTC, datetime

    before = datetime.now(UTC)
    observed = backend.database_time()
    after = datetime.now(UTC)

    assert observed.utcoffset() is not None
    # Same machine: the database's clock agrees with ours to well within a few seconds.
    assert (before - observed).total_seconds() < 5 and (observed - after).total_seconds() < 5
