"""DBOS: workflows of @DBOS.step functions on a DBOS queue, with the documented defaults
(queue polling every 1 s) and worker_concurrency set to the shared value.

The parent runs as its own DBOS application ("peers_bench") for the in-process workflow and
enqueues through DBOSClient, so it never dequeues the workers' ("peers") queues itself.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from benchmarks.peers import sink, spec
from benchmarks.peers.procs import wait_for_stop

APP = "peers"
#: Most system-database connections per worker process: at one per slot, the two
#: 100-slot workers of a wide drain would take every connection the server allows (100).
MAX_POOL = 22
_registered: dict[str, Any] = {}


def _register() -> dict[str, Any]:
    """Declare the workflows once per process, before DBOS is launched."""
    if _registered:
        return _registered
    from dbos import DBOS

    def step(state: dict[str, Any]) -> dict[str, Any]:
        return state

    def last(state: dict[str, Any]) -> dict[str, Any]:
        sink.report("d")  # only inside worker processes, where the sink is set
        return state

    validate = DBOS.step(name="validate")(step)
    transform = DBOS.step(name="transform")(step)
    publish = DBOS.step(name="publish")(last)

    @DBOS.workflow(name="peer_flow")
    def flow(state: dict[str, Any]) -> dict[str, Any]:
        return publish(transform(validate(state)))

    @DBOS.workflow(name="peer_noop")
    def noop(i: int) -> None:
        sink.report("d")

    @DBOS.workflow(name="peer_stamp")
    def stamp(seq: int, sent_ns: int) -> None:
        sink.report_start({"seq": seq, "sent_ns": sent_ns})

    _registered.update(flow=flow, noop=noop, stamp=stamp)
    return _registered


def _config(url: str, name: str, pool: int) -> dict[str, Any]:
    return {
        "name": name,
        "system_database_url": url,
        "sys_db_pool_size": pool,
        "executor_id": f"peer-{os.getpid()}",
        "log_level": "WARNING",
    }


def serve(url: str, queue: str, concurrency: int, stop: Any) -> None:
    from dbos import DBOS

    parent = os.getppid()
    _register()
    # One application per queue: a DBOS process dequeues every queue its application has
    # registered, and jobs left over from a budget-limited drain must not run here.
    pool = min(concurrency + 2, MAX_POOL)
    DBOS(config=_config(url, f"{APP}_{queue}", pool))  # type: ignore[arg-type]
    DBOS.launch()
    DBOS.register_queue(queue, worker_concurrency=concurrency)
    sink.report(f"r {os.getpid()}")
    try:
        wait_for_stop(stop, parent)
    finally:
        DBOS.destroy(workflow_completion_timeout_sec=5)


class DbosPeer(spec.Peer):
    name = "DBOS"
    module = "dbos_peer"
    config = (
        f"register_queue(worker_concurrency={spec.CONCURRENCY}) per process, queue polling "
        f"1 s (default); sys_db_pool_size {spec.CONCURRENCY + 2} "
        f"({MAX_POOL} in the {spec.WIDE_CONCURRENCY}-slot drains)"
    )
    bulk_note = "no bulk enqueue API: 1,000 DBOSClient.enqueue calls"

    def check(self) -> None:
        spec.require_modules("dbos")

    def setup(self, url: str) -> None:
        from dbos import DBOS, DBOSClient

        _register()
        DBOS(config=_config(url, "peers_bench", 4))  # type: ignore[arg-type]
        DBOS.launch()  # creates the system database schema
        self.client = DBOSClient(
            system_database_url=url, system_database_pool_size=2, application_name=APP
        )
        self.counter = spec.SqlCounter(url)

    def close(self) -> None:
        from dbos import DBOS

        self.counter.close()
        self.client.destroy()
        DBOS.destroy(workflow_completion_timeout_sec=5)

    def _enqueue(self, queue: str, workflow: str, *args: Any) -> None:
        options: Any = {
            "queue_name": queue,
            "workflow_name": workflow,
            "application_name": f"{APP}_{queue}",
        }
        self.client.enqueue(options, *args)

    def insert_one(self, i: int) -> None:
        self._enqueue("inserts", "peer_noop", i)

    def insert_bulk(self, start: int, count: int) -> None:
        for i in range(start, start + count):
            self._enqueue("inserts", "peer_noop", i)

    def insert_noops(self, queue: str, count: int) -> None:
        for i in range(count):
            self._enqueue(queue, "peer_noop", i)

    def completed(self, queue: str) -> int:
        return self.counter.scalar(
            "SELECT count(*) FROM dbos.workflow_status "
            "WHERE queue_name = %s AND status = 'SUCCESS'",
            (queue,),
        )

    def insert_stamp(self, seq: int, sent_ns: int) -> None:
        self._enqueue(spec.STAMP_QUEUE, "peer_stamp", seq, sent_ns)

    def workflow_inprocess(self) -> Callable[[], object]:
        flow = _register()["flow"]

        def run() -> object:
            return flow(dict(spec.STATE))

        return run

    def insert_flows(self, queue: str, count: int) -> None:
        for _ in range(count):
            self._enqueue(queue, "peer_flow", dict(spec.STATE))

    def flows_completed(self, queue: str) -> int:
        return self.completed(queue)
