"""Suite 2b (issue 3): the job-queue primitives of each backend, from one connection.

Insert one job per call, insert batches of 1,000, and claim+complete in batches of 100:
the ceilings that any worker built on the backend can reach.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from benchmarks.backends import Kind, open_backend
from benchmarks.harness import (
    RATE,
    Benchmark,
    Row,
    RunContext,
    Samples,
    Target,
    latency_metrics,
    quiet_gc,
    rate,
    require,
    time_calls,
)

WORKER = "bench.Noop"
BATCH_INSERT = 1_000
BATCH_CLAIM = 100
KINDS: tuple[Kind, ...] = ("memory", "sqlite", "postgres")
INSERT_BATCH_TARGET: dict[Kind, float] = {"postgres": 70_000}
CLAIM_TARGET: dict[Kind, float] = {"postgres": 20_000}


def _jobs(count: int, queue: str) -> list[Any]:
    new_job = require("pgflow.records", "NewJob")
    return [new_job(worker=WORKER, args={"i": i}, queue=queue) for i in range(count)]


def _per_job(samples: Samples, jobs_per_call: int) -> dict[str, float]:
    """Latencies stay per call; the rate counts jobs, not calls."""
    metrics = samples.metrics()
    metrics[RATE] *= jobs_per_call
    return metrics


def _targets(table: dict[Kind, float], kind: Kind) -> tuple[Target, ...]:
    if kind not in table:
        return ()
    return (Target(RATE, ">=", table[kind], f">= {table[kind]:,.0f} jobs/s"),)


def _claim_complete(backend: Any, queue: str, total: int) -> dict[str, float]:
    """Claim batches of 100 and complete them until the queue is empty; time each cycle.

    Latencies are per claim+complete cycle; the rate counts jobs over the whole drain.
    """
    latencies: list[int] = []
    done = 0
    clock = time.perf_counter_ns
    with quiet_gc():
        begin = clock()
        while True:
            start = clock()
            claimed = backend.claim_jobs(queue, "bench-claimer", BATCH_CLAIM)
            if not claimed:
                break
            backend.complete_jobs([job.ref for job in claimed])
            latencies.append(clock() - start)
            done += len(claimed)
        elapsed = clock() - begin
    if done != total:
        raise RuntimeError(f"claimed and completed {done} jobs, expected {total}")
    return latency_metrics(latencies) | {RATE: rate(done, elapsed)}


def _runner(kind: Kind) -> Callable[[RunContext], list[Row]]:
    def run(ctx: RunContext) -> list[Row]:
        name = f"primitives-{kind}"
        with open_backend(kind, ctx) as opened:
            backend = opened.backend
            singles = iter(_jobs(ctx.size(3_000, 300) + 50, "bench-single"))
            single = time_calls(
                lambda: backend.insert_jobs([next(singles)]), ctx.size(3_000, 300), warmup=50
            )
            batches = iter([_jobs(BATCH_INSERT, "bench-batch") for _ in range(ctx.size(30, 5) + 2)])
            batch = time_calls(lambda: backend.insert_jobs(next(batches)), ctx.size(30, 5), 2)
            total = ctx.size(20_000, 3_000)
            for start in range(0, total, BATCH_INSERT):
                backend.insert_jobs(_jobs(min(BATCH_INSERT, total - start), "bench-claim"))
            claims = _claim_complete(backend, "bench-claim", total)
        return [
            Row(name, "insert 1 job per call", single.metrics(), "jobs/s"),
            Row(
                name,
                f"insert batches of {BATCH_INSERT:,}",
                _per_job(batch, BATCH_INSERT),
                "jobs/s",
                _targets(INSERT_BATCH_TARGET, kind),
            ),
            Row(
                name,
                f"claim+complete batches of {BATCH_CLAIM}",
                claims,
                "jobs/s",
                _targets(CLAIM_TARGET, kind),
            ),
        ]

    return run


BENCHMARKS = [
    Benchmark(
        f"primitives-{kind}", "primitives", f"insert / claim+complete on {kind}", _runner(kind)
    )
    for kind in KINDS
]
