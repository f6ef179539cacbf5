"""pgqueuer: the PgQueuer app on its asyncpg driver with its documented defaults
(LISTEN/NOTIFY, batch_size 10) and the shared concurrency as the entrypoint's limit."""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

from benchmarks.peers import sink, spec
from benchmarks.peers.procs import wait_for_stop_async


async def _queries(url: str) -> Any:
    import asyncpg  # type: ignore[import-untyped]
    from pgqueuer import AsyncpgDriver, Queries

    conn = await asyncpg.connect(url)
    return conn, Queries(AsyncpgDriver(conn))


def serve(url: str, queue: str, concurrency: int, stop: Any) -> None:
    parent = os.getppid()

    async def main() -> None:
        import asyncpg
        from pgqueuer import AsyncpgDriver, PgQueuer

        conn = await asyncpg.connect(url)
        manager = PgQueuer(AsyncpgDriver(conn))
        stamp = queue == spec.STAMP_QUEUE

        # The shared concurrency as the entrypoint's limit (its default, 0, is unlimited).
        @manager.entrypoint(queue, concurrency_limit=concurrency)
        async def job(job: Any) -> None:
            if stamp:
                sink.report_start(json.loads(job.payload))
            else:
                sink.report("d")

        runner = asyncio.create_task(manager.run())
        sink.report(f"r {os.getpid()}")
        await wait_for_stop_async(stop, parent, runner)
        manager.shutdown.set()
        try:
            await asyncio.wait_for(runner, timeout=10)
        finally:
            await conn.close()

    asyncio.run(main())


class PgqueuerPeer(spec.Peer):
    name = "pgqueuer"
    module = "pgqueuer_peer"
    config = (
        f"PgQueuer.run() defaults (batch_size 10, LISTEN/NOTIFY), entrypoint "
        f"concurrency_limit={spec.CONCURRENCY} per process ({spec.WIDE_CONCURRENCY} in the x100 "
        "drains); asyncpg driver"
    )
    bulk_note = "Queries.enqueue([...1,000 entrypoints], payloads, priorities)"

    def check(self) -> None:
        spec.require_modules("pgqueuer", "asyncpg")

    def setup(self, url: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.conn, self.queries = self.loop.run_until_complete(_queries(url))
        self.loop.run_until_complete(self.queries.install())
        self.counter = spec.SqlCounter(url)
        self.inserted: dict[str, int] = {}

    def close(self) -> None:
        self.counter.close()
        self.loop.run_until_complete(self.conn.close())
        self.loop.close()

    def _enqueue(self, queue: str, payloads: list[bytes]) -> None:
        if len(payloads) == 1:
            call = self.queries.enqueue(queue, payloads[0], 0)
        else:
            n = len(payloads)
            call = self.queries.enqueue([queue] * n, list(payloads), [0] * n)
        self.loop.run_until_complete(call)
        self.inserted[queue] = self.inserted.get(queue, 0) + len(payloads)

    def insert_one(self, i: int) -> None:
        self._enqueue("inserts", [b'{"i": %d}' % i])

    def insert_bulk(self, start: int, count: int) -> None:
        self._enqueue("inserts", [b'{"i": %d}' % i for i in range(start, start + count)])

    def insert_noops(self, queue: str, count: int) -> None:
        for start in range(0, count, 1_000):
            stop = min(start + 1_000, count)
            self._enqueue(queue, [b'{"i": %d}' % i for i in range(start, stop)])

    def completed(self, queue: str) -> int:
        """Finished jobs leave the queue table (their log rows may be folded away)."""
        waiting = self.counter.scalar(
            "SELECT count(*) FROM pgqueuer WHERE entrypoint = %s", (queue,)
        )
        return self.inserted.get(queue, 0) - waiting

    def insert_stamp(self, seq: int, sent_ns: int) -> None:
        payload = json.dumps({"seq": seq, "sent_ns": sent_ns}).encode()
        self._enqueue(spec.STAMP_QUEUE, [payload])
