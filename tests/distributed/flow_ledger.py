"""Jobs that keep a ledger of when they ran, for the flow-control tests across processes.

Each run of a job writes one `flow_ledger` row through the process's ledger connection:
its start at the first line of `perform`, its end at the last, both from the database's
`clock_timestamp()`, so runs on different instances share one clock; beside them the
claim's time (`job.attempted_at`, the start a shaped claim recorded). The tests compute
concurrency, rate windows and waits from these rows only. Importable as
`tests.distributed.flow_ledger`; the worker processes find the database in
$PGFLOW_LEDGER_URL and their name in $INSTANCE_ID.
"""

from __future__ import annotations

import os
import threading
import time
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

_lock = threading.Lock()
_conn: psycopg.Connection[Any] | None = None


def _connection() -> psycopg.Connection[Any]:
    """The process's one ledger connection (psycopg serialises its threads' statements),
    opened when the worker imports this module: a connect inside `perform` would count
    towards the claim-to-start lag the tests measure."""
    global _conn
    with _lock:
        if _conn is None or _conn.closed or _conn.broken:
            _conn = psycopg.connect(
                os.environ["PGFLOW_LEDGER_URL"], autocommit=True, connect_timeout=5
            )
        return _conn


def _start(job: Job, key: str | None) -> int:
    row = (
        _connection()
        .execute(
            "INSERT INTO flow_ledger (job_id, key, instance_id, attempt, claimed_at) "
            "VALUES (%s, %s, %s, %s, %s) RETURNING id",
            (job.id, key, os.environ["INSTANCE_ID"], job.attempt, job.attempted_at),
        )
        .fetchone()
    )
    assert row is not None
    return int(row[0])


def _end(entry: int) -> None:
    _connection().execute(
        "UPDATE flow_ledger SET ended_at = clock_timestamp() WHERE id = %s", (entry,)
    )


def _runs_of(job_id: int) -> int:
    row = (
        _connection()
        .execute("SELECT count(*) FROM flow_ledger WHERE job_id = %s", (job_id,))
        .fetchone()
    )
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
    _connection()
