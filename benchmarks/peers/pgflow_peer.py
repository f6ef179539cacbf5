"""pgflow through its public API: Worker classes, Pgflow(...).start()/stop(), app.insert,
pgflow.execute and pgflow.workflow_worker."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pgflow
from benchmarks.peers import sink, spec
from benchmarks.peers.procs import wait_for_stop


class PeerNoop(pgflow.Worker, queue=spec.NOOP_QUEUES[1]):
    """Does nothing: what is left is claiming, running and completing a job."""

    def perform(self, job: pgflow.Job) -> None:
        sink.report("d")


class PeerStamp(pgflow.Worker, queue=spec.STAMP_QUEUE):
    """Reports its start to the parent (enqueue-to-start latency)."""

    def perform(self, job: pgflow.Job) -> None:
        sink.report_start(job.args)


def _step(state: dict[str, Any]) -> dict[str, Any]:
    return state


def _publish(state: dict[str, Any]) -> dict[str, Any]:
    """The last step reports "done" (only inside worker processes, where the sink is set)."""
    sink.report("d")
    return state


def _build_flow() -> Any:
    """The 3-step no-op workflow, in the decorator form."""
    flow = pgflow.Flow("peer_noop")
    flow.step(name="validate")(_step)
    flow.step(name="transform")(_step)
    flow.step(name="publish")(_publish)
    return flow


FLOW = _build_flow()
FlowJob = pgflow.workflow_worker(FLOW, queue=spec.FLOW_QUEUE)


def serve(url: str, queue: str, concurrency: int, stop: Any) -> None:
    """Serve `queue` with `concurrency` slots until the parent says stop."""
    parent = os.getppid()
    app = pgflow.Pgflow(url, queues={queue: concurrency}, instance_id=f"peer-{os.getpid()}")
    app.start()
    sink.report(f"r {os.getpid()}")
    try:
        wait_for_stop(stop, parent)
    finally:
        app.stop(timeout=10.0)


class PgflowPeer(spec.Peer):
    name = "pgflow"
    module = "pgflow_peer"
    config = (
        f"Pgflow(queues={{q: {spec.CONCURRENCY}}}) per process "
        f"({spec.WIDE_CONCURRENCY} in the x100 drains), defaults otherwise "
        "(LISTEN/NOTIFY wake-ups)"
    )
    bulk_note = "app.insert([...1,000 jobs])"

    def setup(self, url: str) -> None:
        self.app = pgflow.Pgflow(url, queues={"inserts": 1})  # never started: inserts only
        self.app.migrate()
        self.counter = spec.SqlCounter(url)

    def close(self) -> None:
        self.counter.close()
        self.app.close()

    def insert_one(self, i: int) -> None:
        self.app.insert(PeerNoop.new({"i": i}, queue="inserts"))

    def insert_bulk(self, start: int, count: int) -> None:
        self.app.insert(
            [PeerNoop.new({"i": i}, queue="inserts") for i in range(start, start + count)]
        )

    def insert_noops(self, queue: str, count: int) -> None:
        for start in range(0, count, 1_000):
            stop = min(start + 1_000, count)
            self.app.insert([PeerNoop.new({"i": i}, queue=queue) for i in range(start, stop)])

    def completed(self, queue: str) -> int:
        return self.counter.scalar(
            "SELECT count(*) FROM pgflow_jobs WHERE queue = %s AND state = 'completed'", (queue,)
        )

    def insert_stamp(self, seq: int, sent_ns: int) -> None:
        self.app.insert(PeerStamp.new({"seq": seq, "sent_ns": sent_ns}))

    def workflow_inprocess(self) -> Callable[[], object]:
        backend = self.app.backend

        def run() -> object:
            return pgflow.execute(FLOW, spec.STATE, backend=backend)

        return run

    def insert_flows(self, queue: str, count: int) -> None:
        for start in range(0, count, 1_000):
            stop = min(start + 1_000, count)
            self.app.insert(
                [FlowJob.new(dict(spec.STATE), queue=queue) for _ in range(start, stop)]
            )

    def flows_completed(self, queue: str) -> int:
        return self.completed(queue)
