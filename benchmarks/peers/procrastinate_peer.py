"""procrastinate: PsycopgConnector, the documented worker (`App.run_worker`) with its
defaults (LISTEN/NOTIFY, 5 s polling fallback) and concurrency set to the shared value."""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import Any

from benchmarks.peers import sink, spec
from benchmarks.peers.procs import wait_for_stop_async


def _app(url: str, pool_size: int) -> Any:
    import procrastinate

    connector = procrastinate.PsycopgConnector(conninfo=url, min_size=1, max_size=pool_size)
    app = procrastinate.App(connector=connector)

    @app.task(name="noop")
    def noop(i: int) -> None:
        sink.report("d")

    @app.task(name="stamp")
    def stamp(seq: int, sent_ns: int) -> None:
        sink.report_start({"seq": seq, "sent_ns": sent_ns})

    return app


def serve(url: str, queue: str, concurrency: int, stop: Any) -> None:
    parent = os.getppid()
    app = _app(url, pool_size=concurrency + 2)

    async def main() -> None:
        async with app.open_async():
            worker = asyncio.create_task(
                app.run_worker_async(queues=[queue], concurrency=concurrency, wait=True)
            )
            sink.report(f"r {os.getpid()}")
            await wait_for_stop_async(stop, parent, worker)
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(worker, timeout=10)

    asyncio.run(main())


class ProcrastinatePeer(spec.Peer):
    name = "procrastinate"
    module = "procrastinate_peer"
    config = (
        f"run_worker(concurrency={spec.CONCURRENCY}) per process ({spec.WIDE_CONCURRENCY} in the "
        "x100 drains), defaults otherwise "
        "(LISTEN/NOTIFY, fetch_job_polling_interval 5 s)"
    )
    bulk_note = "task.batch_defer(...1,000 jobs)"

    def check(self) -> None:
        spec.require_modules("procrastinate")

    def setup(self, url: str) -> None:
        self.app = _app(url, pool_size=2)
        self.app.open()
        self.app.schema_manager.apply_schema()
        self.noop = self.app.tasks["noop"]
        self.stamp = self.app.tasks["stamp"]
        self.counter = spec.SqlCounter(url)

    def close(self) -> None:
        self.counter.close()
        self.app.close()

    def insert_one(self, i: int) -> None:
        self.noop.configure(queue="inserts").defer(i=i)

    def insert_bulk(self, start: int, count: int) -> None:
        self.noop.configure(queue="inserts").batch_defer(
            *({"i": i} for i in range(start, start + count))
        )

    def insert_noops(self, queue: str, count: int) -> None:
        deferrer = self.noop.configure(queue=queue)
        for start in range(0, count, 1_000):
            deferrer.batch_defer(*({"i": i} for i in range(start, min(start + 1_000, count))))

    def completed(self, queue: str) -> int:
        return self.counter.scalar(
            "SELECT count(*) FROM procrastinate_jobs "
            "WHERE queue_name = %s AND status = 'succeeded'",
            (queue,),
        )

    def insert_stamp(self, seq: int, sent_ns: int) -> None:
        self.stamp.configure(queue=spec.STAMP_QUEUE).defer(seq=seq, sent_ns=sent_ns)
