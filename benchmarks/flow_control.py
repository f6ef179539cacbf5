"""Suite "flow-control" (issue 12): what a shaped queue's claim costs, on PostgreSQL.

`flow-control-postgres` drains pre-inserted no-op jobs with two worker processes
(`--concurrency` slots each, default 100), exactly as the `drain-postgres` benchmark does,
once per queue shape:

- plain: `{queue: slots}`, the baseline;
- global limit: `pgflow.Queue(slots, global_limit=1000)`, a limit the 2 x 100 slots never
  reach, so the figure is the cost of the shaped claim (queue lock, executing count) alone;
- partitions: `partition_by="tenant"` over 100 tenants, without and with a per-partition
  limit (10, which 100 tenants and 200 slots never reach either): the round-robin claim;
- rate: `rate_limit=(1000, 1.0)`, which does bind: its figure is the sustained rate,
  (jobs - 1000) / (last start - first start) from the starts the claims recorded
  (`attempted_at`): the first window's 1,000 start at once, then 1,000 a second.

The drains run in interleaved rounds (plain, then each shape, then again), so a busy moment
of the shared machine falls on every case; each case's figure is its median round. A full
run (not --quick) also writes the table to benchmarks/results/flow-control.md.
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from benchmarks import postgres, report
from benchmarks.backends import Opened, open_backend
from benchmarks.harness import RATE, SECONDS, Benchmark, Row, RunContext, Target, require

RESULTS = Path(__file__).resolve().parent / "results" / "flow-control.md"
TENANTS = 100
GLOBAL_LIMIT = 1_000
PARTITION_LIMIT = 10
RATE_ALLOWED, RATE_PERIOD = 1_000, 1.0
#: A shaped claim may cost this much against the plain drain (throughput >= plain / this).
SLOWDOWN_TARGET = 1.5
RATE_TARGET = 950.0
PROCESSES = 2
DRAIN_TIMEOUT = 180.0


@dataclass(frozen=True)
class Case:
    """One queue shape to drain."""

    name: str
    label: str
    #: `pgflow.Queue` keyword arguments beside `limit` (empty: a plain int queue).
    options: dict[str, Any]
    partitioned: bool = False


PLAIN = Case("plain", "plain queue", {})
SHAPED = (
    Case("global", f"global_limit={GLOBAL_LIMIT:,}", {"global_limit": GLOBAL_LIMIT}),
    Case(
        "partitions",
        f"partition_by, {TENANTS} tenants",
        {"partition_by": "tenant"},
        partitioned=True,
    ),
    Case(
        "partition-limit",
        f"partition_by, {TENANTS} tenants, partition_limit={PARTITION_LIMIT}",
        {"partition_by": "tenant", "partition_limit": PARTITION_LIMIT},
        partitioned=True,
    ),
)
RATE_CASE = Case(
    "rate",
    f"rate_limit=({RATE_ALLOWED:,}, {RATE_PERIOD:g}) sustained",
    {"rate_limit": (RATE_ALLOWED, RATE_PERIOD)},
)


@dataclass(frozen=True)
class Drained:
    """What one drain took, by the database's stamps."""

    seconds: float
    first_start: datetime
    last_start: datetime
    starts: list[datetime]


def _queues(case: Case, queue: str, slots: int) -> dict[str, Any]:
    if not case.options:
        return {queue: slots}
    queue_class = require("pgflow", "Queue")
    return {queue: queue_class(limit=slots, **case.options)}


def _args(case: Case, i: int) -> dict[str, Any]:
    return {"i": i, "tenant": f"t{i % TENANTS}"} if case.partitioned else {"i": i}


def _insert(opened: Opened, case: Case, queue: str, total: int) -> None:
    noop = require("benchmarks.jobs", "Noop")
    for start in range(0, total, 1_000):
        stop = min(start + 1_000, total)
        jobs = [noop.new(_args(case, i), queue=queue) for i in range(start, stop)]
        opened.backend.insert_jobs(jobs)


def _progress(url: str, queue: str) -> tuple[int, Any]:
    """(jobs completed, the last completion) of `queue`, from the database."""
    import psycopg

    with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
        row = conn.execute(
            "SELECT count(*), max(completed_at) FROM pgflow_jobs "
            "WHERE queue = %s AND state = 'completed'",
            (queue,),
        ).fetchone()
    assert row is not None
    return int(row[0]), row[1]


def _starts(url: str, queue: str) -> list[datetime]:
    import psycopg

    with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
        rows = conn.execute(
            "SELECT attempted_at FROM pgflow_jobs WHERE queue = %s ORDER BY attempted_at",
            (queue,),
        ).fetchall()
    return [row[0] for row in rows]


def _drain(opened: Opened, case: Case, queue: str, total: int, slots: int) -> Drained:
    """Drain `total` pre-inserted jobs of `queue` shaped as `case` with two processes."""
    from benchmarks.distributed import worker_processes

    _insert(opened, case, queue, total)
    with worker_processes(opened.url, PROCESSES, _queues(case, queue, slots), {}) as group:
        started_wall = time.time()
        started = time.perf_counter()
        deadline = started + DRAIN_TIMEOUT
        while (done := _progress(opened.url, queue))[0] < total:
            if time.perf_counter() > deadline:
                raise RuntimeError(
                    f"{case.name}: only {done[0]}/{total} jobs completed in {DRAIN_TIMEOUT:.0f} s"
                )
            group.check_alive()
            time.sleep(0.02)
        polled = time.perf_counter() - started
    last = done[1]
    seconds = polled
    # The database's completion stamp is finer than our polling; trust it when it is sane.
    if last is not None and 0 < last.timestamp() - started_wall <= polled:
        seconds = last.timestamp() - started_wall
    starts = _starts(opened.url, queue)
    return Drained(seconds, starts[0], starts[-1], starts)


def busiest_window(stamps: list[datetime], seconds: float) -> int:
    """The most stamps inside any window [t, t + seconds) (sorted stamps)."""
    width = timedelta(seconds=seconds)
    most = first = 0
    for last, stamp in enumerate(stamps):
        while stamp - stamps[first] >= width:
            first += 1
        most = max(most, last - first + 1)
    return most


def sustained_rate(drained: Drained, total: int) -> float:
    """Starts per second after the first window's burst: (total - allowed) over the time
    from the first start to the last."""
    span = (drained.last_start - drained.first_start).total_seconds()
    return (total - RATE_ALLOWED) / span if span > 0 else float("inf")


def run_postgres(ctx: RunContext) -> list[Row]:
    require("pgflow", "Queue")
    total = ctx.size(10_000, 2_000)
    rounds = 1 if ctx.quick else 3
    rate_total = ctx.size(10_000, 3_000)
    slots = ctx.worker_concurrency
    seconds: dict[str, list[float]] = {case.name: [] for case in (PLAIN, *SHAPED)}
    load_before = os.getloadavg()[0]
    with open_backend("postgres", ctx) as opened:
        for round_ in range(rounds):
            for case in (PLAIN, *SHAPED):
                queue = f"fc_{case.name.replace('-', '_')}_{round_}"
                seconds[case.name].append(_drain(opened, case, queue, total, slots).seconds)
        rate = _drain(opened, RATE_CASE, "fc_rate", rate_total, slots)
    rows = _rows(seconds, total, rate, rate_total, slots)
    if not ctx.quick:
        machine = report.machine_info(postgres.server_version(ctx.postgres_admin_url))
        load = f"load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after"
        write_results(RESULTS, machine, rows, rounds, load)
    return rows


def _rows(
    seconds: dict[str, list[float]], total: int, rate: Drained, rate_total: int, slots: int
) -> list[Row]:
    where = f"{PROCESSES} proc x {slots} slots"
    plain_rate = total / statistics.median(seconds[PLAIN.name])
    rows = []
    for case in (PLAIN, *SHAPED):
        median = statistics.median(seconds[case.name])
        rounds = " / ".join(f"{total / value:,.0f}" for value in seconds[case.name])
        figure = total / median
        targets: tuple[Target, ...] = ()
        if case is not PLAIN:
            floor = plain_rate / SLOWDOWN_TARGET
            targets = (
                Target(RATE, ">=", floor, f">= plain/{SLOWDOWN_TARGET:g} ({floor:,.0f} jobs/s)"),
            )
        rows.append(
            Row(
                "flow-control-postgres",
                f"drain {total:,} jobs, {case.label}, {where}",
                {"n": float(total), RATE: figure, SECONDS: median, "vs_plain": figure / plain_rate},
                "jobs/s",
                targets,
                detail=f"{figure / plain_rate:.2f}x plain; rounds: {rounds} jobs/s",
            )
        )
    sustained = sustained_rate(rate, rate_total)
    busiest = busiest_window(rate.starts, RATE_PERIOD)
    rows.append(
        Row(
            "flow-control-postgres",
            f"{rate_total:,} jobs, {RATE_CASE.label}, {where}",
            {"n": float(rate_total), RATE: sustained, "busiest_window": float(busiest)},
            "starts/s",
            (Target(RATE, ">=", RATE_TARGET, f">= {RATE_TARGET:,.0f} starts/s"),),
            detail=f"busiest {RATE_PERIOD:g} s window of claims: {busiest:,} starts",
        )
    )
    return rows


# --- results file -------------------------------------------------------------------------

HOW = (
    "- Each drain: no-op jobs (`benchmarks.jobs.Noop`) inserted first, then two worker "
    "processes (spawned, ready, started together) drain them; the time runs from the start "
    "signal to the last `completed_at` the database recorded, as `drain-postgres` measures.",
    "- The four drains run in interleaved rounds; each figure is the median round. The "
    "global and per-partition limits are set where 2 x 100 slots never reach them, so those "
    "rows are the cost of the shaped claim (the queue's advisory lock, counting what "
    "executes, the round-robin over partitions).",
    "- The rate row is the sustained rate, (jobs - 1,000) / (last start - first start), from "
    "the starts the claims recorded (`attempted_at`, the database's clock): the first window "
    "lets 1,000 start at once, then the window slides.",
)


def write_results(
    path: Path, machine: dict[str, Any], rows: list[Row], rounds: int, load: str
) -> None:
    """The figures as Markdown, for benchmarks/results/ (full runs only); `load` says how
    busy the (shared) machine was, which moves these figures more than anything else."""
    lines = [
        "# Flow control on PostgreSQL (`python -m benchmarks --only flow-control`)",
        "",
        f"{machine['date']}; {machine['cpu_count']} CPUs, {machine['cpu_model']}; "
        f"{machine['python']}; {machine['postgresql']}; median of {rounds} rounds; {load}",
        "",
        "| case | throughput | detail | target | result |",
        "|---|---:|---|---|---|",
    ]
    for row in rows:
        figure = f"{row.metrics[RATE]:,.0f} {row.rate_unit}"
        target = "; ".join(t.label for t in row.targets) or "-"
        lines.append(f"| {row.case} | {figure} | {row.detail} | {target} | {row.verdict()} |")
    lines += ["", *HOW, ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))


BENCHMARKS = [
    Benchmark(
        "flow-control-postgres",
        "flow-control",
        "drain with a global limit, partitions, a per-partition limit against a plain queue "
        "(2 processes); sustained rate_limit of 1,000/s",
        run_postgres,
    ),
]
