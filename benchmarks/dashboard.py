"""Suite "dashboard" (issue 13): every dashboard page against a million jobs on PostgreSQL.

`dashboard-postgres` fills a throw-away database with 1,000,000 jobs (one INSERT ... SELECT
over generate_series: 8 queues, 20 workers, every state, a week of history with the newest
rows in the last hour) and 10,000 runs, plus a stored flow run with its steps, instances, a
leader and a cron entry; then VACUUM ANALYZE, as autovacuum would. Each page is requested
through the ASGI app in process (Starlette's TestClient: routing, templates and every query,
no network), warm-up first, and timed per request: p50 and max. Counts by queue and state
(the one read that grows with the table) are computed when the dashboard starts and then
every 5 s on a background thread while the previous ones are served, so no page waits for
them; the overview and the queue page are also timed "cold" (no counts known yet: the page
says it is counting and fills them in live), /metrics cold waits for them (a scrape needs
numbers; no page target there), and the count query itself is timed on its own row.

Every SELECT a page sends is captured (SQLAlchemy's before_cursor_execute) and run again
under EXPLAIN (ANALYZE): the results file lists, per page, the indexes used and any
sequential scan of pgflow_jobs. Quick runs use 100,000 jobs and 1,000 runs.

Then the job path's cost of the dashboard's indexes: batches of 1,000 jobs inserted, claimed
and completed with 0008's partial indexes, with no dashboard index, and with full (queue,
state, id) and (worker, id) indexes, each in a fresh database, interleaved round by round.

A full run (not --quick) writes benchmarks/results/dashboard.md.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import postgres, report
from benchmarks.harness import MEDIAN, Benchmark, Row, RunContext, Target, require

RESULTS = Path(__file__).resolve().parent / "results" / "dashboard.md"
TARGET_NS = 200e6
MAX = "max_ns"


@dataclass(frozen=True)
class Sizes:
    jobs: int
    runs: int
    requests: int


FULL = Sizes(jobs=1_000_000, runs=10_000, requests=20)
QUICK = Sizes(jobs=100_000, runs=1_000, requests=5)

#: State by the row's number modulo 100: mostly history, as a busy store holds.
FILL_JOBS = """
INSERT INTO pgflow_jobs (queue, worker, args, state, priority, attempt, max_attempts,
    scheduled_at, reserved_by, errors, meta, unique_release, inserted_at, attempted_at,
    completed_at)
SELECT 'q' || (i %% 8),
       'app.workers.W' || (i %% 20),
       jsonb_build_object('user_id', i, 'email', 'user' || i || '@example.com'),
       s.state,
       0,
       CASE WHEN s.state IN ('available', 'scheduled', 'cancelled') THEN 0
            WHEN s.state = 'discarded' THEN 3 ELSE 1 END,
       3,
       t.at,
       CASE WHEN s.state IN ('executing', 'completed', 'discarded')
            THEN 'instance-' || (i %% 4) END,
       CASE WHEN s.state IN ('discarded', 'retryable') THEN jsonb_build_array(jsonb_build_object(
            'attempt', 1, 'at', t.at, 'kind', 'RuntimeError', 'message', 'failed ' || i,
            'traceback', 'Traceback (most recent call last):\n  ...\nRuntimeError',
            'instance_id', 'instance-' || (i %% 4))) ELSE '[]'::jsonb END,
       '{}'::jsonb,
       false,
       t.at,
       CASE WHEN s.state IN ('executing', 'completed', 'discarded', 'retryable')
            THEN t.at + interval '1 second' END,
       CASE WHEN s.state IN ('completed', 'discarded', 'cancelled')
            THEN t.at + interval '2 seconds' END
FROM generate_series(1, %(jobs)s) AS i,
LATERAL (SELECT now() - (%(jobs)s - i) * (interval '7 days' / %(jobs)s) AS at) AS t,
LATERAL (SELECT CASE
    WHEN i %% 100 < 70 THEN 'completed' WHEN i %% 100 < 80 THEN 'discarded'
    WHEN i %% 100 < 85 THEN 'cancelled' WHEN i %% 100 < 93 THEN 'available'
    WHEN i %% 100 < 96 THEN 'scheduled' WHEN i %% 100 < 98 THEN 'retryable'
    ELSE 'executing' END AS state) AS s
"""

FILL_RUNS = """
INSERT INTO pgflow_runs (workflow_id, workflow, state, attempt, max_attempts, input,
    started_at, finished_at)
SELECT 'run-' || i, 'flow_' || (i %% 5),
       (ARRAY['completed', 'completed', 'completed', 'failed', 'running'])[1 + i %% 5],
       1, 3, jsonb_build_object('n', i),
       now() - (%(runs)s - i) * interval '1 minute',
       CASE WHEN i %% 5 < 4 THEN now() - (%(runs)s - i) * interval '1 minute'
            + interval '3 seconds' END
FROM generate_series(1, %(runs)s) AS i
"""


def _require() -> None:
    require("pgflow.dashboard", "create_app")
    require("starlette.testclient", "TestClient")


def run_postgres(ctx: RunContext) -> list[Row]:
    _require()
    sizes = QUICK if ctx.quick else FULL
    with postgres.temporary_database(ctx.postgres_admin_url) as url:
        filled = _fill(url, sizes)
        rows, plans = _measure(url, filled, sizes)
    rows += _job_path(ctx.postgres_admin_url, *((1, 5) if ctx.quick else (5, 30)))
    if not ctx.quick:
        machine = report.machine_info(postgres.server_version(ctx.postgres_admin_url))
        write_results(RESULTS, machine, sizes, filled, rows, plans)
    return rows


@dataclass(frozen=True)
class Filled:
    """What `_fill` stored that the pages are asked about."""

    job_id: int
    run_id: str
    flow_run_id: str
    seconds: float


def _fill(url: str, sizes: Sizes) -> Filled:
    import psycopg

    import pgflow
    from pgflow.records import InstanceInfo, NewJob

    app = pgflow.Pgflow(url, queues={"q0": 1})  # never started: for migrate and start_run
    try:
        app.migrate()
        started = time.monotonic()
        with psycopg.connect(url.replace("+psycopg", ""), autocommit=True) as conn:
            conn.execute(FILL_JOBS, {"jobs": sizes.jobs})
            conn.execute(FILL_RUNS, {"runs": sizes.runs})
        flow_run = app.start_run(_flow(), {"count": 3}).workflow_id
        backend = app.backend
        for index in range(4):
            backend.register_instance(
                InstanceInfo(f"instance-{index}", "bench-host", 1000 + index, {"q0": 10})
            )
        backend.acquire_leadership("instance-0", 600)
        slot = backend.database_time().replace(second=0, microsecond=0)
        backend.insert_cron_job("app.workers.W1 */5 * * * *", slot, NewJob(worker="w"))
        with psycopg.connect(url.replace("+psycopg", ""), autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE pgflow_jobs")
            conn.execute("VACUUM ANALYZE pgflow_runs")
            row = conn.execute(
                "SELECT max(id) FROM pgflow_jobs WHERE state = 'discarded'"
            ).fetchone()
        assert row is not None
        return Filled(int(row[0]), f"run-{sizes.runs // 2}", flow_run, time.monotonic() - started)
    finally:
        app.close()


def _flow() -> Any:
    """A three-step flow (a map in the middle) whose run page draws its graph."""
    import pgflow

    flow = pgflow.Flow("bench_dashboard_flow", queue="q0")

    @flow.step
    def items(input: dict[str, int]) -> list[int]:
        return list(range(input["count"]))

    @flow.map(over="items")
    def double(item: int) -> int:
        return item * 2

    @flow.step(depends_on=["double"])
    def total(double: list[int]) -> int:
        return sum(double)

    return flow


def _pages(filled: Filled) -> list[tuple[str, str, bool]]:
    """(case, path, cold): cold ones drop the cached counts before each request."""
    return [
        ("overview, counts cached", "/", False),
        ("overview, counts cold", "/", True),
        ("queue page", "/queues/q3", False),
        ("queue page, counts cold", "/queues/q3", True),
        ("jobs, newest", "/jobs", False),
        ("jobs, queue filter", "/jobs?queue=q3", False),
        ("jobs, state filter (executing)", "/jobs?state=executing", False),
        ("jobs, queue + state (available)", "/jobs?queue=q5&state=available", False),
        ("jobs, state filter (discarded)", "/jobs?state=discarded", False),
        ("jobs, queue + state (retryable)", "/jobs?queue=q6&state=retryable", False),
        ("jobs, queue + state (scheduled)", "/jobs?queue=q1&state=scheduled", False),
        ("jobs, state filter (completed, newest 50k)", "/jobs?state=completed", False),
        ("jobs, worker filter (newest 50k)", "/jobs?worker=app.workers.W7", False),
        (
            "jobs, worker with no job (reads all newest 50k)",
            "/jobs?worker=app.workers.Gone",
            False,
        ),
        (
            "jobs, worker with no discarded job (reads all newest 50k discarded)",
            "/jobs?worker=app.workers.W7&state=discarded",
            False,
        ),
        ("jobs, args text (newest 50k)", "/jobs?q=user999999%40", False),
        ("jobs, page 2 (before=)", f"/jobs?queue=q2&before={filled.job_id // 2}", False),
        ("job detail", f"/jobs/{filled.job_id}", False),
        ("runs, newest", "/runs", False),
        ("runs, flow + state", "/runs?flow=flow_3&state=failed", False),
        ("run detail (graph)", f"/runs/{filled.flow_run_id}", False),
        ("run detail (no graph)", f"/runs/{filled.run_id}", False),
        ("instances + cron", "/instances", False),
        ("/metrics, cached", "/metrics", False),
        ("/metrics, first scrape (waits for the counts)", "/metrics", True),
        ("live fragment of overview", "/?fragment=live", False),
    ]


@contextmanager
def _captured(engine: Any) -> Iterator[list[tuple[str, Any]]]:
    """The SELECT statements sent through `engine` meanwhile, with their parameters."""
    from sqlalchemy import event

    seen: list[tuple[str, Any]] = []

    def record(
        _conn: Any, _cursor: Any, statement: str, parameters: Any, _ctx: Any, _many: bool
    ) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            seen.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


def _measure(url: str, filled: Filled, sizes: Sizes) -> tuple[list[Row], dict[str, list[str]]]:
    from starlette.testclient import TestClient

    from pgflow.dashboard import create_app

    app = create_app(url, cache_seconds=5.0)
    board = app.state.dashboard
    engine = board.backend.engine
    rows: list[Row] = []
    plans: dict[str, list[str]] = {}
    try:
        with TestClient(app) as client:
            for case, path, cold in _pages(filled):
                latencies = _time_page(
                    client, path, sizes.requests, (lambda: _forget(board)) if cold else None
                )
                page_target = not path.startswith("/metrics") or not cold
                rows.append(
                    Row(
                        "dashboard-postgres",
                        case,
                        metrics={
                            "n": float(len(latencies)),
                            MEDIAN: sorted(latencies)[len(latencies) // 2],
                            MAX: float(max(latencies)),
                        },
                        targets=(Target(MEDIAN, "<", TARGET_NS, "p50 < 200 ms"),)
                        if page_target
                        else (),
                        detail=f"GET {path}; max {report.format_duration(max(latencies))}",
                    )
                )
                if cold:
                    _forget(board)
                with _captured(engine) as statements:
                    assert client.get(path).status_code == 200
                plans[case] = _explain(engine, statements)
            rows.append(_count_row(board, sizes.requests))
            _forget(board)
            with _captured(engine) as statements:
                board.read.state_counts()
            plans["counts by queue and state (background query)"] = _explain(engine, statements)
    finally:
        board.backend.close()
    return rows, plans


def _forget(board: Any) -> None:
    """Drop the cached counts, once no background count is running (so none competes)."""
    for thread in threading.enumerate():
        if thread.name.startswith("pgflow-dashboard-"):
            thread.join(60)
    board.read.cache.forget()


def _count_row(board: Any, requests: int) -> Row:
    """The count query a background thread runs every 5 s, timed by itself."""
    latencies = []
    for _ in range(requests):
        start = time.perf_counter_ns()
        board.read.inspection.state_counts()
        latencies.append(float(time.perf_counter_ns() - start))
    return Row(
        "dashboard-postgres",
        "counts by queue and state (background query)",
        metrics={
            "n": float(len(latencies)),
            MEDIAN: sorted(latencies)[len(latencies) // 2],
            MAX: float(max(latencies)),
        },
        detail=f"inspection.state_counts(); max {report.format_duration(max(latencies))}",
    )


def _time_page(
    client: Any, path: str, requests: int, before: Callable[[], None] | None
) -> list[float]:
    for _ in range(2):  # warm-up: templates compiled, plans cached, pages in memory
        if before is not None:
            before()
        response = client.get(path)
        if response.status_code != 200:
            raise RuntimeError(f"GET {path} answered {response.status_code}: {response.text[:200]}")
    latencies: list[float] = []
    for _ in range(requests):
        if before is not None:
            before()
        start = time.perf_counter_ns()
        client.get(path)
        latencies.append(float(time.perf_counter_ns() - start))
    return latencies


_SCAN = re.compile(
    r"(Index Only Scan|Index Scan Backward|Index Scan|Bitmap Index Scan|Seq Scan)"
    r"(?: using| on) (\S+)(?: on (\S+))?"
)


def _explain(engine: Any, statements: list[tuple[str, Any]]) -> list[str]:
    """Each distinct SELECT's scans under EXPLAIN ANALYZE, with its execution time."""
    found: list[str] = []
    seen: set[str] = set()
    with engine.connect() as connection:
        for statement, parameters in statements:
            if statement in seen:
                continue
            seen.add(statement)
            lines = [
                row[0]
                for row in connection.exec_driver_sql(
                    "EXPLAIN (ANALYZE, TIMING OFF, SUMMARY ON) " + statement, parameters
                )
            ]
            scans = sorted(
                {
                    " ".join(part for part in match.groups() if part)
                    for line in lines
                    for match in [_SCAN.search(line)]
                    if match
                }
            )
            executed = next((line for line in lines if line.startswith("Execution Time")), "")
            found.append(
                f"{_label(statement)}: {', '.join(scans) or 'no scan'} ({executed.lower()})"
            )
        connection.rollback()
    return found


def _label(statement: str) -> str:
    """The table and the gist of a statement: its WHERE and GROUP BY, shortened."""
    flat = re.sub(r"%\((\w+?)(?:_\d+)*\)s", r":\1", " ".join(statement.split()))
    table = re.search(r"FROM (\w+)", flat)
    where = re.search(r" WHERE (.*?)(?: ORDER BY| GROUP BY| LIMIT|$)", flat)
    group = re.search(r" GROUP BY (.*?)(?: ORDER BY| LIMIT|$)", flat)
    parts = [table.group(1) if table else "?"]
    if where:
        parts.append(f"where {where.group(1)[:70]}")
    if group:
        parts.append(f"group by {group.group(1)[:50]}")
    return " ".join(parts).replace("|", "/")


# --- the job path's cost ------------------------------------------------------------------

_PARTIAL = ("pgflow_jobs_failed_idx", "pgflow_jobs_failed_queue_idx")
#: The dashboard's indexes as first written: every claim and completion added an entry to each.
_FULL = (
    "CREATE INDEX pgflow_jobs_queue_state_idx ON pgflow_jobs (queue, state, id)",
    "CREATE INDEX pgflow_jobs_worker_idx ON pgflow_jobs (worker, id)",
)
#: (indexes dropped after migrating, statements run after that) per variant.
_VARIANTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "0008's partial indexes": ((), ()),
    "no dashboard index": (_PARTIAL, ()),
    "full (queue, state, id), (worker, id)": (_PARTIAL, _FULL),
}
JOB_PATH = "job path"


def _job_path(admin_url: str, rounds: int, batches: int) -> list[Row]:
    """Insert 1,000 jobs, then claim and complete them 100 at a time, `batches` times, in a
    fresh database per variant; variants interleaved `rounds` times (the machine is shared,
    so a slow minute hits every variant). Figures: medians of the rounds' medians."""
    found: dict[str, tuple[list[float], list[float]]] = {v: ([], []) for v in _VARIANTS}
    for _ in range(rounds):
        for variant, (drops, creates) in _VARIANTS.items():
            insert, settle = _job_path_once(admin_url, drops, creates, batches)
            found[variant][0].append(insert)
            found[variant][1].append(settle)
    rows = []
    for variant, (inserts, settles) in found.items():
        for what, figures in (("insert 1,000", inserts), ("claim + complete 100", settles)):
            rows.append(
                Row(
                    "dashboard-postgres",
                    f"{JOB_PATH}, {variant}: {what}",
                    metrics={"n": float(len(figures)), MEDIAN: _median(figures)},
                    detail=f"median of {rounds} rounds of {batches} batches",
                )
            )
    return rows


def _job_path_once(
    admin_url: str, drops: tuple[str, ...], creates: tuple[str, ...], batches: int
) -> tuple[float, float]:
    import psycopg
    from psycopg import sql

    from pgflow.records import NewJob
    from pgflow_backends.postgres import PostgresBackend

    inserts: list[float] = []
    settles: list[float] = []
    with postgres.temporary_database(admin_url) as url:
        backend = PostgresBackend(url)
        try:
            backend.migrate()
            with psycopg.connect(url.replace("+psycopg", ""), autocommit=True) as conn:
                for name in drops:
                    conn.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(name)))
                for statement in creates:
                    conn.execute(statement)
            for batch in range(batches):
                jobs = [NewJob(worker="w", args={"n": batch * 1000 + i}) for i in range(1000)]
                start = time.perf_counter_ns()
                backend.insert_jobs(jobs)
                inserts.append(float(time.perf_counter_ns() - start))
                for _ in range(10):
                    start = time.perf_counter_ns()
                    claimed = backend.claim_jobs("default", "bench-instance", 100)
                    backend.complete_jobs([job.ref for job in claimed])
                    settles.append(float(time.perf_counter_ns() - start))
        finally:
            backend.close()
    return _median(inserts), _median(settles)


def _median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


# --- results file -------------------------------------------------------------------------


def write_results(
    path: Path,
    machine: dict[str, Any],
    sizes: Sizes,
    filled: Filled,
    rows: list[Row],
    plans: dict[str, list[str]],
) -> None:
    """The figures and plans as Markdown, for benchmarks/results/ (full runs only)."""
    lines = [
        "# Dashboard pages on a million jobs (`python -m benchmarks --only dashboard`)",
        "",
        f"{machine['date']}; {machine['cpu_count']} CPUs, {machine['cpu_model']}; "
        f"{machine['python']}; {machine['postgresql']}; load average when written "
        f"{os.getloadavg()[0]:.1f} (other work shares the machine)",
        "",
        f"{sizes.jobs:,} jobs (8 queues, 20 workers, every state, a week of history), "
        f"{sizes.runs:,} runs; filled and vacuumed in {filled.seconds:.0f} s. Each page "
        f"requested {sizes.requests} times through the ASGI app in process after 2 warm-ups; "
        '"cold" drops the cached counts before every request (a page then says it is counting '
        "and fills them in live; /metrics waits for them). Counts are computed when the "
        "dashboard starts, then every 5 s on a background thread while the previous ones are "
        "served: the last row times that query alone. Target for pages: p50 < 200 ms.",
        "",
        "| page | p50 | max | target |",
        "|---|---|---|---|",
    ]
    pages = [row for row in rows if not row.case.startswith(JOB_PATH)]
    for row in pages:
        median = report.format_duration(row.metrics[MEDIAN]) if MEDIAN in row.metrics else ""
        top = report.format_duration(row.metrics[MAX]) if MAX in row.metrics else ""
        what = row.detail.split(";")[0].removeprefix("GET ")
        lines.append(f"| {row.case} (`{what}`) | {median} | {top} | {row.verdict()} |")
    lines += [
        "",
        "## The job path's cost of the dashboard's indexes",
        "",
        "Each variant in a fresh database: batches of 1,000 jobs inserted, then claimed and "
        "completed 100 at a time; variants interleaved round by round. Medians of the rounds' "
        "medians (the issue: no measurable cost on the job path).",
        "",
        "| indexes on pgflow_jobs | insert 1,000 | claim + complete 100 |",
        "|---|---|---|",
    ]
    for variant in _VARIANTS:
        cells = [
            report.format_duration(row.metrics[MEDIAN])
            for row in rows
            if row.case.startswith(f"{JOB_PATH}, {variant}:")
        ]
        lines.append(f"| {variant} | {' | '.join(cells)} |")
    lines += ["", "## Query plans (EXPLAIN ANALYZE of every SELECT a page sends)", ""]
    for case, found in plans.items():
        lines.append(f"- **{case}**")
        lines += [f"  - {line}" for line in found]
    lines.append("")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))


BENCHMARKS = [
    Benchmark(
        "dashboard-postgres",
        "dashboard",
        "every dashboard page via the ASGI app on 1,000,000 jobs and 10,000 runs (p50 < 200 ms)",
        run_postgres,
    ),
]
