"""The Oban side of the Oban peer, run by the Python >= 3.12 venv's interpreter (not by 3.11).

`serve` is a worker process; `insert` answers the parent's insert commands, one line each,
on stdin/stdout. Only the standard library, `oban` and the sink are imported here.
Run as `python -c "from benchmarks.peers.oban_child import main; main()" MODE ...` so the
worker class is registered under this module's name in every process.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from typing import Any

from oban import Oban, worker  # type: ignore[import-not-found, unused-ignore]
from oban.schema import install  # type: ignore[import-not-found, unused-ignore]

from benchmarks.peers import sink

#: The queue whose jobs report their start time (the spec's STAMP_QUEUE; not imported, to
#: keep this module free of the 3.11 environment's packages).
STAMP_QUEUE = "latency"


@worker(queue="default")  # type: ignore[misc, unused-ignore]
class NoopWorker:
    """The no-op job: report "done", or the start stamp of a latency job, to the sink."""

    async def process(self, job: Any) -> None:
        if job.queue == STAMP_QUEUE:
            sink.report_start(job.args)
        else:
            sink.report("d")


#: The decorated class, typed loosely: `@worker` adds `new` at run time.
_NOOP: Any = NoopWorker


async def _serve(url: str, queue: str, concurrency: int) -> None:
    """Oban's documented defaults, with the shared concurrency as the queue's limit."""
    parent = os.getppid()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stopping.set)
    loop.add_signal_handler(signal.SIGINT, stopping.set)
    pool = await Oban.create_pool(url)
    oban = Oban(pool=pool, queues={queue: concurrency})
    try:
        await oban.start()
        sink.report(f"r {os.getpid()}")
        while not stopping.is_set() and os.getppid() == parent:
            try:
                await asyncio.wait_for(stopping.wait(), timeout=0.2)
            except TimeoutError:
                continue
        await oban.stop()
    finally:
        await pool.close()


async def _insert(url: str) -> None:
    """Answer "install", "one Q I", "many Q START COUNT" and "stamp SEQ NS" with "ok"."""
    pool = await Oban.create_pool(url)
    oban = Oban(pool=pool)  # client mode: no queues, no leadership
    try:
        for line in sys.stdin:
            command, *args = line.split()
            try:
                if command == "install":
                    await install(pool)
                elif command == "one":
                    await oban.enqueue(_NOOP.new({"i": int(args[1])}, queue=args[0]))
                elif command == "many":
                    start, count = int(args[1]), int(args[2])
                    jobs = [_NOOP.new({"i": i}, queue=args[0]) for i in range(start, start + count)]
                    await oban.enqueue_many(jobs)
                elif command == "stamp":
                    stamp = {"seq": int(args[0]), "sent_ns": int(args[1])}
                    await oban.enqueue(_NOOP.new(stamp, queue=STAMP_QUEUE))
                else:
                    raise ValueError(f"unknown command {command!r}")
            except Exception as exc:
                reply = f"error {type(exc).__name__}: {exc}".replace("\n", " ")
            else:
                reply = "ok"
            sys.stdout.write(reply + "\n")
            sys.stdout.flush()
    finally:
        await pool.close()


def main() -> None:
    mode, url, *rest = sys.argv[1:]
    if mode == "serve":
        asyncio.run(_serve(url, rest[0], int(rest[1])))
    elif mode == "insert":
        asyncio.run(_insert(url))
    else:
        raise SystemExit(f"unknown mode {mode!r}")
