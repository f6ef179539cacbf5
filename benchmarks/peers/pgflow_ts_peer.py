"""pgflow for TypeScript itself: its SQL core (@pgflow/core from npm, on pgmq) with a Node
worker of ours that follows the edge worker's loop (benchmarks/peers/pgflow_ts/worker.mjs).

Runs are started the way pgflow's client does (pgflow.start_flow); a client sees a result by
reading pgflow.runs (Supabase Realtime, which would push it, is stood in for by a no-op).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from benchmarks.peers import pgflow_ts_install as install
from benchmarks.peers.graph_spec import WORKLOADS, GraphPeer, Setting, Started, Workload

WORKER = Path(__file__).resolve().parent / "pgflow_ts" / "worker.mjs"
#: Seconds between two reads of a run's status while a client waits for its result.
RESULT_POLL = 0.001

#: The edge worker's documented defaults for a flow worker (createFlowWorker).
DEFAULT = Setting(
    "edge-worker defaults",
    "batchSize 10, maxConcurrent 10, visibilityTimeout 2 s, maxPollSeconds 2, "
    "pollIntervalMs 100, maxPgConnections 4",
    {"batch": 10, "concurrency": 10, "visibility": 2, "max_poll": 2, "poll_ms": 100, "conns": 4},
)
TUNED = Setting(
    "tuned",
    "batchSize 100, maxConcurrent 100, maxPgConnections 10; visibilityTimeout 2 s, "
    "maxPollSeconds 2, pollIntervalMs 100 as by default",
    {
        "batch": 100,
        "concurrency": 100,
        "visibility": 2,
        "max_poll": 2,
        "poll_ms": 100,
        "conns": 10,
    },
)

#: Set by the command line (--pgmq-template) before the peers run; else $PGFLOW_PGMQ_TEMPLATE.
template_option: str | None = None


class PgflowTsPeer(GraphPeer):
    name = "pgflow-TS"
    settings = (DEFAULT, TUNED)

    def check(self) -> None:
        self.modules = install.ensure_packages()
        self.template: str | None = install.template_name(template_option)

    def database(self, admin_url: str) -> Any:
        self.template = install.pgmq_source(admin_url, self.template)
        return install.database(admin_url, self.template)

    def setup(self, url: str) -> None:
        import psycopg

        install.migrate(url, pgmq_from_template=self.template is not None)
        self.conn = psycopg.connect(url, autocommit=True)
        for workload in WORKLOADS.values():
            self.conn.execute("SELECT pgflow.create_flow(%s)", (workload.slug,))
            for step in workload.steps:
                self.conn.execute(
                    "SELECT pgflow.add_step(flow_slug => %s, step_slug => %s, "
                    "deps_slugs => %s::text[], step_type => %s)",
                    (
                        workload.slug,
                        step.slug,
                        list(step.depends_on),
                        "map" if step.is_map else "single",
                    ),
                )

    @property
    def note(self) -> str:
        pgmq = (
            f"pgmq from template database {self.template!r} (pgmq's SQL-only install; the "
            "migration's CREATE EXTENSION pgmq skipped)"
            if getattr(self, "template", None)
            else "pgmq extension of the server"
        )
        return f"@pgflow/core {install.CORE_VERSION}; {pgmq}; stand-ins: " + "; ".join(
            install.STAND_INS
        )

    def close(self) -> None:
        if hasattr(self, "conn"):
            self.conn.close()

    def worker_command(self, url: str, workload: Workload, setting: Setting) -> list[str]:
        o = setting.options
        numbers = (o["batch"], o["concurrency"], o["visibility"], o["max_poll"], o["poll_ms"])
        return ["node", str(WORKER), url, workload.slug, *map(str, numbers), str(o["conns"])]

    def worker_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PGFLOW_TS_NODE_MODULES"] = str(self.modules)
        return env

    def start_runs(self, workload: Workload, count: int) -> Started:
        payload = json.dumps(workload.run_input)
        with self.conn.transaction(), self.conn.cursor() as cursor:
            cursor.executemany(
                "SELECT pgflow.start_flow(flow_slug => %s, input => %s::jsonb)",
                [(workload.slug, payload)] * count,
            )
        return Started(time.time(), count)

    def finished(self, workload: Workload) -> tuple[int, float]:
        row = self.conn.execute(
            "SELECT count(*), extract(epoch FROM max(completed_at)) FROM pgflow.runs "
            "WHERE flow_slug = %s AND status = 'completed'",
            (workload.slug,),
        ).fetchone()
        assert row is not None
        return int(row[0]), float(row[1] or 0.0)

    def start_one(self, workload: Workload) -> Any:
        row = self.conn.execute(
            "SELECT run_id FROM pgflow.start_flow(flow_slug => %s, input => %s::jsonb)",
            (workload.slug, json.dumps(workload.run_input)),
        ).fetchone()
        assert row is not None
        return row[0]

    def wait_result(self, handle: Any, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            row = self.conn.execute(
                "SELECT status FROM pgflow.runs WHERE run_id = %s", (handle,)
            ).fetchone()
            status = row[0] if row else None
            if status == "completed":
                return
            if status == "failed":
                raise RuntimeError(f"run {handle} failed")
            if time.monotonic() > deadline:
                raise TimeoutError(f"run {handle} not completed after {timeout:.0f} s")
            time.sleep(RESULT_POLL)
