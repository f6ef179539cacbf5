"""What only InMemoryBackend promises: a clock it obeys, its URL, its lifecycle and readers.

The shared behaviour is covered by tests/contract; here a FakeClock drives due, stale, prune,
lease and unique-period logic without a single sleep.
"""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest

from pgflow.backend import Backend
from pgflow.clock import FakeClock, SystemClock
from pgflow.errors import BackendError
from pgflow.records import InstanceInfo, JobState, NewJob, RunState, UniqueSpec
from pgflow_backends import InMemoryBackend

WORKER = "tests.test_memory_backend.Noop"
START = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


@pytest.fixture
def memory(clock: FakeClock) -> InMemoryBackend:
    return InMemoryBackend(clock=clock)


def _insert(backend: InMemoryBackend, **fields: object) -> int:
    (job,) = backend.insert_jobs([NewJob(worker=WORKER, **fields)])  # type: ignore[arg-type]
    return job.id


def test_it_implements_the_backend_protocol() -> None:
    backend = InMemoryBackend()
    assert isinstance(backend, Backend)
    assert isinstance(backend.clock, SystemClock)
    assert backend.url == "memory://"


def test_from_url_accepts_only_memory() -> None:
    clock = FakeClock()
    assert InMemoryBackend.from_url("memory://", clock=clock).clock is clock
    for url in ("memory://host", "memory:///path", "sqlite://", "memory://?x=1"):
        with pytest.raises(BackendError, match="memory://"):
            InMemoryBackend.from_url(url)


def test_importing_pgflow_backends_loads_no_database_driver() -> None:
    code = (
        "import sys, pgflow_backends; "
        "assert pgflow_backends.InMemoryBackend().url == 'memory://'; "
        "print('psycopg' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "False"


def test_unknown_attributes_of_the_package_raise_attribute_error() -> None:
    import pgflow_backends

    with pytest.raises(AttributeError, match="NoSuchBackend"):
        _ = pgflow_backends.NoSuchBackend


def test_times_come_from_the_clock(memory: InMemoryBackend, clock: FakeClock) -> None:
    job_id = _insert(memory, schedule_in=30)
    job = memory.get_job(job_id)
    assert job is not None
    assert job.inserted_at == START
    assert job.scheduled_at == START + timedelta(seconds=30)
    assert job.state is JobState.SCHEDULED

    clock.advance(29)
    assert memory.stage_jobs() == []
    clock.advance(1)
    assert memory.stage_jobs() == ["default"]
    (claimed,) = memory.claim_jobs("default", "node-a", 1)
    assert claimed.attempted_at == START + timedelta(seconds=30)


def test_retry_is_due_after_retry_in(memory: InMemoryBackend, clock: FakeClock) -> None:
    _insert(memory)
    (job,) = memory.claim_jobs("default", "node-a", 1)
    memory.fail_job(job.ref, {"kind": "X"}, retry_in=10)

    clock.advance(9.9)
    assert memory.stage_jobs() == []
    clock.advance(0.1)
    assert memory.stage_jobs() == ["default"]


def test_rescue_uses_the_clock_for_staleness(memory: InMemoryBackend, clock: FakeClock) -> None:
    memory.register_instance(InstanceInfo(instance_id="node-a"))
    job_id = _insert(memory)
    memory.claim_jobs("default", "node-a", 1)

    clock.advance(300)
    assert memory.rescue_stale(stale_after=300).instances == ()  # exactly at the limit
    clock.advance(0.001)
    report = memory.rescue_stale(stale_after=300)

    assert report.instances == ("node-a",)
    assert report.rescued == (job_id,)
    job = memory.get_job(job_id)
    assert job is not None
    assert job.errors[0]["at"] == (START + timedelta(seconds=300.001)).isoformat()


def test_prune_uses_the_clock_for_age(memory: InMemoryBackend, clock: FakeClock) -> None:
    _insert(memory)
    (job,) = memory.claim_jobs("default", "node-a", 1)
    memory.complete_jobs([job.ref])

    clock.advance(60)
    assert memory.prune_jobs(max_age=60) == 0
    clock.advance(0.001)
    assert memory.prune_jobs(max_age=60) == 1
    assert memory.jobs() == []


def test_the_lease_expires_by_the_clock(memory: InMemoryBackend, clock: FakeClock) -> None:
    assert memory.acquire_leadership("node-a", ttl=15)
    clock.advance(14.999)
    assert not memory.acquire_leadership("node-b", ttl=15)
    clock.advance(0.001)
    assert memory.acquire_leadership("node-b", ttl=15)


def test_a_unique_period_admits_one_job_per_bucket(
    memory: InMemoryBackend, clock: FakeClock
) -> None:
    spec = UniqueSpec(period=60)
    first = _insert(memory, args={"x": 1}, unique=spec)
    clock.advance(30)  # START is on a minute boundary: still the same bucket
    (again,) = memory.insert_jobs([NewJob(worker=WORKER, args={"x": 1}, unique=spec)])
    assert again.conflict and again.id == first

    clock.advance(30)
    second = _insert(memory, args={"x": 1}, unique=spec)
    assert second != first


def test_snooze_for_zero_seconds_is_available_and_announced(memory: InMemoryBackend) -> None:
    _insert(memory)
    (job,) = memory.claim_jobs("default", "node-a", 1)
    listener = memory.listener()

    assert memory.snooze_job(job.ref, 0)

    assert listener.wait(0) == {"default"}
    (again,) = memory.claim_jobs("default", "node-a", 1)
    assert again.attempt == 1


def test_rescue_announces_the_queues_it_refilled(memory: InMemoryBackend) -> None:
    memory.register_instance(InstanceInfo(instance_id="node-a"))
    _insert(memory, queue="work")
    memory.claim_jobs("work", "node-a", 1)
    memory.mark_offline("node-a")
    listener = memory.listener()

    memory.rescue_stale(stale_after=60)

    assert listener.wait(0) == {"work"}


def test_every_listener_gets_every_hint(memory: InMemoryBackend) -> None:
    first, second = memory.listener(), memory.listener()
    _insert(memory, queue="a")
    _insert(memory, queue="b")

    assert first.wait(0) == {"a", "b"}
    assert second.wait(0) == {"a", "b"}
    second.close()
    _insert(memory, queue="c")
    assert first.wait(0) == {"c"}
    assert second.wait(0) == set()


def test_a_transactional_insert_is_refused(memory: InMemoryBackend) -> None:
    with pytest.raises(BackendError, match="connection"):
        memory.insert_jobs([NewJob(worker=WORKER)], connection=object())
    assert memory.jobs() == []


def test_returned_values_are_copies(memory: InMemoryBackend) -> None:
    job_id = _insert(memory, args={"items": [1]})
    job = memory.get_job(job_id)
    assert job is not None
    job.args["items"].append(2)

    again = memory.get_job(job_id)
    assert again is not None and again.args == {"items": [1]}


def test_readers_return_everything_without_a_limit(memory: InMemoryBackend) -> None:
    memory.insert_jobs([NewJob(worker=WORKER, args={"n": n}) for n in range(150)])
    for n in range(120):
        memory.start_run(workflow_id=f"wf-{n}", workflow="w", input=n, max_attempts=1)

    assert [job.args["n"] for job in memory.jobs()] == list(range(150))
    assert len(memory.runs()) == 120
    assert len(memory.list_jobs()) == 100  # the protocol's default limit still applies


def test_start_attempt_reopens_a_finished_run(memory: InMemoryBackend) -> None:
    memory.start_run(workflow_id="wf", workflow="w", input=None, max_attempts=2)
    memory.finish_run("wf", 1, RunState.FAILED, error={"kind": "X"})

    assert memory.start_attempt("wf", 2) is True

    run = memory.get_run("wf")
    assert run is not None
    assert (run.state, run.attempt, run.error, run.finished_at) == (RunState.RUNNING, 2, None, None)


def test_finish_run_refuses_the_running_state(memory: InMemoryBackend) -> None:
    memory.start_run(workflow_id="wf", workflow="w", input=None, max_attempts=1)
    with pytest.raises(ValueError, match="running"):
        memory.finish_run("wf", 1, RunState.RUNNING)


def test_close_drops_everything_and_wakes_listeners(memory: InMemoryBackend) -> None:
    _insert(memory)
    listener = memory.listener()

    memory.close()

    assert listener.wait(5.0) == set()  # returns at once: the backend is gone
    with pytest.raises(BackendError, match="closed"):
        memory.list_jobs()
    with pytest.raises(BackendError, match="closed"):
        memory.migrate()


def test_a_naive_clock_is_an_error() -> None:
    class NaiveClock(FakeClock):
        def now(self) -> datetime:
            return datetime(2026, 1, 1)

    backend = InMemoryBackend(clock=NaiveClock())
    with pytest.raises(BackendError, match="naive"):
        backend.insert_jobs([NewJob(worker=WORKER)])


def test_migrate_and_check_schema_have_nothing_to_do(memory: InMemoryBackend) -> None:
    memory.migrate()
    memory.migrate()
    memory.check_schema()
    assert memory.jobs() == []


def test_claim_skips_jobs_that_left_the_available_state(memory: InMemoryBackend) -> None:
    top = _insert(memory, priority=9)
    middle = _insert(memory, priority=5)
    bottom = _insert(memory, priority=1)
    memory.cancel_job(top)
    memory.register_instance(InstanceInfo(instance_id="node-a"))
    (first,) = memory.claim_jobs("default", "node-a", 1)
    assert first.id == middle
    memory.mark_offline("node-a")
    memory.rescue_stale(stale_after=60)  # middle is available again, same place in line

    claimed = memory.claim_jobs("default", "node-b", 10)

    assert [job.id for job in claimed] == [middle, bottom]
    assert memory.claim_jobs("default", "node-b", 10) == []
