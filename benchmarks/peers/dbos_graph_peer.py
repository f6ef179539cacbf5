"""DBOS on the graph workloads, with its defaults (queues polled every second).

DBOS has no dependency graph, so each flow is one workflow: the chain is three steps in a
row; the diamond runs b and c as child workflows started with DBOS.start_workflow (threads
of the same process, so in parallel) and joins them; the fan-out enqueues one child workflow
per element on a separate queue (so any worker process runs them) and waits for them all.
Runs are enqueued with DBOSClient on one queue per flow, `worker_concurrency` 10 per process.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any

from benchmarks.peers import spec
from benchmarks.peers.graph_spec import GraphPeer, Setting, Started, Workload

APP = "graph"
MAP_QUEUE = "graph_map"
CONCURRENCY = 10
MAP_CONCURRENCY = 100
_flows: dict[str, Any] = {}

SETTING = Setting(
    "",
    f"one workflow per run; register_queue(worker_concurrency={CONCURRENCY}) per process "
    f"(map children: {MAP_CONCURRENCY}), queue polling 1 s and get_result polling 1 s "
    "(defaults)",
)


def _register() -> dict[str, Any]:
    """Declare the workflows once per process, before DBOS is launched."""
    if _flows:
        return _flows
    from dbos import DBOS

    @DBOS.step(name="graph_step")
    def step(value: Any) -> Any:
        return value

    @DBOS.step(name="graph_seed")
    def seed(n: int) -> list[int]:
        return list(range(n))

    @DBOS.workflow(name="graph_child")
    def child(value: Any) -> Any:
        return step(value)

    @DBOS.workflow(name="graph_element")
    def element(item: int) -> int:
        return int(step(item)) * 2

    @DBOS.workflow(name="bench_chain")
    def chain(run: dict[str, Any]) -> Any:
        return step(step(step(run)))

    @DBOS.workflow(name="bench_diamond")
    def diamond(run: dict[str, Any]) -> Any:
        a = step(run)
        b = DBOS.start_workflow(child, a)
        c = DBOS.start_workflow(child, a)
        return step({"b": b.get_result(), "c": c.get_result()})

    @DBOS.workflow(name="bench_fanout")
    def fanout(run: dict[str, Any]) -> Any:
        queue = DBOS.retrieve_queue(MAP_QUEUE)
        handles = [queue.enqueue(element, item) for item in seed(int(run["n"]))]
        return step({"total": len([h.get_result() for h in handles])})

    _flows.update(chain=chain, diamond=diamond, fanout=fanout)
    return _flows


def _config(url: str, pool: int) -> dict[str, Any]:
    return {
        "name": APP,
        "system_database_url": url,
        "sys_db_pool_size": pool,
        "executor_id": f"graph-{os.getpid()}",
        "log_level": "WARNING",
    }


def serve_graph(url: str, workload: str, setting: str, stop: threading.Event) -> None:
    """Serve the workload's queue (and the map queue) until `stop` is set."""
    from dbos import DBOS

    _register()
    DBOS(config=_config(url, 30))  # type: ignore[arg-type]
    DBOS.launch()
    if workload == "migrate":
        DBOS.destroy(workflow_completion_timeout_sec=1)
        print("ready", flush=True)
        return
    DBOS.register_queue(f"graph_{workload}", worker_concurrency=CONCURRENCY)
    DBOS.register_queue(MAP_QUEUE, worker_concurrency=MAP_CONCURRENCY)
    print("ready", flush=True)
    try:
        stop.wait()
    finally:
        DBOS.destroy(workflow_completion_timeout_sec=2)


class DbosGraphPeer(GraphPeer):
    name = "DBOS"
    settings = (SETTING,)
    note = (
        "chain: 3 steps in one workflow (no per-step tasks); diamond: b and c as child "
        "workflows in threads of the run's process (not spread over processes); fan-out: "
        "100 child workflows on a queue"
    )

    def check(self) -> None:
        spec.require_modules("dbos")

    def setup(self, url: str) -> None:
        import subprocess

        from dbos import DBOSClient

        done = subprocess.run(
            self.worker_command(url, Workload("migrate", "migrate", (), {}), SETTING),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"DBOS launch failed: {done.stderr.strip()[-300:]}")
        self.client = DBOSClient(
            system_database_url=url, system_database_pool_size=2, application_name=APP
        )
        self.counter = spec.SqlCounter(url)

    def close(self) -> None:
        if hasattr(self, "client"):
            self.client.destroy()
            self.counter.close()

    def worker_command(self, url: str, workload: Workload, setting: Setting) -> list[str]:
        module = "benchmarks.peers.graph_worker"
        return [sys.executable, "-m", module, "dbos_graph_peer", url, workload.key, "default"]

    def _enqueue(self, workload: Workload) -> str:
        options: Any = {
            "queue_name": f"graph_{workload.key}",
            "workflow_name": workload.slug,
            "application_name": APP,
        }
        handle = self.client.enqueue(options, dict(workload.run_input))
        return str(handle.get_workflow_id())

    def start_runs(self, workload: Workload, count: int) -> Started:
        at = time.time()  # each enqueue commits on its own: work may begin at the first
        handles = [self._enqueue(workload) for _ in range(count)]
        return Started(at, count, handles)

    def finished(self, workload: Workload) -> tuple[int, float]:
        count = self.counter.scalar(
            "SELECT count(*) FROM dbos.workflow_status WHERE name = %s AND status = 'SUCCESS'",
            (workload.slug,),
        )
        last_ms = self.counter.scalar(
            "SELECT max(updated_at) FROM dbos.workflow_status "
            "WHERE name = %s AND status = 'SUCCESS'",
            (workload.slug,),
        )
        return count, last_ms / 1000.0

    def start_one(self, workload: Workload) -> Any:
        return self._enqueue(workload)

    def wait_result(self, handle: Any, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            status = self.counter.scalar(
                "SELECT CASE status WHEN 'SUCCESS' THEN 1 WHEN 'ERROR' THEN 2 ELSE 0 END "
                "FROM dbos.workflow_status WHERE workflow_uuid = %s",
                (handle,),
            )
            if status == 1:
                return
            if status == 2:
                raise RuntimeError(f"workflow {handle} failed")
            if time.monotonic() > deadline:
                raise TimeoutError(f"workflow {handle} not done after {timeout:.0f} s")
            time.sleep(0.001)
