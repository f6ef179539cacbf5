"""The physical floor: the plain-SQL job lifecycle through psycopg on one connection.

Insert, claim with FOR UPDATE SKIP LOCKED, complete: one job at a time (three autocommit
round trips per job) and in batches of 100 (three statements per 100 jobs). Every queue's
figure can be read as a fraction of what the database allows on this machine.
"""

from __future__ import annotations

import time
from typing import Any

SCHEMA = """
CREATE TABLE floor_jobs (
    id bigserial PRIMARY KEY,
    queue text NOT NULL,
    args jsonb NOT NULL,
    state text NOT NULL DEFAULT 'available',
    inserted_at timestamptz NOT NULL DEFAULT now(),
    attempted_at timestamptz,
    completed_at timestamptz
);
CREATE INDEX floor_jobs_fetch ON floor_jobs (queue, id) WHERE state = 'available';
"""
INSERT_ONE = "INSERT INTO floor_jobs (queue, args) VALUES (%s, %s::jsonb)"
INSERT_MANY = (
    "INSERT INTO floor_jobs (queue, args) SELECT %s, a::jsonb FROM unnest(%s::text[]) AS a"
)
CLAIM = """
UPDATE floor_jobs SET state = 'executing', attempted_at = now()
WHERE id = ANY(ARRAY(
    SELECT id FROM floor_jobs WHERE queue = %s AND state = 'available'
    ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED))
RETURNING id
"""
COMPLETE = (
    "UPDATE floor_jobs SET state = 'completed', completed_at = now() WHERE id = ANY(%s::bigint[])"
)
BATCH = 100


def measure(url: str, total: int) -> dict[str, float]:
    """Rates (per second) of insert / claim+complete / the whole lifecycle, 1 and 100 at a time."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(SCHEMA)
        return {
            "insert_one": _insert(conn, "one", total, 1),
            "insert_bulk": _insert(conn, "many", total, BATCH),
            "drain_one": _drain(conn, "one", total, 1),
            "drain_batched": _drain(conn, "many", total, BATCH),
            "drain_batched_10": _refill_and_drain(conn, total, 10),
            "lifecycle_one": _lifecycle(conn, total, 1),
            "lifecycle_batched": _lifecycle(conn, total, BATCH),
        }


def _insert(conn: Any, queue: str, total: int, batch: int) -> float:
    started = time.perf_counter()
    for start in range(0, total, batch):
        if batch == 1:
            conn.execute(INSERT_ONE, (queue, f'{{"i": {start}}}'))
        else:
            args = [f'{{"i": {i}}}' for i in range(start, min(start + batch, total))]
            conn.execute(INSERT_MANY, (queue, args))
    return total / (time.perf_counter() - started)


def _drain(conn: Any, queue: str, total: int, batch: int) -> float:
    """Claim and complete until `queue` is empty; jobs per second."""
    done = 0
    started = time.perf_counter()
    while True:
        ids = [row[0] for row in conn.execute(CLAIM, (queue, batch)).fetchall()]
        if not ids:
            break
        conn.execute(COMPLETE, (ids,))
        done += len(ids)
    elapsed = time.perf_counter() - started
    if done != total:
        raise RuntimeError(f"floor drained {done} of {total} jobs")
    return done / elapsed


def _refill_and_drain(conn: Any, total: int, batch: int) -> float:
    """Claim + complete `batch` at a time (the workers' concurrency) on freshly inserted jobs."""
    queue = f"drain{batch}"
    for start in range(0, total, BATCH):
        args = [f'{{"i": {i}}}' for i in range(start, min(start + BATCH, total))]
        conn.execute(INSERT_MANY, (queue, args))
    return _drain(conn, queue, total, batch)


def _lifecycle(conn: Any, total: int, batch: int) -> float:
    """Insert, claim, complete, one batch after another; jobs per second."""
    queue = f"life{batch}"
    started = time.perf_counter()
    for start in range(0, total, batch):
        count = min(batch, total - start)
        if count == 1:
            conn.execute(INSERT_ONE, (queue, f'{{"i": {start}}}'))
        else:
            conn.execute(INSERT_MANY, (queue, [f'{{"i": {i}}}' for i in range(count)]))
        ids = [row[0] for row in conn.execute(CLAIM, (queue, count)).fetchall()]
        conn.execute(COMPLETE, (ids,))
    return total / (time.perf_counter() - started)
