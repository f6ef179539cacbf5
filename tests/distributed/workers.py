"""Workers that the child processes run; importable as `tests.distributed.workers`.

Side effects go to the `side_effects` table (one row per event), through a per-thread
connection of their own, so the tests can count how often each job really ran.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import psycopg

import pgflow
from pgflow.records import Job

SIDE_EFFECTS_DDL = """
CREATE TABLE IF NOT EXISTS side_effects (
    id bigserial PRIMARY KEY,
    job_id bigint NOT NULL,
    instance_id text NOT NULL,
    attempt int NOT NULL,
    event text NOT NULL,
    at timestamptz NOT NULL DEFAULT clock_timestamp()
)
"""

_local = threading.local()
#: Retries come quickly in these tests (0.5 s), so outages and kills resolve within seconds.
QUICK = pgflow.Backoff(base=1.0, factor=0.5)


def _connection() -> psycopg.Connection[Any]:
    conn: psycopg.Connection[Any] | None = getattr(_local, "conn", None)
    if conn is None or conn.closed or conn.broken:
        conn = psycopg.connect(os.environ["PGFLOW_TEST_URL"], autocommit=True, connect_timeout=5)
        _local.conn = conn
    return conn


def record(job: Job, event: str) -> None:
    """Write one side-effect row; a broken connection raises, so the attempt fails and retries."""
    try:
        _connection().execute(
            "INSERT INTO side_effects (job_id, instance_id, attempt, event) "
            "VALUES (%s, %s, %s, %s)",
            (job.id, os.environ["INSTANCE_ID"], job.attempt, event),
        )
    except psycopg.Error:
        _local.conn = None
        raise


class Count(pgflow.Worker, max_attempts=10, backoff=QUICK):
    """Records that it ran, after `seconds` of work."""

    def perform(self, job: Job) -> None:
        time.sleep(float(job.args.get("seconds", 0.0)))
        record(job, "done")


class Sleepy(pgflow.Worker, max_attempts=10, backoff=QUICK):
    """Records its start, works for `seconds`, records its end."""

    def perform(self, job: Job) -> None:
        record(job, "started")
        time.sleep(float(job.args["seconds"]))
        record(job, "done")


class Held(pgflow.Worker, max_attempts=10, backoff=QUICK):
    """Records its start, then runs until the test releases it (a `release` side effect with
    its job id), at most `seconds`; records its end."""

    def perform(self, job: Job) -> None:
        record(job, "started")
        deadline = time.monotonic() + float(job.args["seconds"])
        while time.monotonic() < deadline and not released(job.id):
            time.sleep(0.02)
        record(job, "done")


def released(job_id: int) -> bool:
    found = _connection().execute(
        "SELECT 1 FROM side_effects WHERE job_id = %s AND event = 'release'", (job_id,)
    )
    return found.fetchone() is not None


def release(url: str, job_ids: list[int]) -> None:
    """Let `Held` jobs finish (from the test process)."""
    with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
        for job_id in job_ids:
            conn.execute(
                "INSERT INTO side_effects (job_id, instance_id, attempt, event) "
                "VALUES (%s, 'test', 0, 'release')",
                (job_id,),
            )


class Nap(pgflow.Worker, max_attempts=10, backoff=QUICK):
    """Only sleeps: many run at once without each holding a database connection."""

    def perform(self, job: Job) -> None:
        time.sleep(float(job.args["seconds"]))


class CronTick(pgflow.Worker):
    def perform(self, job: Job) -> None:
        record(job, "cron")


class SlowFirstAttempt(pgflow.Worker, max_attempts=3, backoff=QUICK):
    """Records its start; its first attempt works for `seconds`, later ones finish at once."""

    def perform(self, job: Job) -> None:
        record(job, "started")
        if job.attempt == 1:
            time.sleep(float(job.args["seconds"]))
        record(job, "done")
