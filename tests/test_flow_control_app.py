"""Flow control in the app (issue 12), on the memory backend: `queues=` taking pgflow.Queue,
the CLI's per-queue syntax and `pgflow queue pause|resume`, producers claiming through their
queue's shape, pause and resume, RateLimited, and what status shows.

Real threads and the real clock with short intervals where an app runs; every wait is
bounded (tests.waiting) and no test asserts how long something took.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from click.testing import CliRunner

import pgflow
import pgflow.testing
from pgflow import cli
from pgflow.app import Pgflow
from pgflow.clock import FakeClock
from pgflow.errors import DefinitionError
from pgflow.queue_config import Queue, partition_of, published, read_published
from pgflow.records import InstanceInfo, Job, JobState
from pgflow.worker import Worker
from pgflow_backends.memory import InMemoryBackend
from tests.waiting import wait_or_fail

FAST: dict[str, Any] = {"poll_interval": 0.05, "heartbeat_interval": 0.1, "stale_timeout": 1.0,
        "stage_interval": 0.05, "shutdown_timeout": 5.0}  # fmt: skip

LOCK = threading.Lock()
NOW_RUNNING = 0
MOST_RUNNING = 0
STARTED: list[int] = []


def _reset() -> None:
    global NOW_RUNNING, MOST_RUNNING
    with LOCK:
        NOW_RUNNING = MOST_RUNNING = 0
        STARTED.clear()


class Counted(Worker, queue="fc-global"):
    """Counts how many of its kind run at once (the ledger the global limit is read from)."""

    def perform(self, job: Job) -> None:
        global NOW_RUNNING, MOST_RUNNING
        with LOCK:
            NOW_RUNNING += 1
            MOST_RUNNING = max(MOST_RUNNING, NOW_RUNNING)
            STARTED.append(job.id)
        time.sleep(0.03)
        with LOCK:
            NOW_RUNNING -= 1


class Paused(Worker, queue="fc-paused"):
    def perform(self, job: Job) -> None:
        with LOCK:
            STARTED.append(job.id)


class Limited(Worker, queue="fc-rate"):
    """Rate limited by its provider on its first attempt, then done."""

    def perform(self, job: Job) -> str:
        if job.args.get("limited") and not STARTED.count(job.id):
            with LOCK:
                STARTED.append(job.id)
            raise pgflow.RateLimited(30.0)
        return "done"


class BadRetryAfter(Worker, queue="fc-rate", max_attempts=1):
    def perform(self, job: Job) -> None:
        raise pgflow.RateLimited(0)


@pytest.fixture(autouse=True)
def _fresh_ledger(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    _reset()
    for name in ("PGFLOW_URL", "DATABASE_URL", "INSTANCE_ID", "PGFLOW_LOG_LEVEL"):
        monkeypatch.delenv(name, raising=False)
    yield
    # The CLI configures the "pgflow" logger; leave it as the other tests expect it.
    root = logging.getLogger("pgflow")
    for handler in list(root.handlers):
        if getattr(handler, "_pgflow_cli", False):
            root.removeHandler(handler)
    root.propagate = True
    root.setLevel(logging.NOTSET)


@pytest.fixture
def backend() -> Iterator[InMemoryBackend]:
    opened = InMemoryBackend()
    yield opened
    opened.close()


# -- configuration ---------------------------------------------------------------------------


def test_queues_take_a_queue_or_a_limit(backend: InMemoryBackend) -> None:
    llm = Queue(limit=20, global_limit=8, rate_limit=(60, 60.0), partition_by="tenant_id")
    app = Pgflow(backend, queues={"llm": llm, "default": 10})
    assert app.queues == {"llm": 20, "default": 10}  # name -> this instance's limit, as ever
    assert app.queue_options == {"llm": llm, "default": Queue(limit=10)}


@pytest.mark.parametrize(
    ("queues", "problem"),
    [
        ({"llm": 0}, "queue 'llm' limit must be a positive integer or a pgflow.Queue, got 0"),
        ({"llm": "20"}, "queue 'llm' limit must be a positive integer or a pgflow.Queue"),
        ({"llm": True}, "queue 'llm' limit must be a positive integer"),
        ({"no spaces": 1}, "invalid queue name 'no spaces'"),
        ({}, "queues must be a non-empty dict"),
    ],
)
def test_bad_queues_are_refused_naming_the_queue(
    backend: InMemoryBackend, queues: dict[str, Any], problem: str
) -> None:
    with pytest.raises(DefinitionError, match=problem):
        Pgflow(backend, queues=queues)


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ({"global_limit": 0}, "global_limit must be an integer >= 1, got 0"),
        ({"rate_limit": (10, 0)}, "rate_limit's period must be > 0 seconds, got 0"),
        ({"partition_limit": 2}, "partition_limit needs partition_by"),
        ({"partition_by": "tenant id"}, "partition_by must name a key of the jobs' args"),
    ],
)
def test_bad_queue_options_name_the_field(options: dict[str, Any], problem: str) -> None:
    with pytest.raises(DefinitionError, match=problem):
        Queue(**options)


def test_instances_publish_their_queues_options(backend: InMemoryBackend) -> None:
    shaped = Queue(limit=4, global_limit=2, rate_limit=(60, 60.0))
    app = Pgflow(backend, queues={"fc-global": shaped, "default": 3}, **FAST)
    app.start()
    try:
        (instance,) = backend.list_instances()
    finally:
        app.stop()
    # A plain queue stays an int (what readers before issue 12 expect); a shaped one is an
    # object of its options, read back into the same Queue.
    assert instance.queues == {
        "fc-global": {"limit": 4, "global_limit": 2, "rate_limit": [60, 60.0]},
        "default": 3,
    }
    assert read_published(instance.queues["fc-global"]) == shaped
    assert read_published(instance.queues["default"]) == Queue(limit=3)
    assert read_published({"limit": 0}) is None  # unreadable: shown as unknown, not fatal
    assert read_published("twenty") is None


def test_published_options_round_trip() -> None:
    full = Queue(
        limit=20,
        global_limit=8,
        rate_limit=(60, 60.0),
        partition_by="tenant_id",
        partition_limit=2,
        partition_rate_limit=(10, 1.0),
    )
    assert read_published(json.loads(json.dumps(published(full)))) == full
    assert published(Queue(limit=7)) == 7


class _ShapeSpy(InMemoryBackend):
    """Records the `shape` each claim passed."""

    def __init__(self) -> None:
        super().__init__()
        self.shapes: dict[str, set[Queue | None]] = {}

    def claim_jobs(self, queue: str, *args: Any, **kwargs: Any) -> list[Job]:
        self.shapes.setdefault(queue, set()).add(kwargs.get("shape"))
        return super().claim_jobs(queue, *args, **kwargs)


def test_producers_claim_through_their_queues_shape() -> None:
    spy = _ShapeSpy()
    shaped = Queue(limit=4, global_limit=2)
    app = Pgflow(spy, queues={"fc-global": shaped, "plain": Queue(limit=3)}, **FAST)
    app.start()
    try:
        wait_or_fail(lambda: {"fc-global", "plain"} <= set(spy.shapes), "both queues claiming")
    finally:
        app.stop()
        spy.close()
    assert spy.shapes["fc-global"] == {shaped}
    assert spy.shapes["plain"] == {None}  # a plain queue keeps today's claim


def test_partition_of_reads_jobs_and_task_envelopes() -> None:
    assert partition_of({"tenant_id": "acme"}, "tenant_id", False) == "acme"
    assert partition_of({"tenant_id": 7}, "tenant_id", False) == "7"
    assert partition_of({"tenant_id": None}, "tenant_id", False) == ""
    assert partition_of({}, "tenant_id", False) == ""
    task = {"args": [{"tenant_id": "acme"}], "kwargs": {}}
    assert partition_of(task, "tenant_id", True) == "acme"
    by_input = {"args": [], "kwargs": {"input": {"tenant_id": "beta"}}}
    assert partition_of(by_input, "tenant_id", True) == "beta"
    assert partition_of({"args": [5], "kwargs": {}}, "tenant_id", True) == ""


# -- the CLI ---------------------------------------------------------------------------------


def test_cli_queues_take_the_per_queue_syntax() -> None:
    spec = "default=10,llm=20:global=8:rate=60/60s:partition=tenant_id:per_partition=2:prate=10/1s"
    assert cli.parse_queues(spec) == {
        "default": 10,
        "llm": Queue(
            limit=20,
            global_limit=8,
            rate_limit=(60, 60.0),
            partition_by="tenant_id",
            partition_limit=2,
            partition_rate_limit=(10, 1.0),
        ),
    }
    assert cli.parse_queues("llm=:global=2") == {"llm": Queue(limit=10, global_limit=2)}
    assert cli.parse_queues("a:b=3:rate=5/1m") == {"a:b": Queue(limit=3, rate_limit=(5, 60.0))}


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ("llm=20:glob=8", "queue 'llm': 'glob=8' is not one of global=..."),
        ("llm=20:rate=60", "queue 'llm': rate='60' is not ALLOWED/PERIOD"),
        ("llm=20:global=0", "queue 'llm': global_limit must be an integer >= 1, got 0"),
        ("llm=0:global=2", "the limit of queue 'llm' must be a positive integer, got '0'"),
        ("llm=20:per_partition=2", "queue 'llm': partition_limit needs partition_by"),
        ("llm=20:global=2:global=3", "queue 'llm': global= is given twice"),
        ("ok=2,llm=x:global=2", "the limit of queue 'llm' must be a positive integer"),
    ],
)
def test_bad_per_queue_syntax_names_the_queue_and_the_part(spec: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem.replace(".", r"\.").replace("'", "'")):
        cli.parse_queues(spec)
    result = CliRunner().invoke(cli.cli, ["worker", "--url", "memory://", "--queues", spec])
    assert result.exit_code == 2
    assert "--queues" in result.output
    assert "queue 'llm'" in result.output


class _SharedMemory(InMemoryBackend):
    """One store for every command of a test (a memory:// URL opens a new one each time)."""

    def close(self) -> None:
        pass


@pytest.fixture
def shared(monkeypatch: pytest.MonkeyPatch) -> Iterator[_SharedMemory]:
    store = _SharedMemory()
    monkeypatch.setattr(cli, "open_backend", lambda url: store)
    yield store
    InMemoryBackend.close(store)


def test_cli_pauses_and_resumes_a_queue(shared: _SharedMemory) -> None:
    runner = CliRunner()
    shared.insert_jobs([Paused.new({})])
    paused = runner.invoke(cli.cli, ["queue", "pause", "fc-paused", "--url", "memory://"])
    assert paused.exit_code == 0, paused.output
    assert "queue 'fc-paused' paused on every instance" in paused.output
    assert "1 available job(s) wait" in paused.output
    assert shared.claim_jobs("fc-paused", "x", 10) == []

    as_json = runner.invoke(cli.cli, ["queue", "resume", "fc-paused", "--json", "--url", "m://"])
    assert as_json.exit_code == 0, as_json.output
    data = json.loads(as_json.output)
    assert (data["queue"], data["paused"], data["state"], data["available"]) == (
        "fc-paused",
        False,
        "active",
        1,
    )
    assert len(shared.claim_jobs("fc-paused", "x", 10)) == 1

    paused_json = runner.invoke(cli.cli, ["queue", "pause", "fc-paused", "--json", "--url", "m://"])
    assert json.loads(paused_json.output)["paused"] is True
    resumed = runner.invoke(cli.cli, ["queue", "resume", "fc-paused", "--url", "memory://"])
    assert "queue 'fc-paused' resumed: 0 available job(s)" in resumed.output


def test_cli_queue_command_refuses_a_bad_name(shared: _SharedMemory) -> None:
    result = CliRunner().invoke(cli.cli, ["queue", "pause", "no way", "--url", "memory://"])
    assert result.exit_code == 2
    assert "invalid queue name 'no way'" in result.output
    assert shared.queue_controls() == []


def test_app_pause_queue_validates_the_name(backend: InMemoryBackend) -> None:
    app = Pgflow(backend)
    with pytest.raises(DefinitionError, match="invalid queue name"):
        app.pause_queue("no way")
    with pytest.raises(DefinitionError, match="invalid queue name"):
        app.resume_queue("")


# -- a running app ---------------------------------------------------------------------------


def test_a_global_limit_of_two_holds_with_four_slots(backend: InMemoryBackend) -> None:
    app = Pgflow(backend, queues={"fc-global": Queue(limit=4, global_limit=2)}, **FAST)
    jobs = app.insert([Counted.new({"n": n}) for n in range(12)])
    app.start()
    try:
        wait_or_fail(
            lambda: all(app.get_job(job.id).state is JobState.COMPLETED for job in jobs),  # type: ignore[union-attr]
            "every job completed",
        )
    finally:
        app.stop()
    assert len(STARTED) == 12
    assert MOST_RUNNING == 2  # reached, never passed


def test_two_instances_share_one_global_limit(backend: InMemoryBackend) -> None:
    options = Queue(limit=3, global_limit=2)
    apps = [
        Pgflow(backend, queues={"fc-global": options}, instance_id=f"fc-{n}", **FAST)
        for n in range(2)
    ]
    jobs = apps[0].insert([Counted.new({"n": n}) for n in range(12)])
    for app in apps:
        app.start()
    try:
        wait_or_fail(
            lambda: all(apps[0].get_job(job.id).state is JobState.COMPLETED for job in jobs),  # type: ignore[union-attr]
            "every job completed",
        )
    finally:
        for app in apps:
            app.stop()
    assert MOST_RUNNING <= 2


STARTS: list[datetime] = []


class Stamped(Worker, queue="fc-window"):
    """Keeps its claim time: the start the rate window counted."""

    def perform(self, job: Job) -> None:
        assert job.attempted_at is not None
        with LOCK:
            STARTS.append(job.attempted_at)


def test_a_rate_limit_holds_in_every_window(backend: InMemoryBackend) -> None:
    STARTS.clear()
    window = 0.3
    options = Queue(limit=10, rate_limit=(4, window))
    apps = [
        Pgflow(backend, queues={"fc-window": options}, instance_id=f"fc-{n}", **FAST)
        for n in range(2)
    ]
    apps[0].insert([Stamped.new({"n": n}) for n in range(14)])
    for app in apps:
        app.start()
    try:
        wait_or_fail(lambda: len(STARTS) == 14, "every job started")
    finally:
        for app in apps:
            app.stop()
    starts = sorted(STARTS)
    for index, start in enumerate(starts):
        within = [t for t in starts[index:] if (t - start).total_seconds() < window]
        assert len(within) <= 4, (start, within)


def test_pause_stops_starts_until_resume(backend: InMemoryBackend) -> None:
    app = Pgflow(backend, queues={"fc-paused": 5}, **FAST)
    app.start()
    try:
        app.pause_queue("fc-paused")
        first = app.insert(Paused.new({}))
        # Give the producer a chance to (wrongly) claim: woken by the insert, then polling.
        time.sleep(0.3)
        assert STARTED == []
        assert app.get_job(first.id).state is JobState.AVAILABLE  # type: ignore[union-attr]
        assert app.status().queue("fc-paused").state == "paused"  # type: ignore[union-attr]
        app.resume_queue("fc-paused")
        wait_or_fail(lambda: [first.id] == STARTED, "the job to start after resume")
    finally:
        app.stop()


def test_a_paused_shaped_queue_does_not_spin(backend: InMemoryBackend) -> None:
    """Claims returning nothing back off to the poll interval, whatever the queue's shape."""
    calls: list[float] = []

    class Counting(InMemoryBackend):
        def claim_jobs(self, queue: str, *args: Any, **kwargs: Any) -> list[Job]:
            calls.append(time.monotonic())
            return super().claim_jobs(queue, *args, **kwargs)

    store = Counting()
    store.pause_queue("fc-paused")
    store.insert_jobs([Paused.new({})])
    options = {"poll_interval": 0.2, "heartbeat_interval": 0.1, "stale_timeout": 1.0}
    app = Pgflow(store, queues={"fc-paused": Queue(limit=2, global_limit=1)}, **options)
    app.start()
    try:
        time.sleep(1.0)
    finally:
        app.stop()
        store.close()
    assert STARTED == []
    # A busy loop would claim thousands of times; backing off from 0.05 s to 0.2 s: ~8.
    assert 1 <= len(calls) <= 20, len(calls)


def test_rate_limited_snoozes_without_an_attempt_and_holds_the_queue(
    backend: InMemoryBackend, caplog: pytest.LogCaptureFixture
) -> None:
    app = Pgflow(backend, queues={"fc-rate": 2}, **FAST)
    job = app.insert(Limited.new({"limited": True}))
    caplog.set_level(logging.INFO, logger="pgflow.runtime")
    app.start()
    try:
        wait_or_fail(
            lambda: app.get_job(job.id).state is JobState.SCHEDULED,  # type: ignore[union-attr]
            "the job snoozed",
        )
    finally:
        app.stop()
    stored = app.get_job(job.id)
    assert stored is not None and stored.attempt == 0 and stored.errors == ()
    delay = (stored.scheduled_at - backend.clock.now()).total_seconds()
    assert 25 < delay <= 30
    (control,) = backend.queue_controls()
    assert control.queue == "fc-rate" and control.hold_until is not None
    assert control.partition_holds == {}
    assert 25 < (control.hold_until - backend.clock.now()).total_seconds() <= 30
    record = next(r for r in caplog.records if "rate limited" in r.getMessage())
    assert (record.job_id, record.queue, record.retry_after) == (job.id, "fc-rate", 30.0)  # type: ignore[attr-defined]
    assert record.partition is None  # type: ignore[attr-defined]


def test_rate_limited_on_a_partitioned_queue_holds_the_partition() -> None:
    clock = FakeClock()
    options = Queue(limit=5, partition_by="tenant")
    with pgflow.testing.manual(clock=clock, queues={"fc-rate": options}) as t:
        t.insert(Limited.new({"limited": True, "tenant": "acme"}))
        other = t.insert(Limited.new({"tenant": "beta"}))
        result = t.drain()
        assert (result.snoozed, result.completed) == (1, 1)
        (control,) = t.backend.queue_controls()
        assert control.hold_until is None
        assert control.partition_holds == {"acme": clock.now() + timedelta(seconds=30)}
        assert t.app.get_job(other.id).state is JobState.COMPLETED  # type: ignore[union-attr]


def test_a_bad_retry_after_is_an_error_of_the_job() -> None:
    with pgflow.testing.manual(queues={"fc-rate": 2}) as t:
        job = t.insert(BadRetryAfter.new({}))
        result = t.drain(raise_on_failure=False)
        assert result.discarded == 1
        stored = t.app.get_job(job.id)
        assert stored is not None
        assert "must be a number of seconds > 0, got 0" in stored.errors[0]["message"]
        assert t.backend.queue_controls() == []


# -- the harness -----------------------------------------------------------------------------


def test_harness_drain_claims_nothing_from_a_paused_queue() -> None:
    with pgflow.testing.manual(queues={"fc-paused": 2}) as t:
        t.app.pause_queue("fc-paused")
        t.insert(Paused.new({}))
        assert t.drain().total == 0
        t.assert_enqueued(worker=Paused, count=1)
        t.app.resume_queue("fc-paused")
        assert t.drain().completed == 1


def test_harness_rate_limited_holds_the_queue_on_the_fake_clock() -> None:
    with pgflow.testing.manual(queues={"fc-rate": 2}) as t:
        limited = t.insert(Limited.new({"limited": True}))
        assert t.drain().snoozed == 1
        waiting = t.insert(Limited.new({}))
        assert t.drain().total == 0  # the queue is held for 30 s of the FakeClock
        assert t.app.get_job(limited.id).attempt == 0  # type: ignore[union-attr]
        assert t.app.status().queue("fc-rate").state == "held"  # type: ignore[union-attr]
        result = t.drain(with_scheduled=True)  # time passes: the hold ends with the snooze
        assert result.completed == 2
        assert t.app.get_job(waiting.id).state is JobState.COMPLETED  # type: ignore[union-attr]


# -- status ----------------------------------------------------------------------------------


def test_status_shows_limits_use_and_state(shared: _SharedMemory) -> None:
    options = Queue(limit=4, global_limit=2, rate_limit=(60, 60.0), partition_by="tenant")
    # Another instance serves the queue and runs one of its jobs; this app (not started)
    # reads the status.
    shared.register_instance(
        InstanceInfo("elsewhere", queues={"fc-global": published(options)})  # type: ignore[dict-item]
    )
    app = Pgflow(shared, queues={"fc-global": 4, "default": 3}, **FAST)
    shared.insert_jobs([Counted.new({"tenant": t}) for t in ("acme", "acme", "beta")])
    shared.claim_jobs("fc-global", "elsewhere", 1, shape=options)
    app.pause_queue("fc-global")
    shared.hold_queue("default", 60.0)
    status = app.status()
    flow = status.queue("fc-global")
    assert flow is not None
    assert flow.options == ((options, 1),)  # what the serving instance published wins
    assert (flow.stats.executing, flow.stats.available, flow.stats.rate_used) == (1, 2, 1)
    assert flow.state == "paused"
    assert status.queue("default").state == "held"  # type: ignore[union-attr]
    assert status.queue("default").options == ((Queue(limit=3), 0),)  # type: ignore[union-attr]

    text = CliRunner().invoke(cli.cli, ["status", "--url", "memory://"])
    assert text.exit_code == 0, text.output
    lines = text.output.splitlines()
    queues_table = lines[lines.index("Queues (2)") :]
    row = next(line for line in queues_table if line.startswith("fc-global "))
    assert row.split()[:7] == [
        "fc-global",
        "4:global=2:rate=60/60s:partition=tenant",
        "1",
        "2",
        "1/60",
        "per",
        "60s",
    ]
    assert row.rstrip().endswith("paused")
    assert "Top partitions by backlog" in lines
    assert any(line.split()[:4] == ["fc-global", '"acme"', "1", "1"] for line in lines)
    assert any(line.startswith("default ") and "held until" in line for line in queues_table)
    assert any(
        line.startswith("elsewhere ")
        and " fc-global=4:global=2:rate=60/60s:partition=tenant " in line
        for line in lines
    )

    as_json = CliRunner().invoke(cli.cli, ["status", "--json", "--url", "memory://"])
    data = {q["queue"]: q for q in json.loads(as_json.output)["queues"]}
    assert data["fc-global"]["limits"] == [
        {
            "options": "4:global=2:rate=60/60s:partition=tenant",
            "published": published(options),
            "instances": 1,
        }
    ]
    assert (data["fc-global"]["paused"], data["fc-global"]["rate_used"]) == (True, 1)
    assert data["fc-global"]["partitions"][0] == {
        "partition": "acme",
        "available": 1,
        "executing": 1,
    }
    assert data["default"]["state"] == "held"


FLOW_CALLS: list[str] = []
rate_flow = pgflow.Flow("fc_rate_flow", queue="fc-rate")


@rate_flow.step
def ask(input: dict[str, Any]) -> str:
    FLOW_CALLS.append(input["tenant"])
    if len(FLOW_CALLS) == 1:
        raise pgflow.RateLimited(5.0)
    return f"answer for {input['tenant']}"


@rate_flow.step(depends_on=["ask"])
def store(ask: str) -> str:
    return ask.upper()


def test_rate_limited_in_a_flow_step_holds_the_runs_partition() -> None:
    FLOW_CALLS.clear()
    clock = FakeClock()
    options = Queue(limit=2, partition_by="tenant")
    with pgflow.testing.manual(clock=clock, queues={"fc-rate": options}) as t:
        handle = t.app.start_run(rate_flow, {"tenant": "acme"})
        assert t.drain().snoozed == 1
        (control,) = t.backend.queue_controls()
        assert control.partition_holds == {"acme": clock.now() + timedelta(seconds=5)}
        t.assert_step(handle.workflow_id, "ask", state="started", attempts=0)
        assert t.drain(with_scheduled=True).completed == 2
        t.assert_run(handle.workflow_id, state="completed", output={"store": "ANSWER FOR ACME"})
        assert FLOW_CALLS == ["acme", "acme"]


WORKFLOW_CALLS: list[int] = []
limited_chain = pgflow.Flow("fc_limited_chain")


@limited_chain.step
def call_provider(input: dict[str, Any]) -> str:
    WORKFLOW_CALLS.append(1)
    if len(WORKFLOW_CALLS) == 1:
        raise pgflow.RateLimited(20.0)
    return "ok"


LimitedChainWorker = pgflow.workflow_worker(limited_chain, queue="fc-rate", max_attempts=2)


def test_rate_limited_in_a_workflow_worker_step_holds_the_queue() -> None:
    WORKFLOW_CALLS.clear()
    clock = FakeClock()
    with pgflow.testing.manual(clock=clock, queues={"fc-rate": 2}) as t:
        job = t.insert(LimitedChainWorker.new({"tenant": "acme"}))
        assert t.drain().snoozed == 1
        stored = t.app.get_job(job.id)
        assert stored is not None and stored.attempt == 0
        assert (stored.scheduled_at - clock.now()).total_seconds() >= 20
        (control,) = t.backend.queue_controls()
        assert control.hold_until is not None
        assert (control.hold_until - clock.now()).total_seconds() >= 20
        assert t.drain(with_scheduled=True).completed == 1
        assert WORKFLOW_CALLS == [1, 1]


def test_a_fenced_out_rate_limited_attempt_holds_nothing(backend: InMemoryBackend) -> None:
    """A zombie attempt (its job already rescued or re-claimed) must not stop a whole queue's
    starts on every instance: the hold is written only with the fenced snooze that won."""
    from pgflow.runtime.execution import Outcome, OutcomeKind, record_outcomes

    backend.insert_jobs([pgflow.NewJob(worker="w", queue="fc-zombie")])
    (job,) = backend.claim_jobs("fc-zombie", "a", 1)
    assert backend.snooze_job(job.ref, 1.0)  # the attempt lost the job: its writes are fenced
    zombie = Outcome(job, OutcomeKind.SNOOZED, snooze=30.0, rate_limited=30.0)
    (outcome,) = record_outcomes(backend, [zombie], instance_id="a")
    assert outcome.fenced
    assert all(c.hold_until is None for c in backend.queue_controls() if c.queue == "fc-zombie")
