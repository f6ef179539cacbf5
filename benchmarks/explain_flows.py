"""EXPLAIN ANALYZE of the flow settle's hot statements at scale (issue 10's storage check).

    python -m benchmarks.explain_flows postgresql://postgres@127.0.0.1/postgres

Makes a scratch database, fills it with a million finished task jobs (and their outputs
and step states) of 10,000 finished runs, starts one run whose map has 10,000 elements,
completes half of them, then prints the plan of each statement a completion, a settle and
a sweep run.
The database is dropped at the end.
"""

from __future__ import annotations

import json
import secrets
import sys
import time

import psycopg
from psycopg import sql

import pgflow
from pgflow.graph.ready import plan_fingerprint
from pgflow.records import TaskCompletion
from pgflow_backends.postgres import PostgresBackend
from pgflow_backends.postgres_flow_rows import (
    _COMPLETE_TASKS,
    _COUNT_TASKS,
    _MAP_OUTPUTS,
    _RELEASE,
    _SETTLE_SINGLES,
    _STORE_OUTPUTS,
)

WIDTH = 10_000
FINISHED_RUNS = 10_000
TASKS_PER_RUN = 100

flow = pgflow.Flow("explain_map")


@flow.step
def pages(input: int) -> list[int]:
    return list(range(input))


@flow.map(over="pages")
def score(item: int) -> int:
    return item


@flow.step(depends_on=["score"])
def total(score: list[int]) -> int:
    return sum(score)


_FILL = """
INSERT INTO pgflow_runs (workflow_id, workflow, state, attempt, max_attempts, input,
                         started_at, finished_at, fingerprint, remaining_steps)
SELECT 'old-' || r, 'explain_map', 'completed', 1, 3, '1', now(), now(), 'f', 0
FROM generate_series(1, %(runs)s) AS r;
INSERT INTO pgflow_jobs (queue, worker, args, state, priority, attempt, max_attempts,
                         scheduled_at, errors, meta, inserted_at, completed_at,
                         workflow_id, step, task_index)
SELECT 'default', 'pgflow.flow:explain_map', '{}', 'completed', 0, 1, 3, now(), '[]', '{}',
       now(), now(), 'old-' || r, 'score', t
FROM generate_series(1, %(runs)s) AS r, generate_series(0, %(tasks)s - 1) AS t;
INSERT INTO pgflow_step_states (workflow_id, step, step_index, kind, state, remaining_deps,
                                tasks_total, tasks_done, attempts, completed_at)
SELECT 'old-' || r, s.name, s.idx, s.kind, 'completed', 0, s.total, s.total, 1, now()
FROM generate_series(1, %(runs)s) AS r,
     (VALUES ('pages', 0, 'step', 1), ('score', 1, 'map', %(tasks)s), ('total', 2, 'step', 1))
     AS s(name, idx, kind, total);
INSERT INTO pgflow_task_outputs (workflow_id, step, task_index, output)
SELECT 'old-' || r, 'score', t, to_jsonb(t)
FROM generate_series(1, %(runs)s) AS r, generate_series(0, %(tasks)s - 1) AS t;
ANALYZE;
"""


def main(admin_url: str) -> None:
    name = f"pgflow_explain_{secrets.token_hex(4)}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = admin_url.rsplit("/", 1)[0] + "/" + name
    backend = PostgresBackend(url)
    try:
        backend.migrate()
        started = time.perf_counter()
        with psycopg.connect(url, autocommit=True) as conn:
            params = {"runs": FINISHED_RUNS, "tasks": TASKS_PER_RUN}
            for statement in _FILL.split(";"):
                if statement.strip():
                    conn.execute(statement, params if "%(" in statement else None)
        print(
            f"filled {FINISHED_RUNS * TASKS_PER_RUN:,} finished tasks in "
            f"{time.perf_counter() - started:.1f} s"
        )
        plans = {plan_fingerprint(flow.plan): flow.plan}
        backend.start_flow_run(flow.plan, workflow_id="big", input=WIDTH, max_attempts=3)
        (root,) = backend.claim_jobs("default", "explain", 1)
        elements = json.dumps(list(range(WIDTH)))
        backend.complete_tasks([TaskCompletion(root.ref, root.task, elements)], plans)
        jobs = backend.claim_jobs("default", "explain", WIDTH)
        half = jobs[: WIDTH // 2]
        for start in range(0, len(half), 500):
            batch = half[start : start + 500]
            backend.complete_tasks([TaskCompletion(j.ref, j.task, "1") for j in batch], plans)
        rest = jobs[WIDTH // 2 : WIDTH // 2 + 50]
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("ANALYZE")
            _explain(conn, rest)
    finally:
        backend.close()
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def _explain(conn: psycopg.Connection, batch: list) -> None:  # type: ignore[type-arg]
    runs = [j.task.workflow_id for j in batch]
    steps = [j.task.step for j in batch]
    statements = {
        "lock the runs": (
            "SELECT workflow_id, state FROM pgflow_runs WHERE workflow_id IN ('big') "
            "ORDER BY workflow_id FOR NO KEY UPDATE",
            {},
        ),
        "complete 50 task jobs (fenced)": (
            _COMPLETE_TASKS,
            {
                "ids": [j.id for j in batch],
                "attempts": [j.attempt for j in batch],
                "claimed": [j.ref.claimed_at for j in batch],
                "runs": runs,
                "steps": steps,
                "indexes": [j.task.index for j in batch],
            },
        ),
        "store 50 element outputs": (
            _STORE_OUTPUTS,
            {
                "runs": runs,
                "steps": steps,
                "indexes": [j.task.index for j in batch],
                "outputs": ["1"] * len(batch),
            },
        ),
        "count them on the map step": (
            _COUNT_TASKS,
            {"runs": ["big"], "steps": ["score"], "counts": [50], "attempts": [1]},
        ),
        "settle a single-task step": (
            _SETTLE_SINGLES,
            {
                "runs": ["big"],
                "steps": ["pages"],
                "states": ["completed"],
                "outputs": ["1"],
                "reasons": [None],
                "attempts": [1],
            },
        ),
        "release a dependent": (
            _RELEASE,
            {"runs": ["big"], "steps": ["total"], "counts": [1]},
        ),
        "read the 10,000 element outputs in order": (
            _MAP_OUTPUTS,
            {"runs": ["big"], "steps": ["score"]},
        ),
        "cancel a failed run's queued tasks": (
            "UPDATE pgflow_jobs SET state = 'cancelled' WHERE workflow_id = 'big' "
            "AND state IN ('available', 'scheduled', 'retryable') RETURNING id",
            {},
        ),
        "a run's executing tasks": (
            "SELECT id, meta FROM pgflow_jobs WHERE workflow_id = 'big' "
            "AND state IN ('executing') ORDER BY id",
            {},
        ),
        "running runs by definition (leader)": (
            "SELECT workflow, fingerprint, count(*) FROM pgflow_runs WHERE state = 'running' "
            "AND remaining_steps IS NOT NULL GROUP BY workflow, fingerprint",
            {},
        ),
    }
    for title, (statement, params) in statements.items():
        with conn.transaction(force_rollback=True):
            rows = conn.execute(
                "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF, SUMMARY ON) " + statement, params
            ).fetchall()
        print(f"\n-- {title}")
        for (line,) in rows:
            print(line)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "postgresql://postgres@127.0.0.1/postgres")
