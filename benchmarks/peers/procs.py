"""Worker processes of a peer: spawned, reported ready through the sink, always reaped.

Processes are spawned (not forked) so each peer builds its clients in a clean interpreter.
They are not daemonic, because Celery's prefork pool must fork children of its own; the
context manager therefore kills the whole process tree of any worker that did not stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from benchmarks.peers import sink as sink_module
from benchmarks.peers import spec

#: Seconds a worker process may take to import, connect and report ready.
READY_TIMEOUT = 60.0
#: Seconds a worker gets to stop gracefully before its process tree is killed.
STOP_TIMEOUT = 15.0
#: Seconds a worker has to notice the stop event before it is sent SIGTERM.
STOP_GRACE = 2.0
#: Pause after every worker reported ready, so listeners and pools are settled.
SETTLE = 0.3


def _serve(module: str, url: str, queue: str, concurrency: int, address: str, stop: Any) -> None:
    """Entry point of a worker process: point the sink at the parent and run the peer."""
    os.environ[sink_module.ENV] = address
    spec.load(module).serve(url, queue, concurrency, stop)


def parent_gone(parent: int) -> bool:
    """True when the process that started this worker has died (stop serving then)."""
    return os.getppid() != parent


def wait_for_stop(stop: Any, parent: int) -> None:
    """Block until the runner sets `stop` or the parent process `parent` has died."""
    while not stop.wait(timeout=0.2):
        if parent_gone(parent):
            return


async def wait_for_stop_async(stop: Any, parent: int, serving: asyncio.Future[Any]) -> None:
    """wait_for_stop for asyncio workers: also returns when `serving` (the worker task) ended."""
    while not stop.is_set() and not parent_gone(parent) and not serving.done():
        await asyncio.sleep(0.2)


@dataclass
class Workers:
    """Handles on running worker processes of one peer."""

    processes: list[Any]

    def check_alive(self) -> None:
        dead = [p for p in self.processes if not p.is_alive()]
        if dead:
            codes = ", ".join(str(p.exitcode) for p in dead)
            raise RuntimeError(f"{len(dead)} worker process(es) exited early (exit codes {codes})")

    def peak_rss_mb(self) -> float:
        """Largest peak resident set of one worker (a process plus its pool children)."""
        return max((_tree_peak_kb(p.pid) for p in self.processes), default=0) / 1024.0


def _peak_kb(pid: int) -> int:
    """VmHWM (peak resident set) of one process, in kB; 0 when it is gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        return 0
    return 0


def _children(pid: int) -> list[int]:
    """Every descendant of `pid`, from Linux's /proc/<pid>/task/<tid>/children lists."""
    found: list[int] = []
    pending = [pid]
    while pending:
        parent = pending.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                with open(f"/proc/{parent}/task/{task}/children", encoding="ascii") as listing:
                    kids = [int(child) for child in listing.read().split()]
            except OSError:
                continue
            found += kids
            pending += kids
    return found


def _tree_peak_kb(pid: int) -> int:
    return _peak_kb(pid) + sum(_peak_kb(child) for child in _children(pid))


def _kill_tree(pid: int) -> None:
    """SIGKILL a process and its descendants (children first, so none is re-parented alive)."""
    for victim in [*reversed(_children(pid)), pid]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim, signal.SIGKILL)


@contextlib.contextmanager
def workers(
    module: str,
    url: str,
    queue: str,
    count: int,
    sink: sink_module.Sink,
    concurrency: int = spec.CONCURRENCY,
) -> Iterator[Workers]:
    """Start `count` processes of `module` serving `queue` with `concurrency` slots each;
    yield once all are ready."""
    mp = multiprocessing.get_context("spawn")
    stop = mp.Event()
    sink.reset()
    processes = [
        mp.Process(
            target=_serve,
            args=(module, url, queue, concurrency, sink.address, stop),
            name=f"peer-{module}-{i}",
        )
        for i in range(count)
    ]
    for process in processes:
        process.start()
    group = Workers(processes)
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        while len(sink.ready) < count:
            group.check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"worker processes not ready after {READY_TIMEOUT:.0f} s")
            time.sleep(0.05)
        time.sleep(SETTLE)
        yield group
    finally:
        stop.set()
        trees = {p.pid: _children(p.pid) for p in processes if p.pid is not None}
        deadline = time.monotonic() + STOP_GRACE
        for process in processes:
            process.join(timeout=max(0.0, deadline - time.monotonic()))
        for process in processes:  # e.g. Oban's, which exec'd and cannot see `stop`
            if process.pid is not None and process.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGTERM)
        for process in processes:
            process.join(timeout=STOP_TIMEOUT)
        for process in processes:
            if process.pid is None:
                continue
            if process.is_alive():
                _kill_tree(process.pid)
                process.join(timeout=5)
            for child in trees.get(process.pid, []):
                _kill_tree(child)
