"""A cron slot is enqueued at most once, even after its job was pruned (short prune_after)
and the scheduler that enqueued it is gone (a leader hand-over)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pgflow.clock import FakeClock
from pgflow.records import Job
from pgflow.runtime.cron import CronScheduler, parse_cron
from pgflow.worker import Worker
from pgflow_backends.memory import InMemoryBackend


class Hourly(Worker):
    def perform(self, job: Job) -> Any:
        return None


class Other(Worker):
    def perform(self, job: Job) -> Any:
        return None


def test_a_pruned_slot_is_not_enqueued_again_by_the_next_leader() -> None:
    clock = FakeClock(datetime(2026, 3, 1, 12, 0, 1, tzinfo=UTC))
    backend = InMemoryBackend(clock=clock)
    entries = parse_cron([("0 * * * *", Hourly)])
    (first,) = CronScheduler(entries).tick(backend, clock.now())
    (claimed,) = backend.claim_jobs("default", "leader-1", 1)
    backend.complete_jobs([claimed.ref])
    clock.advance(10)
    assert backend.prune_jobs(max_age=5) == 1  # a short prune_after

    assert CronScheduler(entries).tick(backend, clock.now()) == []  # the next leader

    assert backend.list_jobs() == []
    clock.advance(3600)
    (later,) = CronScheduler(entries).tick(backend, clock.now())
    assert later.meta["cron_slot"] == "2026-03-01T13:00:00+00:00" and later.id != first.id


def test_entries_sharing_an_expression_each_get_their_slot() -> None:
    clock = FakeClock(datetime(2026, 3, 1, 12, 0, 1, tzinfo=UTC))
    backend = InMemoryBackend(clock=clock)
    entries = parse_cron(
        [("0 * * * *", Hourly), ("0 * * * *", Other), ("0 * * * *", Hourly, {"a": 1})]
    )

    stored = CronScheduler(entries).tick(backend, clock.now())

    assert sorted((job.worker, job.args.get("a", 0)) for job in stored) == sorted(
        [(Hourly.options.name, 0), (Other.options.name, 0), (Hourly.options.name, 1)]
    )
    assert CronScheduler(entries).tick(backend, clock.now()) == []
