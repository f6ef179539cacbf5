"""The instance lifecycle on InMemoryBackend: stopping with stuck queues, restarts under
the same instance id, displaced processes, and the leader's duties fenced by its lease.

Real threads and the real clock; every wait is bounded and awaits an event.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from pgflow.app import Pgflow
from pgflow.clock import SYSTEM_CLOCK
from pgflow.records import InstanceInfo, Job, JobState, Liveness, RescueReport
from pgflow.runtime.heartbeat import Heartbeat
from pgflow.runtime.leader import Leader
from pgflow.worker import Worker
from pgflow_backends.memory import InMemoryBackend
from tests.waiting import wait_for

FAST: dict[str, Any] = {"poll_interval": 0.05, "heartbeat_interval": 0.1, "stale_timeout": 1.0,
        "stage_interval": 0.05, "shutdown_timeout": 5.0}  # fmt: skip

RELEASE = threading.Event()
STARTED: list[int] = []
STARTED_LOCK = threading.Lock()


class Stuck(Worker):
    """Ignores cancellation: only RELEASE (set by the test or at teardown) ends it."""

    def perform(self, job: Job) -> Any:
        with STARTED_LOCK:
            STARTED.append(job.id)
        RELEASE.wait(60)


class Quick(Worker):
    def perform(self, job: Job) -> Any:
        return None


@pytest.fixture(autouse=True)
def _reset() -> Iterator[None]:
    RELEASE.clear()
    with STARTED_LOCK:
        STARTED.clear()
    yield
    RELEASE.set()


@pytest.fixture
def memory() -> InMemoryBackend:
    return InMemoryBackend()


def test_stop_with_stuck_queues_waits_for_them_together(memory: InMemoryBackend) -> None:
    queues = [f"stuck_{n}" for n in range(8)]
    app = Pgflow(memory, queues=dict.fromkeys(queues, 1), **FAST)
    jobs = app.insert([Stuck.new(queue=queue) for queue in queues])
    app.start()
    assert wait_for(lambda: len(STARTED) == len(queues))
    timeout = 1.0

    began = time.monotonic()
    drained = app.stop(timeout=timeout)
    took = time.monotonic() - began

    assert drained is False
    # A behaviour bound, not a benchmark: one queue after another took T + ~1 s per queue.
    assert took < timeout + 5.0, f"stop(timeout={timeout}) took {took:.1f}s"
    assert {job.id for job in jobs} == set(STARTED)


def _job_state(memory: InMemoryBackend, job_id: int) -> JobState | None:
    stored = memory.get_job(job_id)
    return None if stored is None else stored.state


def test_a_restart_under_the_same_id_runs_the_lost_job_at_once(memory: InMemoryBackend) -> None:
    # The earlier process under "worker-1" claimed a job and was SIGKILLed: its row is still
    # online, with a fresh heartbeat, and stale_timeout is long.
    memory.register_instance(InstanceInfo(instance_id="worker-1", incarnation="killed"))
    (job,) = memory.insert_jobs([Quick.new()])
    memory.claim_jobs("default", "worker-1", 1)
    app = Pgflow(memory, **{**FAST, "instance_id": "worker-1", "stale_timeout": 3600.0})
    app.start()
    try:
        assert wait_for(lambda: _job_state(memory, job.id) is JobState.COMPLETED)
    finally:
        app.stop(timeout=5)
    stored = memory.get_job(job.id)
    assert stored is not None and stored.attempt == 2
    (lost,) = stored.errors
    assert lost["kind"] == "rescued" and "earlier incarnation" in lost["message"]


def test_a_displaced_process_stands_down_and_leaves_the_new_one_alone(
    memory: InMemoryBackend, caplog: pytest.LogCaptureFixture
) -> None:
    first = Pgflow(memory, **{**FAST, "instance_id": "shared"})
    second = Pgflow(memory, **{**FAST, "instance_id": "shared"})
    (job,) = first.insert([Stuck.new()])
    first.start()
    try:
        assert wait_for(lambda: [job.id] == STARTED)
        second.start()  # rescues the job of `first`, which is still running it
        (registered,) = memory.list_instances()
        assert wait_for(lambda: [job.id, job.id] == STARTED)

        assert wait_for(lambda: first.displaced)

        assert not second.displaced

        def reported() -> list[str]:
            return [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]

        assert wait_for(lambda: len(reported()) == 1)
        assert "'shared' is now registered by another process" in reported()[0]
        assert registered.incarnation in reported()[0]
        RELEASE.set()
        assert wait_for(lambda: _job_state(memory, job.id) is JobState.COMPLETED)
        assert first.stop(timeout=5) is True
        (instance,) = memory.list_instances()
        assert (instance.status, instance.incarnation) == ("online", registered.incarnation)
        (after,) = second.insert([Quick.new()])
        assert wait_for(lambda: _job_state(memory, after.id) is JobState.COMPLETED)
    finally:
        RELEASE.set()
        first.stop(timeout=5)
        second.stop(timeout=5)
    stored = memory.get_job(job.id)
    assert stored is not None and stored.attempt == 2  # the first one's late write was fenced


def test_a_displaced_heartbeat_never_registers_again(memory: InMemoryBackend) -> None:
    mine = InstanceInfo(instance_id="shared", hostname="h1", pid=1, incarnation="mine")
    theirs = InstanceInfo(instance_id="shared", hostname="h2", pid=2, incarnation="theirs")
    memory.register_instance(mine)
    memory.register_instance(theirs)
    calls: list[str] = []
    heartbeat = Heartbeat(memory, mine, 1.0, on_displaced=lambda: calls.append("displaced"))

    for _ in range(3):
        heartbeat.beat()

    assert calls == ["displaced"]
    assert heartbeat.displaced.is_set()
    (instance,) = memory.list_instances()
    assert (instance.incarnation, instance.hostname) == ("theirs", "h2")
    assert memory.heartbeat("shared", "theirs") is Liveness.ALIVE


class LeaseStub:
    """The leader's part of a backend; the lease is taken by a rival while staging runs."""

    def __init__(self, now: list[float]) -> None:
        self.now = now
        self.rival_holds = False
        self.slow_stage = False
        self.calls: list[str] = []

    def acquire_leadership(self, instance_id: str, ttl: float) -> bool:
        self.calls.append("acquire")
        return not self.rival_holds

    def release_leadership(self, instance_id: str) -> None:
        self.calls.append("release")

    def stage_jobs(self, limit: int = 10_000) -> list[str]:
        self.calls.append("stage")
        if self.slow_stage:  # runs past the lease, which a rival takes meanwhile
            self.now[0] += 10.0
            self.rival_holds = True
        return []

    def rescue_stale(self, stale_after: float) -> RescueReport:
        self.calls.append("rescue")
        return RescueReport()

    def prune_jobs(self, max_age: float, limit: int = 10_000) -> int:
        self.calls.append("prune")
        return 0


def test_a_leader_that_lost_its_lease_runs_no_further_duty() -> None:
    now = [100.0]
    stub = LeaseStub(now)
    leader = Leader(
        backend=stub,  # type: ignore[arg-type]
        instance_id="node-a",
        clock=SYSTEM_CLOCK,
        interval=0.5,
        stale_timeout=60.0,
        rescue_interval=5.0,
        prune_after=60.0,
        prune_interval=60.0,
        cron=None,
        on_staged=lambda queues: None,
        monotonic=lambda: now[0],
    )
    leader.tick()
    assert stub.calls == ["acquire", "stage", "rescue", "prune"] and leader.is_leader

    stub.calls.clear()
    stub.slow_stage = True
    now[0] += 100.0  # rescue and prune are due again
    leader.tick()

    assert stub.calls == ["acquire", "stage", "acquire"]  # checked, lost: nothing more
    assert not leader.is_leader
    stub.calls.clear()
    stub.slow_stage = False
    leader.tick()
    assert stub.calls == ["acquire"]  # still the rival's: no duty at all
    stub.calls.clear()
    stub.rival_holds = False
    leader.tick()
    assert stub.calls == ["acquire", "stage", "rescue", "prune"] and leader.is_leader


def test_a_heartbeat_presumed_dead_comes_back_without_displacing_anyone(
    memory: InMemoryBackend,
) -> None:
    mine = InstanceInfo(instance_id="node", hostname="h1", pid=1, incarnation="mine")
    memory.register_instance(mine)
    heartbeat = Heartbeat(memory, mine, 1.0)
    memory.mark_offline("node")

    heartbeat.beat()

    (instance,) = memory.list_instances()
    assert (instance.status, instance.incarnation) == ("online", "mine")
    memory.close()
    gone = InMemoryBackend()
    heartbeat = Heartbeat(gone, mine, 1.0)
    heartbeat.beat()  # an unknown instance registers
    (instance,) = gone.list_instances()
    assert (instance.status, instance.incarnation) == ("online", "mine")
