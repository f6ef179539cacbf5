"""Flow control in the SQL backends (issue 12): what the contract tests cannot see.

On PostgreSQL, shaped claims of one queue serialize on an advisory lock (racing claims never
overshoot a limit), their rate windows count the clock after the lock, and the plain claim
keeps its plan. On both dialects, partition keys read as text like PostgreSQL's ->> and the
rate windows are pruned by the claims.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import text

from pgflow.queue_config import Queue, partition_of
from pgflow.records import Job, NewJob
from pgflow.registry import backend_from_url
from pgflow_backends import postgres as postgres_module
from pgflow_backends.postgres import PostgresBackend
from pgflow_backends.postgres_shaped import SETTINGS_AND_LOCK, partitioned_claim_sql
from pgflow_backends.sql import windows
from pgflow_backends.sql.base import SQLBackend
from pgflow_backends.sql.partition_claims import SWEEP_SECONDS
from pgflow_backends.sql.queue_statements import QUEUE_LOCK_CLASS
from pgflow_backends.sql.windows import counted_window
from tests.sql.helpers import run_helpers

Q = "shaped"


def _fill(backend: SQLBackend, args: list[dict[str, Any]], queue: str = Q) -> list[Job]:
    return backend.insert_jobs([NewJob(queue=queue, worker="w.W", args=a) for a in args])


def _race(backend: SQLBackend, shape: Queue, claimers: int, limit: int) -> list[list[Job]]:
    """`claimers` shaped claims started together (a barrier), each on its own connection."""
    barrier = threading.Barrier(claimers, timeout=30)
    got: list[list[Job]] = [[] for _ in range(claimers)]
    failures: list[BaseException] = []

    def claimer(n: int) -> None:
        try:
            barrier.wait()
            got[n] = backend.claim_jobs(Q, f"node-{n}", limit, shape=shape)
        except BaseException as exc:  # reported by the test thread
            failures.append(exc)

    threads = [threading.Thread(target=claimer, args=(n,)) for n in range(claimers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert failures == []
    return got


@pytest.mark.postgres
def test_racing_shaped_claims_never_overshoot_a_global_limit(pg_backend: PostgresBackend) -> None:
    _fill(pg_backend, [{} for _ in range(100)])
    got = _race(pg_backend, Queue(limit=3, global_limit=5), claimers=20, limit=3)
    ids = [job.id for jobs in got for job in jobs]
    # Without the lock each claim would see nothing executing and take 3 (up to 60).
    assert len(ids) == len(set(ids)) == 5


@pytest.mark.postgres
def test_racing_shaped_claims_keep_rate_and_partition_limits(pg_backend: PostgresBackend) -> None:
    _fill(pg_backend, [{"tenant": f"t{n % 4}"} for n in range(100)])
    shape = Queue(limit=3, rate_limit=(7, 60.0), partition_by="tenant", partition_limit=1)
    got = _race(pg_backend, shape, claimers=20, limit=3)
    tenants = Counter(job.args["tenant"] for jobs in got for job in jobs)
    assert tenants == {"t0": 1, "t1": 1, "t2": 1, "t3": 1}

    shape = Queue(limit=3, rate_limit=(7, 60.0))
    got = _race(pg_backend, shape, claimers=20, limit=3)
    assert sum(len(jobs) for jobs in got) == 3  # 4 starts were recorded of the 7 allowed


@pytest.mark.postgres
def test_a_shaped_claim_waits_for_the_queue_lock_and_counts_its_window_after_it(
    pg_backend: PostgresBackend, postgres_url: str
) -> None:
    _fill(pg_backend, [{} for _ in range(3)])
    shape = Queue(rate_limit=(10, 60.0))
    result: list[list[Job]] = []
    with psycopg.connect(postgres_url) as holder:
        holder.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (QUEUE_LOCK_CLASS, Q))
        claimer = threading.Thread(
            target=lambda: result.append(pg_backend.claim_jobs(Q, "node-a", 3, shape=shape))
        )
        claimer.start()
        with psycopg.connect(postgres_url, autocommit=True) as watcher:
            deadline = time.monotonic() + 15
            while not watcher.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            ).fetchone()[0]:
                assert time.monotonic() < deadline, "the claim never waited for the lock"
                time.sleep(0.005)
        # The claim's transaction began before this point; its window must not.
        released = holder.execute("SELECT clock_timestamp() + interval '50 ms'").fetchone()[0]
        holder.execute("SELECT pg_sleep(0.05)")
        holder.commit()
        claimer.join(timeout=30)
    [jobs] = result
    assert len(jobs) == 3
    with pg_backend.engine.connect() as conn:
        starts = conn.execute(text("SELECT started_at FROM pgflow_rate_starts")).scalars().all()
    assert len(starts) == 3 and all(start >= released for start in starts)
    # The jobs' start times are their recorded starts (not the transaction's start).
    assert {job.attempted_at for job in jobs} == set(starts)


def _plan(backend: PostgresBackend, sql: str, params: dict[str, Any]) -> str:
    with backend.engine.connect() as conn:
        driver: Any = conn.connection.driver_connection
        rows = driver.execute("EXPLAIN " + sql, params).fetchall()
        driver.rollback()
    return "\n".join(row[0] for row in rows)


@pytest.mark.postgres
def test_the_plain_claim_keeps_its_index_and_checks_the_controls_once(
    pg_backend: PostgresBackend,
) -> None:
    _fill(pg_backend, [{} for _ in range(50)])
    params = dict(pg_backend._claim_params, p_queue=Q, p_instance="i", p_limit=10, p_incarnation="")
    plan = _plan(pg_backend, pg_backend._claim_sql, params)
    assert "pgflow_jobs_claim_idx" in plan
    # The pause/hold check is uncorrelated: a one-time filter over an InitPlan, not a
    # subplan run per job.
    assert "One-Time Filter" in plan and "pgflow_queue_controls" in plan
    assert "SubPlan" not in plan


def test_partition_keys_read_as_postgres_text(sql_backend: SQLBackend) -> None:
    values: list[Any] = ["x", 5, True, False, None, 2.5, "a.b"]
    _fill(sql_backend, [{"tenant": value} for value in values])
    _fill(sql_backend, [{"a.b": "dotted"}])  # a key with a dot is one key, not a path
    stats = sql_backend.queue_stats(Q, Queue(partition_by="tenant"))
    found = sorted(part for part, _, _ in stats.partitions)
    expected = sorted({partition_of({"tenant": value}, "tenant", False) for value in values} | {""})
    assert found == expected
    dotted = sql_backend.queue_stats(Q, Queue(partition_by="a.b"))
    assert ("dotted", 1, 0) in dotted.partitions


def test_claims_prune_starts_older_than_the_longest_window(sql_backend: SQLBackend) -> None:
    _fill(sql_backend, [{"tenant": "a"} for _ in range(4)])
    old = "now() - interval '1 hour'" if sql_backend.engine.dialect.name == "postgresql" else "0"
    with sql_backend.engine.begin() as conn:
        for partition in ("", "a", "zz"):
            conn.execute(
                text(
                    "INSERT INTO pgflow_rate_starts (queue, partition, started_at) "
                    f"VALUES (:q, :p, {old})"
                ),
                {"q": Q, "p": partition},
            )
    shape = Queue(rate_limit=(3, 60.0), partition_by="tenant", partition_rate_limit=(2, 120.0))
    assert len(sql_backend.claim_jobs(Q, "node-a", 10, shape=shape)) == 2
    with sql_backend.engine.connect() as conn:
        rows = conn.execute(text("SELECT partition FROM pgflow_rate_starts")).scalars().all()
    assert rows == ["a", "a"]  # one start per job, under its partition; the old ones gone
    assert sql_backend.queue_stats(Q, shape).rate_used == 2


def test_a_partitioned_claim_rotates_its_cursor(sql_backend: SQLBackend) -> None:
    _fill(sql_backend, [{"tenant": t} for t in "abcd" for _ in range(3)])
    shape = Queue(partition_by="tenant")
    served = [
        [job.args["tenant"] for job in sql_backend.claim_jobs(Q, "node-a", 3, shape=shape)]
        for _ in range(4)
    ]
    assert served == [["a", "b", "c"], ["d", "a", "b"], ["c", "d", "a"], ["b", "c", "d"]]


def _shaped_race(url: str, tmp_path: Path) -> None:
    """Four processes claim one shaped queue together (global_limit=4, partition_limit=1 over
    six tenants): the database never shows more executing than that, and every job is
    claimed exactly once."""
    backend = backend_from_url(url)
    try:
        backend.migrate()
        inserted = backend.insert_jobs(
            [
                NewJob(worker="w.W", queue="shaped-race", args={"tenant": f"t{n % 6}"})
                for n in range(90)
            ]
        )
    finally:
        backend.close()
    go = tmp_path / "go"
    outputs = run_helpers(
        "shaped_claim_worker.py",
        [[url, f"proc-{n}", str(go)] for n in range(4)],
        timeout=120,
        go=go,
    )
    claims: Counter[int] = Counter()
    for out in outputs:
        head, *ids = out.split("\n")
        _, most, per_partition = head.split()
        assert int(most) <= 4
        assert int(per_partition) <= 1
        claims.update(int(line) for line in ids if line)
    assert sorted(claims) == sorted(job.id for job in inserted)
    assert set(claims.values()) == {1}
    assert sum(1 for out in outputs if len(out.split()) > 3) >= 2  # it really was a race


@pytest.mark.slow
def test_processes_sharing_one_sqlite_file_keep_a_shaped_queues_limits(
    sqlite_url: str, tmp_path: Path
) -> None:
    _shaped_race(sqlite_url, tmp_path)


@pytest.mark.slow
@pytest.mark.postgres
def test_processes_on_postgres_keep_a_shaped_queues_limits(
    postgres_url: str, tmp_path: Path
) -> None:
    _shaped_race(postgres_url, tmp_path)


@pytest.mark.postgres
def test_shaped_claims_count_after_the_lock_on_a_repeatable_read_engine(postgres_url: str) -> None:
    """An application's Engine in REPEATABLE READ: the claim still reads after the lock."""
    from sqlalchemy import create_engine

    from pgflow_backends.sql.urls import parse

    engine = create_engine(parse(postgres_url), isolation_level="REPEATABLE READ", pool_size=20)
    backend = PostgresBackend(engine)
    try:
        backend.migrate()
        _fill(backend, [{} for _ in range(100)])
        got = _race(backend, Queue(limit=3, global_limit=5), claimers=20, limit=3)
        assert sum(len(jobs) for jobs in got) == 5
    finally:
        backend.close()
        engine.dispose()


# -- partitioned claims read pgflow_jobs_partition_idx, keyed by the claims ------------------


def _keys(backend: SQLBackend, queue: str = Q) -> dict[str, str | None]:
    """Each job's stored partition_key by its args' tenant (or n)."""
    with backend.engine.connect() as conn:
        rows = conn.execute(
            text("SELECT args, partition_key FROM pgflow_jobs WHERE queue = :q ORDER BY id"),
            {"q": queue},
        ).all()
    found: dict[str, str | None] = {}
    for args, key in rows:
        args = args if isinstance(args, dict) else json.loads(args)
        found[str(args.get("n", args.get("tenant")))] = key
    return found


def _keying(backend: SQLBackend) -> tuple[Any, ...]:
    with backend.engine.connect() as conn:
        row = conn.execute(
            text("SELECT keyed_by, keyed_through FROM pgflow_queue_controls WHERE queue = :q"),
            {"q": Q},
        ).one()
    return tuple(row)


def test_inserts_leave_partitions_unkeyed_and_a_partitioned_claim_keys_new_jobs(
    sql_backend: SQLBackend,
) -> None:
    first = _fill(sql_backend, [{"n": n, "tenant": f"t{n % 2}"} for n in range(4)])
    _fill(sql_backend, [{"n": 9, "tenant": "x"}], queue="other")
    assert set(_keys(sql_backend).values()) == {None}  # an insert never writes it
    shape = Queue(partition_by="tenant")
    assert len(sql_backend.claim_jobs(Q, "node-a", 1, shape=shape)) == 1
    assert _keys(sql_backend) == {"0": "t0", "1": "t1", "2": "t0", "3": "t1"}
    assert _keys(sql_backend, "other") == {"9": None}  # another queue's jobs are left alone
    newest = max(job.id for job in first) + 1  # the other queue's job
    assert _keying(sql_backend) == ("tenant", newest)
    late = _fill(sql_backend, [{"n": 5, "tenant": "t9"}, {"n": 6}])
    served = sql_backend.claim_jobs(Q, "node-a", 5, shape=shape)
    assert {job.args.get("tenant", "") for job in served} == {"t0", "t1", "t9", ""}
    assert _keys(sql_backend)["5"] == "t9" and _keys(sql_backend)["6"] == ""
    assert _keying(sql_backend) == ("tenant", late[-1].id)


def test_a_claim_with_another_partition_by_keys_the_queue_again(sql_backend: SQLBackend) -> None:
    _fill(sql_backend, [{"n": n, "tenant": "a", "region": f"r{n}"} for n in range(3)])
    assert len(sql_backend.claim_jobs(Q, "node-a", 1, shape=Queue(partition_by="tenant"))) == 1
    regions = Queue(partition_by="region", partition_limit=1)
    served = sql_backend.claim_jobs(Q, "node-a", 5, shape=regions)
    # By tenant, the two left would be one partition; by region they are two.
    assert sorted(job.args["region"] for job in served) == ["r1", "r2"]
    assert _keying(sql_backend)[0] == "region"
    assert set(_keys(sql_backend).values()) == {"r0", "r1", "r2"}


@pytest.mark.postgres
def test_a_job_whose_insert_committed_late_is_served_after_the_sweep(
    pg_backend: PostgresBackend,
) -> None:
    shape = Queue(partition_by="tenant")
    with pg_backend.engine.connect() as late:
        # Inserted first (the lower id), committed after a claim keyed a later job.
        [slow] = pg_backend.insert_jobs(
            [NewJob(queue=Q, worker="w.W", args={"tenant": "slow"})], connection=late
        )
        [quick] = _fill(pg_backend, [{"tenant": "quick"}])
        assert [job.id for job in pg_backend.claim_jobs(Q, "node-a", 5, shape=shape)] == [quick.id]
        late.commit()
    assert _keying(pg_backend) == ("tenant", quick.id) and slow.id < quick.id
    assert pg_backend.claim_jobs(Q, "node-a", 5, shape=shape) == []  # not keyed: not seen yet
    with pg_backend.engine.begin() as conn:  # SWEEP_SECONDS later
        conn.execute(
            text(
                "UPDATE pgflow_queue_controls SET swept_at = swept_at - make_interval(secs => :s)"
            ),
            {"s": SWEEP_SECONDS},
        )
    assert [job.id for job in pg_backend.claim_jobs(Q, "node-a", 5, shape=shape)] == [slow.id]


@pytest.mark.postgres
def test_partitioned_claims_walk_the_index_even_with_statistics_from_before_the_keys(
    pg_backend: PostgresBackend,
) -> None:
    _fill(pg_backend, [{"tenant": f"t{n % 20}"} for n in range(2000)])
    with pg_backend.engine.begin() as conn:
        conn.exec_driver_sql("ANALYZE pgflow_jobs")  # every partition_key NULL, it says
    shape = Queue(limit=10, partition_by="tenant", partition_limit=5, partition_rate_limit=(9, 1))
    assert len(pg_backend.claim_jobs(Q, "node-a", 10, shape=shape)) == 10
    params = {
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
        "p_plimit": 5,
        "p_prate_allowed": 9,
        "p_prate_period": 1.0,
        "p_longest": 1.0,
    }
    statement = partitioned_claim_sql(True, True, pg_backend._returning)
    with pg_backend.engine.connect() as conn:
        driver: Any = conn.connection.driver_connection
        driver.execute(SETTINGS_AND_LOCK, params)
        plan = "\n".join(
            row[0] for row in driver.execute("EXPLAIN " + statement, params).fetchall()
        )
        driver.rollback()
    assert "pgflow_jobs_partition_idx" in plan
    assert "Seq Scan on pgflow_jobs" not in plan and "Bitmap" not in plan


@pytest.fixture
def pg_unpipelined(pg_backend: PostgresBackend, monkeypatch: pytest.MonkeyPatch) -> PostgresBackend:
    """PostgreSQL as with libpq before 14: shaped claims take the general path."""
    monkeypatch.setattr(postgres_module, "_PIPELINES", False)
    return pg_backend


@pytest.mark.postgres
def test_the_general_path_on_postgres_serves_partitions_round_robin_within_limits(
    pg_unpipelined: PostgresBackend,
) -> None:
    backend = pg_unpipelined
    _fill(backend, [{"tenant": t} for t in "abcd" for _ in range(3)])
    shape = Queue(partition_by="tenant", partition_limit=2)
    served = [
        [job.args["tenant"] for job in backend.claim_jobs(Q, "node-a", 3, shape=shape)]
        for _ in range(4)
    ]
    # Two of each at most while none completes: the fourth claim finds every partition full.
    assert served == [["a", "b", "c"], ["d", "a", "b"], ["c", "d"], []]
    late = _fill(backend, [{"tenant": "e"}])
    assert [job.id for job in backend.claim_jobs(Q, "node-a", 3, shape=shape)] == [late[0].id]


def _started_ago(backend: SQLBackend, seconds: float, partition: str = "") -> None:
    """Record a start of queue Q `seconds` before the database's clock."""
    ago = (
        "clock_timestamp() - make_interval(secs => :s)"
        if backend.engine.dialect.name == "postgresql"
        else "((julianday('now') - 2440587.5) * 86400.0 - :s)"
    )
    with backend.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO pgflow_rate_starts (queue, partition, started_at) "
                f"VALUES (:q, :p, {ago})"
            ),
            {"q": Q, "p": partition, "s": seconds},
        )


def test_the_counted_window_adds_a_small_share_of_the_period_at_most_25_ms() -> None:
    assert counted_window(1.0) == pytest.approx(1.015)
    assert counted_window(0.1) == pytest.approx(0.1015)
    assert counted_window(60.0) == pytest.approx(60.025)


@pytest.mark.parametrize("partitioned", [False, True])
def test_a_claim_counts_starts_recorded_within_the_margin_past_the_window(
    sql_backend: SQLBackend, partitioned: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A start recorded a period and half the margin ago still counts (jobs begin some time
    after their claim); one a period and twice the margin ago does not. (A margin of 5 s
    here, so the time the test takes does not matter.)"""
    monkeypatch.setattr(windows, "RATE_MARGIN_SECONDS", 5.0)
    margin = counted_window(100.0) - 100.0
    assert margin == pytest.approx(1.5)  # 1.5% of 100 s
    part = "a" if partitioned else ""
    shape = (
        Queue(partition_by="tenant", partition_rate_limit=(1, 100.0))
        if partitioned
        else Queue(rate_limit=(1, 100.0))
    )
    _fill(sql_backend, [{"tenant": "a"} for _ in range(3)])
    _started_ago(sql_backend, 100.0 + margin / 2, partition=part)
    assert sql_backend.claim_jobs(Q, "node-a", 3, shape=shape) == []
    # The status shows the window itself: that start is out of it.
    assert sql_backend.queue_stats(Q, Queue(rate_limit=(1, 100.0))).rate_used == 0
    with sql_backend.engine.begin() as conn:
        conn.execute(text("DELETE FROM pgflow_rate_starts"))
    _started_ago(sql_backend, 100.0 + margin * 2, partition=part)
    assert len(sql_backend.claim_jobs(Q, "node-a", 3, shape=shape)) == 1


@pytest.mark.postgres
def test_a_global_limit_counts_the_queues_executing_jobs_from_their_own_index_entries(
    pg_backend: PostgresBackend,
) -> None:
    _fill(pg_backend, [{} for _ in range(20)])
    _fill(pg_backend, [{} for _ in range(200)], queue="busy")
    pg_backend.claim_jobs("busy", "node-b", 200)  # another queue's executing jobs
    assert len(pg_backend.claim_jobs(Q, "node-a", 5, shape=Queue(global_limit=10))) == 5
    params = {
        "p_queue": Q,
        "p_instance": "node-a",
        "p_incarnation": "",
        "p_limit": 10,
        "p_global": 10,
        "p_allowed": None,
        "p_period": None,
    }
    with pg_backend.engine.connect() as conn:
        driver: Any = conn.connection.driver_connection
        driver.execute("SET LOCAL enable_seqscan = off")  # a table this small: any index
        rows = driver.execute("EXPLAIN " + pg_backend._shaped_claim_sql, params).fetchall()
        driver.rollback()
    plan = [row[0].strip() for row in rows]
    count = plan.index(next(line for line in plan if line.startswith("->  Aggregate")))
    # The count reads the executing jobs of this queue only (the queue is the index's first
    # column), not every queue's as the rescue index by instance did.
    scan = " ".join(plan[count + 1 : count + 4])
    assert "pgflow_jobs_executing_idx" in scan, plan
    assert re.search(r"Index Cond: \(\(?queue\)?(::text)? = 'shaped'::text\)", scan), plan
