"""Jobs that keep a ledger of when they ran, for the flow-control tests across processes.

Each run of a job writes one `flow_ledger` row through a ledger connection of the process:
its start at the first line of `perform`, its end at the last, both from the database's
`clock_timestamp()`, so runs on different instances share one clock; beside them the
claim's time (`job.attempted_at`, the start a shaped claim recorded). The tests compute
concurrency, rate windows and waits from these rows only. Importable as
`tests.distributed.flow_ledger`; the worker processes find the database in
$PGFLOW_LEDGER_URL and their name in $INSTANCE_ID.
"""

from __future__ import annotations

import os
import queue
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg

import pgflow
from pgflow.records import Job

#: The queue every job of this module runs on (its options come from the worker's --queues).
QUEUE = "flow"

LEDGER_DDL = """
CREATE TABLE IF NOT EXISTS flow_ledger (
    id bigserial PRIMARY KEY,
    job_id bigint NOT NULL,
    key text,
    instance_id text NOT NULL,
    attempt int NOT NULL,
    claimed_at timestamptz,
    started_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    ended_at timestamptz
)
"""

#: Ledger connections a worker process opens before serving: one per slot of the widest
#: queue the tests give an instance.
POOL_SIZE = 10
_idle: queue.SimpleQueue[psycopg.Connection[Any]] = queue.SimpleQueue()


def _connect() -> psycopg.Connection[Any]:
    return psycopg.connect(os.environ["PGFLOW_LEDGER_URL"], autocommit=True, connect_timeout=5)


@contextmanager
def _connection() -> Iterator[psycopg.Connection[Any]]:
    """An idle ledger connection, opened in advance: neither a connect nor another
    thread's statement delays a job's start row (they would count as claim-to-start lag)."""
    try:
        conn = _idle.get_nowait()
    except queue.Empty:
        conn = _connect()
    try:
        yield conn
    finally:
        if not (conn.closed or conn.broken):
            _idle.put(conn)


def _start(job: Job, key: str | None) -> int:
    with _connection() as conn:
        row = conn.execute(
            "INSERT INTO flow_ledger (job_id, key, instance_id, attempt, claimed_at) "
            "VALUES (%s, %s, %s, %s, %s) RETURNING id",
            (job.id, key, os.environ["INSTANCE_ID"], job.attempt, job.attempted_at),
        ).fetchone()
    assert row is not None
    return int(row[0])


def _end(entry: int) -> None:
    with _connection() as conn:
        conn.execute("UPDATE flow_ledger SET ended_at = clock_timestamp() WHERE id = %s", (entry,))


def _runs_of(job_id: int) -> int:
    with _connection() as conn:
        row = conn.execute(
            "SELECT count(*) FROM flow_ledger WHERE job_id = %s", (job_id,)
        ).fetchone()
    return int(row[0]) if row is not None else 0


class Ledgered(pgflow.Worker, queue=QUEUE, max_attempts=3):
    """Records its start, works for args["seconds"] (default 0), records its end; its
    ledger key is args["tenant"] when there is one."""

    def perform(self, job: Job) -> None:
        tenant = job.args.get("tenant")
        entry = _start(job, None if tenant is None else str(tenant))
        time.sleep(float(job.args.get("seconds", 0.0)))
        _end(entry)


class Throttled(pgflow.Worker, queue=QUEUE, max_attempts=3):
    """On its first run, records it and raises RateLimited(args["retry_after"]) as a
    provider's 429 would make it; later runs record and finish."""

    def perform(self, job: Job) -> None:
        entry = _start(job, "throttled")
        first = _runs_of(job.id) == 1
        _end(entry)
        if first:
            raise pgflow.RateLimited(retry_after=float(job.args["retry_after"]))


if "PGFLOW_LEDGER_URL" in os.environ:  # a worker process: connect before serving
    for _ in range(POOL_SIZE):
        _idle.put(_connect())
