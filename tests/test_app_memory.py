"""The Pgflow app on InMemoryBackend: producers, leader duties, cancellation, cron, recovery.

Real threads and the real clock, with short intervals; every wait is bounded and no test
asserts how long something took.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

import pgflow
from pgflow.app import Pgflow
from pgflow.clock import FakeClock
from pgflow.records import InstanceInfo, Job, JobState
from pgflow.runtime.cron import CronEntry, CronScheduler, parse_cron
from pgflow.runtime.producer import Producer
from pgflow.worker import Worker
from pgflow_backends.memory import InMemoryBackend
from tests.waiting import wait_for

FAST: dict[str, Any] = {"poll_interval": 0.05, "heartbeat_interval": 0.1, "stale_timeout": 1.0,
        "stage_interval": 0.05, "shutdown_timeout": 5.0}  # fmt: skip

RAN: list[tuple[str, Any]] = []
RAN_LOCK = threading.Lock()


def ran(tag: str, value: Any) -> None:
    with RAN_LOCK:
        RAN.append((tag, value))


def ran_values(tag: str) -> list[Any]:
    with RAN_LOCK:
        return [value for t, value in RAN if t == tag]


class Record(Worker, queue="solo"):
    def perform(self, job: Job) -> Any:
        ran("record", job.args["n"])


class Noop(Worker):
    def perform(self, job: Job) -> Any:
        return None


class AlwaysFails(Worker, max_attempts=3, backoff=pgflow.Backoff(base=0.02, factor=1.0)):
    def perform(self, job: Job) -> Any:
        raise RuntimeError(f"failure {job.attempt}")


class WhenDidIRun(Worker):
    def perform(self, job: Job) -> Any:
        ran("when", (job.id, datetime.now(UTC), job.scheduled_at))


class AsyncDouble(Worker):
    async def perform(self, job: Job) -> Any:
        await asyncio.sleep(0.001)
        ran("async", job.args["n"] * 2)


GATE = threading.Event()


class Blocks(Worker):
    """Runs until GATE opens or cancellation is requested; records which happened."""

    def perform(self, job: Job) -> Any:
        ran("blocks-started", job.id)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if GATE.is_set():
                ran("blocks-finished", job.id)
                return
            if self.cancelled.wait(0.01):
                ran("blocks-cancelled", job.id)
                raise RuntimeError("cancelled on request")
        raise TimeoutError("test gate never opened")


class AsyncBlocks(Worker):
    async def perform(self, job: Job) -> Any:
        ran("async-blocks-started", job.id)
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            ran("async-blocks-cancelled", job.id)
            raise


@pytest.fixture(autouse=True)
def _reset() -> Iterator[None]:
    with RAN_LOCK:
        RAN.clear()
    GATE.clear()
    yield
    GATE.set()


@pytest.fixture
def memory() -> InMemoryBackend:
    return InMemoryBackend()


@pytest.fixture
def app_factory(memory: InMemoryBackend) -> Iterator[Callable[..., Pgflow]]:
    apps: list[Pgflow] = []

    def make(**options: Any) -> Pgflow:
        merged = {**FAST, **options}
        app = Pgflow(memory, **merged)
        apps.append(app)
        return app

    yield make
    GATE.set()
    for app in apps:
        app.stop(timeout=5)


def states(backend: InMemoryBackend) -> dict[JobState, int]:
    counts: dict[JobState, int] = {}
    for row in backend.job_counts():
        counts[row.state] = counts.get(row.state, 0) + row.count
    return counts


def test_drains_jobs_and_reports_status(
    app_factory: Callable[..., Pgflow], memory: InMemoryBackend
) -> None:
    app = app_factory(instance_id="drainer", queues={"default": 4})
    app.insert([Noop.new({"i": i}) for i in range(300)])
    app.start()
    assert wait_for(lambda: states(memory).get(JobState.COMPLETED) == 300)
    status = app.status()
    assert status.count(state=JobState.COMPLETED) == 300
    assert {row.reserved_by for row in status.jobs} == {"drainer"}
    assert [i.instance_id for i in status.instances] == ["drainer"]
    assert app.stop(timeout=5)
    assert memory.list_instances()[0].status == "offline"


def test_highest_priority_runs_first(app_factory: Callable[..., Pgflow]) -> None:
    app = app_factory(queues={"solo": 1})
    app.insert([Record.new({"n": n}, priority=n) for n in (1, 5, 3, 9, 0)])
    app.start()
    assert wait_for(lambda: len(ran_values("record")) == 5)
    assert ran_values("record") == [9, 5, 3, 1, 0]


def test_scheduled_job_does_not_run_early(
    app_factory: Callable[..., Pgflow], memory: InMemoryBackend
) -> None:
    app = app_factory()
    app.start()
    [job] = [app.insert(WhenDidIRun.new(schedule_in=0.3))]
    assert job.state is JobState.SCHEDULED
    assert wait_for(lambda: len(ran_values("when")) == 1)
    [(job_id, started, scheduled_at)] = ran_values("when")
    assert job_id == job.id
    assert started >= scheduled_at


def test_retry_then_discard_through_the_app(
    app_factory: Callable[..., Pgflow], memory: InMemoryBackend
) -> None:
    app = app_factory()
    job = app.insert(AlwaysFails.new())
    app.start()

    def discarded() -> bool:
        stored = memory.get_job(job.id)
        return stored is not None and stored.state is JobState.DISCARDED

    assert wait_for(discarded)
    stored = memory.get_job(job.id)
    assert stored is not None
    assert [e["message"] for e in stored.errors] == ["failure 1", "failure 2", "failure 3"]


def test_async_perform_runs_on_the_event_loop(app_factory: Callable[..., Pgflow]) -> None:
    app = app_factory()
    app.insert([AsyncDouble.new({"n": n}) for n in range(20)])
    app.start()
    assert wait_for(lambda: len(ran_values("async")) == 20)
    assert sorted(ran_values("async")) == [n * 2 for n in range(20)]


def test_cancel_waiting_and_running_jobs(
    app_factory: Callable[..., Pgflow], memory: InMemoryBackend
) -> None:
    app = app_factory(queues={"default": 1})
    waiting = app.insert(Noop.new(schedule_in=3600))
    cancelled = app.cancel(waiting.id)
    assert cancelled is not None and cancelled.state is JobState.CANCELLED
    running = app.insert(Blocks.new())
    app.start()
    assert wait_for(lambda: ran_values("blocks-started") == [running.id])
    app.cancel(running.id)

    def state_of(job_id: int) -> JobState | None:
        stored = memory.get_job(job_id)
        return None if stored is None else stored.state

    assert wait_for(lambda: state_of(running.id) is JobState.CANCELLED)
    assert ran_values("blocks-cancelled") == [running.id]


def test_cancellation_requested_elsewhere_is_noticed_by_polling(
    app_factory: Callable[..., Pgflow], memory: InMemoryBackend
) -> None:
    """Another process asks (the backend flag only): the producer's poll finds it."""
    app = app_factory()
    job = app.insert(AsyncBlocks.new())
    app.start()
    assert wait_for(lambda: ran_values("async-blocks-started") == [job.id])
    memory.cancel_job(job.id)  # not app.cancel: no local shortcut
    assert wait_for(lambda: ran_values("async-blocks-cancelled") == [job.id])
    assert wait_for(lambda: (memory.get_job(job.id) or job).state is JobState.CANCELLED)


def test_graceful_stop_finishes_running_jobs_and_claims_no_more(
    app_factory: Callable[..., Pgflow], memory: InMemoryBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    stopping = threading.Event()
    begin_stop = Producer.begin_stop

    def begin_stop_then_tell(self: Producer) -> None:
        begin_stop(self)
        stopping.set()

    monkeypatch.setattr(Producer, "begin_stop", begin_stop_then_tell)
    app = app_factory(queues={"default": 1}, instance_id="stopper")
    first = app.insert(Blocks.new())
    app.start()
    assert wait_for(lambda: ran_values("blocks-started") == [first.id])
    second = app.insert(Noop.new())
    drained: list[bool] = []
    stopper = threading.Thread(target=lambda: drained.append(app.stop(timeout=10)))
    stopper.start()
    assert stopping.wait(10)  # the producer was told to stop: from here a claim is the bug
    GATE.set()  # frees the only slot, which a wrongly written producer would refill
    stopper.join(15)
    assert drained == [True]  # the producer thread has ended: no claim can come later
    assert ran_values("blocks-finished") == [first.id]
    assert (memory.get_job(first.id) or first).state is JobState.COMPLETED
    assert (memory.get_job(second.id) or second).state is JobState.AVAILABLE
    assert memory.list_instances()[0].status == "offline"


def test_stop_timeout_interrupts_a_cooperative_job_and_records_a_retry(
    app_factory: Callable[..., Pgflow], memory: InMemoryBackend
) -> None:
    """A job that heeds `self.cancelled` reports within the abort window: retried at once."""
    app = app_factory(instance_id="impatient")
    job = app.insert(Blocks.new())
    app.start()
    assert wait_for(lambda: ran_values("blocks-started") == [job.id])
    assert app.stop(timeout=0.1) is False
    assert ran_values("blocks-cancelled") == [job.id]
    memory.stage_jobs()  # no rescue: the interrupted attempt was written by the instance
    stored = memory.get_job(job.id)
    assert stored is not None
    assert (stored.state, stored.attempt) == (JobState.AVAILABLE, 1)
    assert [e["kind"] for e in stored.errors] == ["pgflow.Shutdown"]


class IgnoresCancel(Worker):
    """Blocks until GATE opens, deaf to cancellation: nothing can interrupt it."""

    def perform(self, job: Job) -> Any:
        ran("deaf-started", job.id)
        if not GATE.wait(10):
            raise TimeoutError("test gate never opened")


def test_stop_timeout_leaves_a_job_that_ignores_cancel_to_the_rescue(
    app_factory: Callable[..., Pgflow], memory: InMemoryBackend
) -> None:
    app = app_factory(instance_id="impatient")
    job = app.insert(IgnoresCancel.new())
    app.start()
    assert wait_for(lambda: ran_values("deaf-started") == [job.id])
    assert app.stop(timeout=0.1) is False
    left = memory.get_job(job.id)
    assert left is not None
    assert (left.state, left.reserved_by, left.errors) == (JobState.EXECUTING, "impatient", ())
    assert memory.list_instances()[0].status == "offline"
    memory.rescue_stale(300)  # an offline instance's jobs are rescued whatever their age
    memory.stage_jobs()
    stored = memory.get_job(job.id)
    assert stored is not None
    assert (stored.state, stored.attempt) == (JobState.AVAILABLE, 1)
    assert [e["kind"] for e in stored.errors] == ["rescued"]


class CountsRefusedCampaigns(InMemoryBackend):
    """Counts, per instance, the lease acquisitions that were refused."""

    def __init__(self) -> None:
        super().__init__()
        self.refused: dict[str, int] = {}

    def acquire_leadership(self, instance_id: str, ttl: float) -> bool:
        held = super().acquire_leadership(instance_id, ttl)
        if not held:
            self.refused[instance_id] = self.refused.get(instance_id, 0) + 1
        return held


def test_one_leader_at_a_time_and_hand_over() -> None:
    backend = CountsRefusedCampaigns()
    first = Pgflow(backend, **{**FAST, "instance_id": "first"})
    second = Pgflow(backend, **{**FAST, "instance_id": "second"})
    try:
        first.start()
        assert wait_for(lambda: first.is_leader)
        second.start()
        # Campaigns that really happened and lost, while the first kept the lease.
        assert wait_for(lambda: backend.refused.get("second", 0) >= 3)
        assert first.is_leader and not second.is_leader
        first.stop(timeout=5)
        assert wait_for(lambda: second.is_leader)
    finally:
        first.stop(timeout=5)
        second.stop(timeout=5)


def test_jobs_of_a_dead_instance_are_rescued_by_the_leader(
    app_factory: Callable[..., Pgflow], memory: InMemoryBackend
) -> None:
    # A "dead" instance: registered, claimed a job, never heartbeats again.
    memory.register_instance(InstanceInfo(instance_id="ghost"))
    job = memory.insert_jobs([Noop.new()])[0]
    [claimed] = memory.claim_jobs("default", "ghost", 1)
    assert claimed.id == job.id
    app = app_factory(instance_id="rescuer", stale_timeout=0.5, heartbeat_interval=0.1)
    app.start()

    def done() -> bool:
        stored = memory.get_job(job.id)
        return stored is not None and stored.state is JobState.COMPLETED

    assert wait_for(done)
    stored = memory.get_job(job.id)
    assert stored is not None and stored.reserved_by == "rescuer" and stored.attempt == 2


def test_heartbeat_reregisters_an_instance_presumed_dead(
    app_factory: Callable[..., Pgflow], memory: InMemoryBackend
) -> None:
    app = app_factory(instance_id="lazarus")
    app.start()
    memory.mark_offline("lazarus")
    assert wait_for(lambda: memory.list_instances()[0].status == "online")


class Flaky:
    """Wraps a backend; while `down` is set every call raises, like a restarted database."""

    def __init__(self, inner: InMemoryBackend) -> None:
        self.inner = inner
        self.down = threading.Event()
        self.failures = 0

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if not callable(attr) or name in ("migrate", "check_schema", "close"):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            if self.down.is_set():
                self.failures += 1
                raise ConnectionError("database is restarting")
            return attr(*args, **kwargs)

        return call


def test_database_outage_is_survived(memory: InMemoryBackend) -> None:
    flaky = Flaky(memory)
    app = Pgflow(flaky, instance_id="survivor", queues={"default": 4}, **FAST)
    app.start()
    try:
        first = app.insert([Noop.new({"i": i}) for i in range(50)])
        assert wait_for(lambda: states(memory).get(JobState.COMPLETED) == 50)
        flaky.down.set()
        assert wait_for(lambda: flaky.failures >= 10)  # every thread met the outage
        flaky.down.clear()
        more = app.insert([Noop.new({"i": i}) for i in range(50, 100)])
        assert wait_for(lambda: states(memory).get(JobState.COMPLETED) == 100)
        assert len(first) + len(more) == 100
        assert flaky.failures > 0
        assert app.running
    finally:
        app.stop(timeout=5)


def test_unique_inserts_racing_from_threads(memory: InMemoryBackend) -> None:
    app = Pgflow(memory, instance_id="inserter")
    barrier = threading.Barrier(8)
    results: list[Job] = []
    lock = threading.Lock()

    def insert() -> None:
        barrier.wait()
        for _ in range(20):
            job = app.insert(Noop.new({"key": "same"}, unique=True))
            with lock:
                results.append(job)

    threads = [threading.Thread(target=insert) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert len(results) == 160
    assert len({job.id for job in results}) == 1
    assert sum(not job.conflict for job in results) == 1
    assert len(memory.list_jobs()) == 1


# --- cron ----------------------------------------------------------------------------------


class CronTask(Worker):
    def perform(self, job: Job) -> Any:
        ran("cron", job.meta.get("cron_slot"))


def test_cron_entries_are_validated() -> None:
    assert parse_cron([("*/5 * * * *", CronTask)]) == [CronEntry("*/5 * * * *", CronTask, {})]
    for bad in [("not cron", CronTask), ("* * * * * *", CronTask), ("* * * * *", object)]:
        with pytest.raises(pgflow.DefinitionError):
            parse_cron([bad])
    with pytest.raises(pgflow.DefinitionError):
        Pgflow(InMemoryBackend(), cron=[("*/5 * * * *", CronTask, ["args"])])


def test_cron_slots_with_a_fake_clock() -> None:
    scheduler = CronScheduler(parse_cron([("*/5 * * * *", CronTask, {"k": 1})]))
    at = datetime(2026, 3, 1, 12, 0, 2, tzinfo=UTC)
    assert len(scheduler.due(at)) == 1  # 12:00 is a slot
    assert scheduler.due(at.replace(minute=1)) == []  # 12:01 is not
    assert len(scheduler.due(at.replace(second=59))) == 1  # any time within its minute
    assert len(scheduler.due(at.replace(minute=5, second=0))) == 1


def test_each_cron_slot_is_enqueued_once_across_instances() -> None:
    clock = FakeClock(datetime(2026, 3, 1, 12, 0, 1, tzinfo=UTC))
    backend = InMemoryBackend(clock=clock)
    entries = parse_cron([("*/5 * * * *", CronTask, {"k": 1}), ("0 * * * *", CronTask)])
    schedulers = [CronScheduler(entries) for _ in range(4)]
    barrier = threading.Barrier(len(schedulers))

    def tick(scheduler: CronScheduler) -> None:
        barrier.wait()
        for _ in range(3):
            scheduler.tick(backend, clock.now())

    for minute in range(12):  # 12:00 .. 12:11, ticking at seconds 1, 30 and 59
        for second in (1, 30, 59):
            clock_time = datetime(2026, 3, 1, 12, minute, second, tzinfo=UTC)
            clock.advance((clock_time - clock.now()).total_seconds())
            threads = [threading.Thread(target=tick, args=(s,)) for s in schedulers]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(10)
    slots = sorted((job.meta["cron"], job.meta["cron_slot"]) for job in backend.list_jobs())
    assert slots == sorted(
        [("*/5 * * * *", f"2026-03-01T12:{m:02d}:00+00:00") for m in (0, 5, 10)]
        + [("0 * * * *", "2026-03-01T12:00:00+00:00")]
    )


def test_the_leader_runs_cron() -> None:
    clock = FakeClock(datetime(2026, 3, 1, 12, 0, 30, tzinfo=UTC))
    memory = InMemoryBackend(clock=clock)
    app = Pgflow(memory, cron=[("* * * * *", CronTask)], clock=clock, **FAST)
    app.start()
    try:
        assert wait_for(lambda: len(ran_values("cron")) == 1)
        clock.advance(40)  # 12:01:10, the next slot
        assert wait_for(lambda: len(ran_values("cron")) == 2)
        # The leader has ticked through both minutes: each slot ran once.
        assert ran_values("cron") == ["2026-03-01T12:00:00+00:00", "2026-03-01T12:01:00+00:00"]
        assert len(memory.list_jobs()) == 2
    finally:
        app.stop(timeout=5)


def test_constructor_validates_its_options(memory: InMemoryBackend) -> None:
    with pytest.raises(pgflow.DefinitionError, match="stale_timeout"):
        Pgflow(memory, heartbeat_interval=10, stale_timeout=5)
    with pytest.raises(pgflow.DefinitionError, match="instance"):
        Pgflow(memory, instance_id="has space")
    with pytest.raises(pgflow.DefinitionError, match="limit"):
        Pgflow(memory, queues={"default": 0})
    with pytest.raises(pgflow.DefinitionError):
        Pgflow(42)
    with pytest.raises(pgflow.DefinitionError, match=r"Worker\.new"):
        Pgflow(memory).insert(["nope"])  # type: ignore[list-item]


def test_instance_id_defaults_to_env_then_host_and_pid(
    memory: InMemoryBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INSTANCE_ID", "from-env")
    assert Pgflow(memory).instance_id == "from-env"
    monkeypatch.delenv("INSTANCE_ID")
    assert Pgflow(memory).instance_id.endswith(f"-{__import__('os').getpid()}")


def test_jobs_of_a_claim_whose_reply_was_lost_are_released(memory: InMemoryBackend) -> None:
    """The claim committed but the connection broke before the reply: no job may hang."""

    class LosesFirstReply(Flaky):
        lost = False

        def claim_jobs(
            self, queue: str, instance_id: str, limit: int, incarnation: str = ""
        ) -> list[Job]:
            jobs = self.inner.claim_jobs(queue, instance_id, limit, incarnation)
            if jobs and not self.lost:
                self.lost = True
                raise ConnectionError("server closed the connection unexpectedly")
            return jobs

    backend = LosesFirstReply(memory)
    job = memory.insert_jobs([Noop.new()])[0]
    app = Pgflow(backend, instance_id="unlucky", **FAST)
    app.start()
    try:
        assert wait_for(lambda: (memory.get_job(job.id) or job).state is JobState.COMPLETED)
        stored = memory.get_job(job.id)
        assert stored is not None and stored.attempt == 2
        assert [e["kind"] for e in stored.errors] == ["pgflow.LostClaim"]
    finally:
        app.stop(timeout=5)


RESCUE_PASSES: list[float] = []  # one entry per rescue pass of the leader under test


class CountsRescues:
    """Wraps a backend; notes each rescue pass in RESCUE_PASSES."""

    def __init__(self, inner: InMemoryBackend) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def rescue_stale(self, stale_timeout: float) -> Any:
        report = self.inner.rescue_stale(stale_timeout)
        RESCUE_PASSES.append(time.monotonic())
        return report


class BurnsCpu(Worker):
    """Busy, without sleeping or releasing anything on purpose, until `passes` more rescue
    passes have run: each one would have found the instance dead had its heartbeat stalled."""

    def perform(self, job: Job) -> Any:
        until = len(RESCUE_PASSES) + int(job.args["passes"])
        deadline = time.monotonic() + 20
        spins = 0
        while len(RESCUE_PASSES) < until:
            spins += 1
            if time.monotonic() > deadline:
                raise TimeoutError("the leader ran no rescue passes")
        return spins


def test_a_cpu_bound_job_does_not_make_its_instance_look_dead(memory: InMemoryBackend) -> None:
    RESCUE_PASSES.clear()
    options = {**FAST, "heartbeat_interval": 0.1, "stale_timeout": 0.5, "rescue_interval": 0.5}
    app = Pgflow(CountsRescues(memory), instance_id="busy", **options)
    job = app.insert(BurnsCpu.new({"passes": 3}))  # the last pass comes over 1 s into the job
    app.start()
    try:
        assert wait_for(lambda: (memory.get_job(job.id) or job).state is JobState.COMPLETED, 30)
    finally:
        app.stop(timeout=5)
    stored = memory.get_job(job.id)
    assert stored is not None and stored.attempt == 1  # never rescued meanwhile
    assert stored.errors == ()


def test_a_rescue_counts_as_an_attempt(
    app_factory: Callable[..., Pgflow], memory: InMemoryBackend
) -> None:
    """A job whose every attempt kills its instance ends discarded, not in a loop."""
    memory.register_instance(InstanceInfo(instance_id="crashed"))
    job = memory.insert_jobs([Noop.new(max_attempts=1)])[0]
    assert memory.claim_jobs("default", "crashed", 1)[0].id == job.id
    app = app_factory(instance_id="janitor", stale_timeout=0.5, heartbeat_interval=0.1)
    app.start()
    assert wait_for(lambda: (memory.get_job(job.id) or job).state is JobState.DISCARDED)


def test_finished_jobs_are_pruned(
    app_factory: Callable[..., Pgflow], memory: InMemoryBackend
) -> None:
    app = app_factory(prune_after=0.2, prune_interval=0.1)
    app.insert([Noop.new() for _ in range(10)])
    kept = app.insert(Noop.new(schedule_in=3600))
    app.start()
    assert wait_for(lambda: [job.id for job in memory.list_jobs()] == [kept.id])


def test_start_waits_for_the_database_and_stop_interrupts_it(memory: InMemoryBackend) -> None:
    flaky = Flaky(memory)
    flaky.down.set()
    app = Pgflow(flaky, instance_id="patient", **FAST)
    starter = threading.Thread(target=app.start)
    starter.start()
    assert wait_for(lambda: flaky.failures >= 2)
    assert not app.running
    app.stop(timeout=1)
    starter.join(5)
    assert not starter.is_alive() and not app.running
    flaky.down.clear()
    app.start()  # a later start registers and serves normally
    try:
        job = app.insert(Noop.new())
        assert wait_for(lambda: (memory.get_job(job.id) or job).state is JobState.COMPLETED)
    finally:
        app.stop(timeout=5)
