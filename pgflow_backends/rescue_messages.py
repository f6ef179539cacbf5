"""The error messages a rescue writes on the jobs it frees, one wording for every backend."""

from __future__ import annotations


def stopped_instance(instance_id: str | None) -> str:
    """A job of an instance presumed dead (offline, or its heartbeat too old)."""
    return f"instance {instance_id!r} stopped while running the job"


def lost_incarnation(instance_id: str | None) -> str:
    """A job of a process that was replaced by a new one registering under the same id."""
    return (
        f"an earlier incarnation of instance {instance_id!r} was lost while running the job "
        "(a new process registered under the same instance id)"
    )
