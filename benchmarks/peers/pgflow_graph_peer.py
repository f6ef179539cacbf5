"""pgflow (this project) on the graph workloads: graph flows started with app.start_run and
served by pgflow.Pgflow worker processes that import the flows (benchmarks.graph_flows).

Where the graph engine is missing (pgflow.Flow has no `map`), the row says so.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

from benchmarks import graph_flows
from benchmarks.peers.graph_spec import GraphPeer, NotInstalled, Setting, Started, Workload

SETTINGS = (
    Setting(
        "x10",
        "Pgflow(url, queues={flow queue: 10}) per process, defaults otherwise",
        {"concurrency": 10},
    ),
    Setting(
        "x100",
        "Pgflow(url, queues={flow queue: 100}) per process, defaults otherwise",
        {"concurrency": 100},
    ),
)


def serve_graph(url: str, workload: str, setting: str, stop: threading.Event) -> None:
    """Serve the workload's flow queue until `stop` is set."""
    import pgflow

    graph_flows.flows()  # defining the flows is how this instance knows them
    workload = "chain" if workload == "latency" else workload  # the same flow and queue
    concurrency = next(s.options["concurrency"] for s in SETTINGS if s.label == setting)
    app = pgflow.Pgflow(url, queues={f"graph_{workload}": concurrency})
    app.start()
    print("ready", flush=True)
    try:
        stop.wait()
    finally:
        app.stop(timeout=10.0)


def _flow_key(workload: Workload) -> str:
    """The latency samples run the chain flow (its queue is drained by then)."""
    return "chain" if workload.key == "latency" else workload.key


class PgflowGraphPeer(GraphPeer):
    name = "pgflow"
    settings = SETTINGS

    def check(self) -> None:
        if graph_flows.MISSING:
            raise NotInstalled(graph_flows.MISSING)

    def setup(self, url: str) -> None:
        import pgflow

        self.url = url
        self.app = pgflow.Pgflow(url, queues={"graph_inserts": 1})  # never started
        self.app.migrate()
        self.flows = graph_flows.flows()

    def close(self) -> None:
        if hasattr(self, "app"):
            self.app.close()

    def worker_command(self, url: str, workload: Workload, setting: Setting) -> list[str]:
        module = "benchmarks.peers.graph_worker"
        return [sys.executable, "-m", module, "pgflow_graph_peer", url, workload.key, setting.label]

    def start_runs(self, workload: Workload, count: int) -> Started:
        flow = self.flows[_flow_key(workload)]
        engine = self.app.backend.engine  # type: ignore[attr-defined]
        with engine.begin() as conn:  # all runs start in one transaction, as an app would
            handles = [
                self.app.start_run(flow, dict(workload.run_input), connection=conn)
                for _ in range(count)
            ]
        return Started(time.time(), count, handles)

    def finished(self, workload: Workload) -> tuple[int, float]:
        return 0, 0.0  # counted through the handles (wait_runs)

    def wait_runs(self, workload: Workload, started: Started, deadline: float) -> tuple[int, float]:
        done = getattr(started, "_done", 0)
        last = getattr(started, "_last", started.at)
        for handle in started.handles[done:]:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                handle.result(timeout=remaining)
            except Exception:  # timed out (or failed): rate over the runs done so far
                break
            done += 1
            last = time.time()
        started._done, started._last = done, last  # type: ignore[attr-defined]
        return done, last

    def start_one(self, workload: Workload) -> Any:
        return self.app.start_run(self.flows[_flow_key(workload)], dict(workload.run_input))

    def wait_result(self, handle: Any, timeout: float) -> None:
        handle.result(timeout=timeout)
