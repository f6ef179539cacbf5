"""PostgreSQL partitioned claims (issue 12): what each claim reads besides the walk.

A claim's keying must read only the jobs inserted since the previous claim, and its cursor
must come from the claimed rows: both used to read in proportion to the queue's jobs.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import bindparam, text

from pgflow.queue_config import Queue
from pgflow.records import NewJob
from pgflow_backends.postgres import PostgresBackend
from pgflow_backends.postgres_shaped import KEYING, SETTINGS_AND_LOCK, partitioned_claim_sql
from pgflow_backends.sql.partition_claims import SWEEP_SECONDS
from pgflow_backends.sql.queue_statements import QUEUE_LOCK_CLASS

Q = "tenants"
SHAPE = Queue(limit=10, partition_by="tenant")


def _fill(backend: PostgresBackend, count: int, queue: str = Q) -> list[int]:
    jobs = [NewJob(queue=queue, worker="w.W", args={"tenant": f"t{n % 7}"}) for n in range(count)]
    return [job.id for job in backend.insert_jobs(jobs)]


def _params() -> dict[str, Any]:
    return {
        "p_class": QUEUE_LOCK_CLASS,
        "p_queue": Q,
        "p_instance": "node-a",
        "p_incarnation": "",
        "p_limit": 10,
        "p_global": None,
        "p_allowed": None,
        "p_period": None,
        "p_key": "tenant",
        "p_sweep": SWEEP_SECONDS,
        "p_plimit": None,
        "p_prate_allowed": None,
        "p_prate_period": None,
        "p_longest": None,
    }


def _plan(backend: PostgresBackend, statement: str) -> dict[str, Any]:
    """EXPLAIN (ANALYZE, FORMAT JSON) of `statement` after the claim's settings and lock,
    rolled back."""
    with backend.engine.connect() as conn:
        driver: Any = conn.connection.driver_connection
        driver.execute(SETTINGS_AND_LOCK, _params())
        row = driver.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + statement, _params()).fetchone()
        driver.rollback()
    plan: dict[str, Any] = row[0][0]["Plan"]
    return plan


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


def _cte(plan: dict[str, Any], name: str) -> dict[str, Any]:
    found = [node for node in _nodes(plan) if node.get("Subplan Name") == f"CTE {name}"]
    assert len(found) == 1, f"no CTE {name} in the plan"
    return found[0]


def _scanned(plan: dict[str, Any]) -> dict[str, int]:
    """Rows each index scan under `plan` read (returned or filtered out), by index, over
    all its loops; an index never scanned is left out."""
    rows: dict[str, int] = {}
    for node in _nodes(plan):
        if "Index Name" in node and node.get("Actual Loops", 0):
            read = node["Actual Rows"] + node.get("Rows Removed by Filter", 0)
            name = node["Index Name"]
            rows[name] = rows.get(name, 0) + read * node["Actual Loops"]
    return rows


@pytest.mark.postgres
def test_keying_reads_only_the_jobs_inserted_since_the_last_claim(
    pg_backend: PostgresBackend,
) -> None:
    _fill(pg_backend, 600)
    assert len(pg_backend.claim_jobs(Q, "node-a", 10, shape=SHAPE)) == 10  # keys all 600
    new = _fill(pg_backend, 3) + _fill(pg_backend, 2, queue="elsewhere")
    new_keyed = _cte(_plan(pg_backend, KEYING), "new_keyed")
    # The 5 new ids by primary key (of which 3 are the queue's), not the queue's 590 others.
    assert _scanned(new_keyed) == {"pgflow_jobs_pkey": len(new) + 3}
    pg_backend.claim_jobs(Q, "node-a", 10, shape=SHAPE)
    with pg_backend.engine.connect() as conn:
        keys = dict(
            conn.execute(
                text("SELECT id, partition_key FROM pgflow_jobs WHERE id IN :ids").bindparams(
                    bindparam("ids", expanding=True)
                ),
                {"ids": new},
            ).all()
        )
    assert keys == {new[0]: "t0", new[1]: "t1", new[2]: "t2", new[3]: None, new[4]: None}


@pytest.mark.postgres
def test_keying_reads_nothing_when_no_job_is_new(pg_backend: PostgresBackend) -> None:
    _fill(pg_backend, 600)
    assert len(pg_backend.claim_jobs(Q, "node-a", 10, shape=SHAPE)) == 10
    assert _scanned(_cte(_plan(pg_backend, KEYING), "new_keyed")) == {}


@pytest.mark.postgres
def test_the_cursor_is_found_among_the_claimed_rows_alone(pg_backend: PostgresBackend) -> None:
    _fill(pg_backend, 600)
    assert len(pg_backend.claim_jobs(Q, "node-a", 10, shape=SHAPE)) == 10
    statement = partitioned_claim_sql(False, False, pg_backend._returning)
    moved = _cte(_plan(pg_backend, statement), "moved")
    loops = [node for node in _nodes(moved) if node["Node Type"] == "Nested Loop"]
    assert loops == []  # each claimed row against each picked one, before


@pytest.mark.postgres
def test_executing_jobs_without_a_stored_partition_count_against_the_partition_limit(
    pg_backend: PostgresBackend,
) -> None:
    _fill_tenants(pg_backend, ["a", "a", "a", "b"])
    shape = Queue(limit=10, partition_by="tenant", partition_limit=2)
    first = pg_backend.claim_jobs(Q, "node-a", 10, shape=shape)
    assert sorted(job.args["tenant"] for job in first) == ["a", "a", "b"]
    # As a job whose insert committed late, claimed by an instance without the shape.
    with pg_backend.engine.begin() as conn:
        conn.execute(text("UPDATE pgflow_jobs SET partition_key = NULL WHERE state = 'executing'"))
    assert pg_backend.claim_jobs(Q, "node-a", 10, shape=shape) == []
    pg_backend.complete_jobs([next(job.ref for job in first if job.args["tenant"] == "a")])
    assert [job.args["tenant"] for job in pg_backend.claim_jobs(Q, "node-a", 10, shape=shape)] == [
        "a"
    ]


def _fill_tenants(backend: PostgresBackend, tenants: list[str]) -> None:
    backend.insert_jobs([NewJob(queue=Q, worker="w.W", args={"tenant": t}) for t in tenants])
