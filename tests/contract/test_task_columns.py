"""Task jobs keep which flow run unit they are, and instances keep the flows they serve:
the columns the distributed flow engine reads on every backend."""

from __future__ import annotations

from pgflow.backend import Backend
from pgflow.records import InstanceInfo, TaskKey

from .support import claim_one, insert, new


def test_a_task_job_keeps_its_task_through_insert_claim_and_reads(backend: Backend) -> None:
    key = TaskKey("run-1", "resize", 3)
    stored = insert(backend, task=key)
    assert stored.task == key

    claimed = claim_one(backend)
    assert claimed.id == stored.id and claimed.task == key

    fetched = backend.get_job(stored.id)
    assert fetched is not None and fetched.task == key
    assert [job.task for job in backend.list_jobs()] == [key]


def test_ordinary_jobs_have_no_task(backend: Backend) -> None:
    stored = insert(backend)
    assert stored.task is None
    assert claim_one(backend).task is None


def test_a_batch_mixing_task_and_ordinary_jobs_keeps_each_ones_task(backend: Backend) -> None:
    keys = [TaskKey("run-2", "fetch"), None, TaskKey("run-2", "split", 1)]
    stored = backend.insert_jobs([new(task=key) for key in keys])
    assert [job.task for job in stored] == keys
    assert [backend.get_job(job.id).task for job in stored] == keys  # type: ignore[union-attr]


def test_register_instance_keeps_the_flows_it_serves(backend: Backend) -> None:
    served = (("orders", "f1"), ("billing", "f2"))
    backend.register_instance(InstanceInfo(instance_id="node-a", flows=served))
    (instance,) = backend.list_instances()
    assert instance.flows == served

    backend.register_instance(InstanceInfo(instance_id="node-a", flows=()))
    (instance,) = backend.list_instances()
    assert instance.flows == ()
