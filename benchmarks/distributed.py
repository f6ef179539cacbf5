"""Suite 3 (issue 4): real worker processes draining a queue, and enqueue-to-start latency.

Worker processes are spawned (never forked: engines and threads do not survive a fork),
build their app and report ready; the parent then says go, so the clock starts when every
worker is ready and stops when the database says the last job completed.
"""

from __future__ import annotations

import multiprocessing
import random
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from queue import Empty
from typing import Any

from benchmarks.backends import Kind, Opened, open_backend
from benchmarks.harness import (
    INSERT_CALL,
    MEDIAN,
    P99,
    RATE,
    SECONDS,
    Benchmark,
    Row,
    RunContext,
    Target,
    latency_metrics,
    require,
)
from benchmarks.worker_process import START_TIMEOUT, serve

QUEUE = "bench"
PROCESS_COUNTS = (1, 2, 4)
KINDS: tuple[Kind, ...] = ("postgres", "sqlite")
DRAIN_TARGETS: dict[tuple[Kind, int], float] = {("postgres", 1): 6_000, ("postgres", 2): 9_000}
DRAIN_TIMEOUT = 180.0
#: App options per backend. SQLite has no notifications across processes, so its workers
#: poll; the app's default poll_interval (1 s) would make the latency figure a poll period.
APP_OPTIONS: dict[Kind, dict[str, Any]] = {"postgres": {}, "sqlite": {"poll_interval": 0.05}}
MS = 1_000_000.0


@dataclass
class WorkerGroup:
    """Handles on running worker processes."""

    processes: list[Any]
    stop: Any

    def check_alive(self) -> None:
        dead = [p for p in self.processes if not p.is_alive()]
        if dead:
            codes = ", ".join(str(p.exitcode) for p in dead)
            raise RuntimeError(f"{len(dead)} worker process(es) exited early (exit codes {codes})")


@contextmanager
def worker_processes(
    url: str, count: int, queues: dict[str, int], options: dict[str, Any], sink: Any = None
) -> Iterator[WorkerGroup]:
    """Start `count` processes serving `queues`; wait until all are ready, stop, reap after."""
    require("pgflow.app", "Pgflow")
    require("benchmarks.jobs")
    mp = multiprocessing.get_context("spawn")
    ready, go, stop = mp.Queue(), mp.Event(), mp.Event()
    processes = [
        mp.Process(
            target=serve,
            args=(url, queues, f"bench-{'-'.join(queues)}-{i}", options, (ready, go, stop), sink),
            daemon=True,
        )
        for i in range(count)
    ]
    for process in processes:
        process.start()
    group = WorkerGroup(processes, stop)
    try:
        _await_ready(group, ready, count)
        go.set()
        yield group
    finally:
        stop.set()
        for process in processes:
            process.join(timeout=15)
        for process in processes:
            if process.is_alive():
                process.kill()
                process.join(timeout=5)


def _await_ready(group: WorkerGroup, ready: Any, count: int) -> None:
    """Wait for every process to report ready; fail fast if one dies on the way."""
    deadline = time.monotonic() + START_TIMEOUT
    waiting = count
    while waiting:
        try:
            ready.get(timeout=0.2)
            waiting -= 1
        except Empty:
            group.check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{waiting} worker process(es) not ready after {START_TIMEOUT:.0f} s"
                ) from None


def _completed(backend: Any, queue: str) -> int:
    return sum(
        count.count
        for count in backend.job_counts()
        if count.queue == queue and count.state.value == "completed"
    )


def _insert_noops(backend: Any, queue: str, total: int) -> None:
    noop = require("benchmarks.jobs", "Noop")
    for start in range(0, total, 1_000):
        stop = min(start + 1_000, total)
        backend.insert_jobs([noop.new({"i": i}, queue=queue) for i in range(start, stop)])


def _last_completion(backend: Any, queue: str, total: int) -> datetime | None:
    """When the database says the last job completed (its clock, same host as ours)."""
    done = backend.list_jobs(
        queue=queue, state=require("pgflow.records", "JobState").COMPLETED, limit=total
    )
    stamps = [job.completed_at for job in done if job.completed_at is not None]
    return max(stamps) if stamps else None


def _options_label(kind: Kind) -> str:
    return "".join(f", {key} {value}" for key, value in APP_OPTIONS[kind].items())


def _drain(opened: Opened, kind: Kind, processes: int, total: int, concurrency: int) -> float:
    """Seconds for `processes` workers to complete `total` pre-inserted jobs.

    Each round has its own queue, so jobs of an earlier round never count.
    """
    backend = opened.backend
    queue = f"drain_{processes}"
    _insert_noops(backend, queue, total)
    queues = {queue: concurrency}
    with worker_processes(opened.url, processes, queues, APP_OPTIONS[kind]) as group:
        started_wall = time.time()
        started = time.perf_counter()
        deadline = started + DRAIN_TIMEOUT
        while (done := _completed(backend, queue)) < total:
            if time.perf_counter() > deadline:
                raise RuntimeError(f"only {done}/{total} jobs completed in {DRAIN_TIMEOUT:.0f} s")
            group.check_alive()
            time.sleep(0.02)
        polled = time.perf_counter() - started
    last = _last_completion(backend, queue, total)
    # The database's completion stamp is finer than our polling; trust it when it is sane.
    if last is not None and 0 < last.timestamp() - started_wall <= polled:
        return last.timestamp() - started_wall
    return polled


def _drain_runner(kind: Kind) -> Callable[[RunContext], list[Row]]:
    def run(ctx: RunContext) -> list[Row]:
        total = ctx.size(10_000, 2_000)
        rows = []
        with open_backend(kind, ctx) as opened:
            for processes in PROCESS_COUNTS:
                seconds = _drain(opened, kind, processes, total, ctx.worker_concurrency)
                target = DRAIN_TARGETS.get((kind, processes))
                rows.append(
                    Row(
                        f"drain-{kind}",
                        f"{total:,} jobs, {processes} proc x {ctx.worker_concurrency} slots"
                        + _options_label(kind),
                        {"n": float(total), RATE: total / seconds, SECONDS: seconds},
                        "jobs/s",
                        (Target(RATE, ">=", target, f">= {target:,.0f} jobs/s"),) if target else (),
                    )
                )
        return rows

    return run


def _latency_runner(kind: Kind) -> Callable[[RunContext], list[Row]]:
    def run(ctx: RunContext) -> list[Row]:
        stamp_start = require("benchmarks.jobs", "StampStart")
        samples = ctx.size(200, 50)
        warmup = 10
        sink = multiprocessing.get_context("spawn").Queue()
        latencies: list[int] = []
        insert_calls: list[int] = []
        pauses = random.Random(42)
        # Spread inserts over the poll period so a polling worker is not caught in phase.
        poll = float(APP_OPTIONS[kind].get("poll_interval", 0.0))
        with (
            open_backend(kind, ctx) as opened,
            worker_processes(opened.url, 1, {QUEUE: 10}, APP_OPTIONS[kind], sink) as group,
        ):
            for seq in range(warmup + samples):
                job = stamp_start.new({"seq": seq, "sent_ns": time.time_ns()})
                inserting = time.perf_counter_ns()
                opened.backend.insert_jobs([job])
                inserted = time.perf_counter_ns() - inserting
                try:
                    got, latency = sink.get(timeout=10)
                except Empty as exc:
                    group.check_alive()
                    raise RuntimeError(f"job {seq} did not start within 10 s") from exc
                if got != seq:
                    raise RuntimeError(f"job {got} started while waiting for job {seq}")
                if seq >= warmup:
                    latencies.append(latency)
                    insert_calls.append(inserted)
                time.sleep(pauses.uniform(0.005, 0.015 + poll))  # let the worker fall idle
        targets: tuple[Target, ...] = ()
        if kind == "postgres":
            targets = (
                Target(MEDIAN, "<", 2 * MS, "median < 2 ms"),
                Target(P99, "<", 10 * MS, "p99 < 10 ms"),
            )
        return [
            Row(
                f"latency-{kind}",
                "enqueue-to-start, idle worker" + _options_label(kind),
                latency_metrics(latencies) | {INSERT_CALL: statistics.median(insert_calls)},
                targets=targets,
            )
        ]

    return run


BENCHMARKS = [
    *(
        Benchmark(
            f"drain-{kind}",
            "distributed",
            f"worker processes drain jobs on {kind}",
            _drain_runner(kind),
        )
        for kind in KINDS
    ),
    *(
        Benchmark(
            f"latency-{kind}",
            "distributed",
            f"enqueue-to-start latency on {kind}",
            _latency_runner(kind),
        )
        for kind in KINDS
    ),
]
