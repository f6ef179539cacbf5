"""Small builders shared by the contract tests."""

from __future__ import annotations

from typing import Any

from pgflow.backend import Backend
from pgflow.records import InstanceInfo, Job, NewJob

WORKER = "tests.contract.Noop"


def new(**fields: Any) -> NewJob:
    """A NewJob for the contract's worker, with `fields` overriding the defaults."""
    fields.setdefault("worker", WORKER)
    return NewJob(**fields)


def insert(backend: Backend, **fields: Any) -> Job:
    """Insert one job and return it as stored."""
    (job,) = backend.insert_jobs([new(**fields)])
    return job


def claim_one(backend: Backend, queue: str = "default", instance: str = "node-a") -> Job:
    """Claim exactly one job of `queue`, failing the test if there is none."""
    claimed = backend.claim_jobs(queue, instance, 1)
    assert len(claimed) == 1, f"expected one job to claim in {queue!r}, got {claimed!r}"
    return claimed[0]


def register(backend: Backend, *instance_ids: str) -> None:
    for instance_id in instance_ids:
        backend.register_instance(InstanceInfo(instance_id=instance_id, hostname="test", pid=1))


def error(attempt: int, message: str = "boom") -> dict[str, Any]:
    return {"attempt": attempt, "kind": "ValueError", "message": message}
