"""The app in-process on SQLite and PostgreSQL: serving, transactional inserts, races."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy

import pgflow
from pgflow.app import Pgflow
from pgflow.records import Job, JobState
from pgflow.runtime.cron import CronScheduler, parse_cron
from pgflow.worker import Worker, current_backend
from tests.waiting import wait_for

FAST: dict[str, Any] = {
    "poll_interval": 0.1,
    "heartbeat_interval": 0.2,
    "stale_timeout": 2.0,
    "stage_interval": 0.1,
    "shutdown_timeout": 10.0,
}

DONE: list[int] = []
DONE_LOCK = threading.Lock()


class Note(Worker):
    def perform(self, job: Job) -> Any:
        with DONE_LOCK:
            DONE.append(job.id)
        return None


class Tick(Worker):
    def perform(self, job: Job) -> Any:
        return None


class Spawns(Worker):
    """Inserts a follow-up job through the running app's backend, then records itself."""

    def perform(self, job: Job) -> Any:
        backend = current_backend()
        assert backend is not None
        if job.args.get("depth", 0) < 1:
            backend.insert_jobs([Spawns.new({"depth": 1})])
        with DONE_LOCK:
            DONE.append(job.id)
        return None


ORDER: list[int] = []
STARTED: dict[int, datetime] = {}


class Ordered(Worker, queue="solo"):
    def perform(self, job: Job) -> Any:
        with DONE_LOCK:
            ORDER.append(int(job.args["priority"]))


class Stamped(Worker):
    def perform(self, job: Job) -> Any:
        with DONE_LOCK:
            STARTED[job.id] = datetime.now(UTC)


class Fails(Worker, max_attempts=3, backoff=pgflow.Backoff(base=0.1, factor=1.0)):
    def perform(self, job: Job) -> Any:
        raise ValueError(f"attempt {job.attempt} failed")


flow = pgflow.Flow("sql_app_flow")


@flow.step
def shout(state: dict[str, Any]) -> dict[str, Any]:
    return {"text": str(state["text"]).upper()}


Shout = pgflow.workflow_worker(flow)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest) -> str:
    fixture = "sqlite_url" if request.param == "sqlite" else "postgres_url"
    value: str = request.getfixturevalue(fixture)
    return value


@pytest.fixture
def app(url: str) -> Iterator[Pgflow]:
    made = Pgflow(url, instance_id="sql-app", **FAST)
    made.migrate()
    try:
        yield made
    finally:
        made.close()


def test_start_serve_stop(app: Pgflow) -> None:
    with DONE_LOCK:
        DONE.clear()
    app.start()
    jobs = app.insert([Note.new({"n": n}) for n in range(50)])
    flow_job = app.insert(Shout.new({"text": "hello"}))
    assert wait_for(lambda: app.status().count(state=JobState.COMPLETED) == 51)
    with DONE_LOCK:
        assert sorted(DONE) == sorted(job.id for job in jobs)
    run = app.backend.get_run(f"job-{flow_job.id}")
    assert run is not None and run.output == {"text": "HELLO"}
    assert app.stop(timeout=10)
    [instance] = app.backend.list_instances()
    assert (instance.instance_id, instance.status) == ("sql-app", "offline")


def test_insert_in_a_rolled_back_transaction_leaves_no_job(app: Pgflow, url: str) -> None:
    engine = _engine_for(url)
    try:
        with engine.connect() as conn:
            with conn.begin() as transaction:
                job = app.insert(Note.new({"kept": False}), connection=conn)
                assert job.id is not None
                transaction.rollback()
            with conn.begin():
                kept = app.insert(Note.new({"kept": True}), connection=conn)
        stored = app.backend.list_jobs()
        assert [item.args for item in stored] == [{"kept": True}]
        assert stored[0].id == kept.id
    finally:
        engine.dispose()


def test_app_accepts_an_engine(url: str) -> None:
    engine = _engine_for(url)
    try:
        app = Pgflow(engine, instance_id="engine-app")
        app.migrate()
        job = app.insert(Tick.new())
        assert app.backend.get_job(job.id) == job
        app.close()
    finally:
        engine.dispose()


def test_unique_inserts_racing_from_threads(app: Pgflow) -> None:
    barrier = threading.Barrier(6)
    results: list[Job] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def insert() -> None:
        try:
            barrier.wait()
            for _ in range(10):
                job = app.insert(Tick.new({"order": 42}, unique={"keys": ["order"]}))
                with lock:
                    results.append(job)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=insert) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    assert len(results) == 60
    assert len({job.id for job in results}) == 1
    assert sum(not job.conflict for job in results) == 1
    assert len(app.backend.list_jobs()) == 1


def test_cron_schedulers_racing_on_one_slot_insert_it_once(app: Pgflow) -> None:
    now = datetime.now(UTC)
    if now.second >= 40:  # keep the whole race inside one minute of the database's clock
        time.sleep(61 - now.second)
        now = datetime.now(UTC)
    schedulers = [CronScheduler(parse_cron([("* * * * *", Tick)])) for _ in range(6)]
    barrier = threading.Barrier(len(schedulers))
    stored: list[Job] = []
    lock = threading.Lock()

    def tick(scheduler: CronScheduler) -> None:
        barrier.wait()
        jobs = scheduler.tick(app.backend, now)
        with lock:
            stored.extend(jobs)

    threads = [threading.Thread(target=tick, args=(s,)) for s in schedulers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(stored) == 1  # one scheduler won the slot; the others enqueued nothing
    assert [job.id for job in app.backend.list_jobs()] == [stored[0].id]


def _engine_for(url: str, **options: Any) -> sqlalchemy.Engine:
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    return sqlalchemy.create_engine(url, **options)


def test_a_one_connection_pool_serves_many_slots(url: str) -> None:
    """User code never holds a connection while it runs, so slots cannot starve the pool."""
    engine = _engine_for(url, pool_size=1, max_overflow=0, pool_timeout=5)
    app = Pgflow(engine, instance_id="tiny-pool", queues={"default": 8}, **FAST)
    try:
        app.migrate()
        with DONE_LOCK:
            DONE.clear()
        app.insert([Spawns.new() for _ in range(20)])
        app.start()
        assert wait_for(lambda: app.status().count(state=JobState.COMPLETED) == 40, 40)
        assert app.status().count() == 40
    finally:
        app.close()
        engine.dispose()


def test_default_poll_interval_is_short_only_without_notifications(url: str) -> None:
    app = Pgflow(url, instance_id="defaults")
    try:
        assert app.poll_interval == (0.1 if url.startswith("sqlite") else 1.0)
    finally:
        app.close()


def test_priority_schedule_and_retries(url: str) -> None:
    """Highest priority first, scheduled jobs not before their time, retry then discard."""
    with DONE_LOCK:
        ORDER.clear()
        STARTED.clear()
    app = Pgflow(url, instance_id="semantics", queues={"solo": 1, "default": 2}, **FAST)
    try:
        app.migrate()
        app.insert([Ordered.new({"priority": p}, priority=p) for p in (2, 7, 0, 5)])
        later = app.insert(Stamped.new(schedule_in=0.5))
        failing = app.insert(Fails.new())
        assert later.state is JobState.SCHEDULED
        app.start()

        def failing_state() -> JobState | None:
            job = app.backend.get_job(failing.id)
            return None if job is None else job.state

        assert wait_for(lambda: len(ORDER) == 4 and later.id in STARTED)
        assert wait_for(lambda: failing_state() is JobState.DISCARDED)
        assert ORDER == [7, 5, 2, 0]
        assert STARTED[later.id] >= later.scheduled_at
        stored = app.backend.get_job(failing.id)
        assert stored is not None
        assert [e["message"] for e in stored.errors] == [
            "attempt 1 failed",
            "attempt 2 failed",
            "attempt 3 failed",
        ]
    finally:
        app.close()
