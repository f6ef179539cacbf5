"""Suite "steered" (issue 11): steering distributed runs on PostgreSQL.

`steered-postgres` measures, in a throw-away database:

- signal-to-resume: runs of `approval (wait_for) -> resumed` started one at a time on an
  idle worker process (queue limit 10); the figure runs from just before `app.signal` is
  called to the moment `resumed`'s function starts in the worker. Both ends read
  `time.monotonic_ns()`, CLOCK_MONOTONIC on Linux, one clock for every process of the host.
  The call of `app.signal` itself (its commit settles the wait and queues the next task) is
  a row of its own.
- cancel mid-map: runs of `elements -> element (map of 1,000, each sleeping 10 ms) ->
  gather` served by two worker processes (10 slots each), cancelled with `app.cancel_run`
  once 30% of the elements completed; the wall time of the call, and the rows its
  transaction wrote: those whose `xmin` is the cancel's transaction (read from the run's
  row at once), plus the executing jobs it flagged `cancel_requested` (whose rows their
  workers may rewrite right after).

A full run (not --quick) also writes the table to benchmarks/results/steered.md.
"""

from __future__ import annotations

import multiprocessing
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from queue import Empty
from typing import Any

from benchmarks import postgres, report
from benchmarks.harness import (
    MEDIAN,
    P95,
    P99,
    Benchmark,
    Row,
    RunContext,
    Skip,
    Target,
    latency_metrics,
    require,
)

RESULTS = Path(__file__).resolve().parent / "results" / "steered.md"
FLOWS_MODULE = "benchmarks.steered_flows"
#: Slots of each worker process on the benchmark's queue.
SLOTS = 10
#: How long one element of the cancelled map sleeps.
ELEMENT_SECONDS = 0.01
#: The share of the map's elements completed when the cancel is sent.
CANCEL_AT = 0.3
#: Upper bound on any single wait of the suite (a sample, a run reaching its cancel point).
PATIENCE = 120.0


@dataclass(frozen=True)
class Sizes:
    """How much each measurement does."""

    signals: int
    signal_warmup: int
    cancels: int
    map_width: int


FULL = Sizes(signals=200, signal_warmup=10, cancels=7, map_width=1_000)
QUICK = Sizes(signals=50, signal_warmup=5, cancels=3, map_width=1_000)


def _require_engine() -> None:
    from benchmarks import steered_flows

    if steered_flows.MISSING:
        raise Skip(steered_flows.MISSING)
    pgflow_app = require("pgflow.app", "Pgflow")
    if not hasattr(pgflow_app, "signal"):
        raise Skip("not measured: app.signal missing")


def run_postgres(ctx: RunContext) -> list[Row]:
    _require_engine()
    import pgflow

    sizes = QUICK if ctx.quick else FULL
    with postgres.temporary_database(ctx.postgres_admin_url) as url:
        app = pgflow.Pgflow(url, queues={"steered_unused": 1})  # never started
        try:
            app.migrate()
            rows = _signal_rows(app, url, sizes) + _cancel_rows(app, url, sizes)
        finally:
            app.close()
    if not ctx.quick:
        machine = report.machine_info(postgres.server_version(ctx.postgres_admin_url))
        write_results(RESULTS, machine, rows)
    return rows


def _workers(url: str, count: int, queue: str, sink: Any = None) -> Any:
    from benchmarks.distributed import worker_processes

    return worker_processes(url, count, {queue: SLOTS}, {"imports": [FLOWS_MODULE]}, sink)


# --- signal-to-resume ---------------------------------------------------------------------


def _signal_rows(app: Any, url: str, sizes: Sizes) -> list[Row]:
    from benchmarks.steered_flows import FLOWS, SIGNAL_QUEUE, WAIT_STEP

    flow = FLOWS["signal"]
    sink = multiprocessing.get_context("spawn").Queue()
    resumes: list[int] = []
    calls: list[int] = []
    with _workers(url, 1, SIGNAL_QUEUE, sink) as group:
        for seq in range(sizes.signal_warmup + sizes.signals):
            handle = app.start_run(flow, {"seq": seq})
            called = time.monotonic_ns()
            delivered = app.signal(handle.workflow_id, WAIT_STEP, {"seq": seq})
            returned = time.monotonic_ns()
            if delivered is not True:
                raise RuntimeError(f"run {handle.workflow_id}: the signal was not delivered")
            started = _await_start(sink, seq, group.check_alive)
            handle.result(timeout=PATIENCE)  # the worker is idle again before the next run
            if seq >= sizes.signal_warmup:
                resumes.append(started - called)
                calls.append(returned - called)
    call_metrics = latency_metrics(calls)
    return [
        Row(
            "steered-postgres",
            "signal-to-resume: app.signal -> next step starts, 1 worker process",
            latency_metrics(resumes),
            detail=f"of which the app.signal call p50 {_ms(call_metrics[MEDIAN])}",
            targets=(Target(MEDIAN, "<", 5e6, "p50 < 5 ms"),),
        ),
        Row(
            "steered-postgres",
            "app.signal call (settles the wait, queues the next)",
            call_metrics,
        ),
    ]


def _await_start(sink: Any, seq: int, check_alive: Callable[[], None]) -> int:
    """The worker's start stamp of run `seq`'s resumed step."""
    deadline = time.monotonic() + PATIENCE
    while True:
        try:
            got, started = sink.get(timeout=0.5)
        except Empty:
            check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"run {seq}: its next step never started") from None
            continue
        if got == seq:
            return int(started)


# --- cancel mid-map -----------------------------------------------------------------------


@dataclass(frozen=True)
class Cancelled:
    """One cancel: its wall time, the rows its transaction wrote, how far the map was."""

    wall_ns: int
    jobs: int
    flagged: int
    steps: int
    runs: int
    done: int

    @property
    def rows(self) -> int:
        return self.jobs + self.steps + self.runs


def _cancel_rows(app: Any, url: str, sizes: Sizes) -> list[Row]:
    from benchmarks.steered_flows import CANCEL_QUEUE, FLOWS

    flow = FLOWS["cancel"]
    width = sizes.map_width
    threshold = max(1, int(width * CANCEL_AT))
    samples: list[Cancelled] = []
    with _workers(url, 2, CANCEL_QUEUE) as group:
        for _ in range(sizes.cancels):
            handle = app.start_run(flow, {"count": width, "seconds": ELEMENT_SECONDS})
            run = handle.workflow_id
            _poll(url, _OUTPUTS, run, lambda done: done >= threshold, group.check_alive)
            began = time.perf_counter_ns()
            record = app.cancel_run(run)
            wall = time.perf_counter_ns() - began
            jobs, flagged, steps, runs = _written(url, run)
            if str(record.state) != "cancelled":
                raise RuntimeError(f"run {run} is {record.state} after cancel_run")
            done = record.steps["element"].tasks_done
            samples.append(Cancelled(wall, jobs, flagged, steps, runs, done))
            # The elements running at the cancel end before the next run is timed.
            _poll(url, _UNFINISHED, run, lambda left: left == 0, group.check_alive)
    metrics = latency_metrics([sample.wall_ns for sample in samples])
    middle = sorted(samples, key=lambda sample: sample.wall_ns)[len(samples) // 2]
    metrics |= {
        "rows_written_median": statistics.median(sample.rows for sample in samples),
        "jobs_written_median": statistics.median(sample.jobs for sample in samples),
        "elements_done_median": statistics.median(sample.done for sample in samples),
    }
    return [
        Row(
            "steered-postgres",
            f"app.cancel_run mid-map of {width:,} (2 worker processes)",
            metrics,
            detail=(
                f"median run: {middle.done:,} elements done, wrote {middle.rows:,} rows "
                f"({middle.jobs:,} jobs, {middle.flagged} of them executing and flagged, "
                f"{middle.steps} steps, {middle.runs} run)"
            ),
        )
    ]


_OUTPUTS = "SELECT count(*) FROM pgflow_task_outputs WHERE workflow_id = %s"
_UNFINISHED = (
    "SELECT count(*) FROM pgflow_jobs WHERE workflow_id = %s "
    "AND state IN ('available', 'scheduled', 'executing', 'retryable')"
)


def _poll(
    url: str, sql: str, run: str, done: Callable[[int], bool], check_alive: Callable[[], None]
) -> None:
    """Re-read a count of `run` every 5 ms until `done(count)`, bounded by PATIENCE."""
    import psycopg

    deadline = time.monotonic() + PATIENCE
    with psycopg.connect(url, autocommit=True) as conn:
        while True:
            row = conn.execute(sql, (run,)).fetchone()
            if done(int(row[0]) if row else 0):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"run {run}: {sql!r} never reached its mark")
            check_alive()
            time.sleep(0.005)


def _written(url: str, run: str) -> tuple[int, int, int, int]:
    """Jobs (and of them, executing ones flagged), step states and runs the cancel's
    transaction wrote (see the module doc)."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            """
            WITH cancel AS (SELECT xmin::text AS xid FROM pgflow_runs WHERE workflow_id = %(run)s)
            SELECT
              (SELECT count(*) FROM pgflow_jobs, cancel WHERE workflow_id = %(run)s
                 AND (xmin::text = cancel.xid OR (meta ->> 'cancel_requested')::boolean)),
              (SELECT count(*) FROM pgflow_jobs WHERE workflow_id = %(run)s
                 AND (meta ->> 'cancel_requested')::boolean),
              (SELECT count(*) FROM pgflow_step_states, cancel WHERE workflow_id = %(run)s
                 AND xmin::text = cancel.xid),
              (SELECT count(*) FROM pgflow_runs, cancel WHERE xmin::text = cancel.xid)
            """,
            {"run": run},
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2]), int(row[3])


def _ms(ns: float) -> str:
    return f"{ns / 1e6:.2f} ms"


# --- results file -------------------------------------------------------------------------

#: How the figures are taken, under the table of the results file.
HOW = (
    "- signal-to-resume: runs of `approval (wait_for) -> resumed`, one at a time, on an idle "
    f"worker process (queue limit {SLOTS}); from just before `app.signal` is called to the "
    "first line of `resumed` in the worker (`time.monotonic_ns()` at both ends, one clock "
    "for every process of the host); warm-up runs first.",
    f"- cancel: `elements -> element (map, {ELEMENT_SECONDS * 1000:g} ms each) -> gather` on "
    f"two worker processes x {SLOTS} slots, `app.cancel_run` once {CANCEL_AT:.0%} of the "
    "elements completed; rows written = rows whose `xmin` is the cancel's transaction, plus "
    "the executing jobs it flagged `cancel_requested`.",
)


def write_results(path: Path, machine: dict[str, Any], rows: list[Row]) -> None:
    """The figures as Markdown, for benchmarks/results/ (full runs only)."""
    lines = [
        "# Steered runs on PostgreSQL (`python -m benchmarks --only steered`)",
        "",
        f"{machine['date']}; {machine['cpu_count']} CPUs, {machine['cpu_model']}; "
        f"{machine['python']}; {machine['postgresql']}",
        "",
        "| case | n | p50 | p95 | p99 | detail |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        metrics = row.metrics
        cells = [
            report.format_duration(metrics[key]) if key in metrics else ""
            for key in (MEDIAN, P95, P99)
        ]
        count = f"{metrics['n']:,.0f}" if "n" in metrics else ""
        detail = row.detail or row.verdict()
        lines.append(f"| {row.case} | {count} | {' | '.join(cells)} | {detail} |")
    lines += ["", *HOW, ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))


BENCHMARKS = [
    Benchmark(
        "steered-postgres",
        "steered",
        "signal-to-resume latency (1 worker process) and app.cancel_run mid 1,000-element map",
        run_postgres,
    ),
]
