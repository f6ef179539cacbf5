"""Measuring: timed loops, latency statistics, targets and the rows every suite returns.

Suites only produce `Row`s; this module owns how a number is taken (perf_counter_ns,
warm-ups, garbage collection) so every figure in the table is measured the same way.
"""

from __future__ import annotations

import gc
import importlib
import math
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

#: Metric keys used across suites; latencies are in nanoseconds, rates per second.
MEDIAN = "median_ns"
P95 = "p95_ns"
P99 = "p99_ns"
RATE = "rate_per_s"
OVERHEAD_PER_STEP = "overhead_per_step_ns"
SECONDS = "seconds"
#: Median duration of the insert call inside an enqueue-to-start sample (its commit share).
INSERT_CALL = "insert_call_median_ns"


class Skip(Exception):
    """A benchmark cannot run here (missing component, no database); the row says why."""


@dataclass(frozen=True)
class Target:
    """A goal for one metric, shown next to the figure with PASS or MISS."""

    metric: str
    op: Literal["<", ">="]
    value: float
    label: str

    def met(self, metrics: dict[str, float]) -> bool | None:
        """True or False against the figure; None when the metric was not measured."""
        if self.metric not in metrics:
            return None
        figure = metrics[self.metric]
        return figure < self.value if self.op == "<" else figure >= self.value


@dataclass
class Row:
    """One line of the results table: a case of a benchmark, its figures or why it is absent."""

    benchmark: str
    case: str
    metrics: dict[str, float] = field(default_factory=dict)
    rate_unit: str = ""
    targets: tuple[Target, ...] = ()
    skipped: str | None = None
    error: str | None = None
    #: Free text for the table's detail column (e.g. what a call wrote), when set.
    detail: str = ""

    def verdict(self) -> str:
        """PASS / MISS against every target ("-" with none); skip and error reasons win."""
        if self.error is not None:
            return f"error: {self.error}"
        if self.skipped is not None:
            return f"skipped: {self.skipped}"
        checks = [target.met(self.metrics) for target in self.targets]
        known = [check for check in checks if check is not None]
        if not known:
            return "-"
        return "PASS" if all(known) else "MISS"

    def to_json(self) -> dict[str, Any]:
        return {
            "benchmark": self.benchmark,
            "case": self.case,
            "metrics": {k: v if math.isfinite(v) else None for k, v in self.metrics.items()},
            "rate_unit": self.rate_unit,
            "targets": [
                {
                    "metric": t.metric,
                    "op": t.op,
                    "value": t.value,
                    "label": t.label,
                    "met": t.met(self.metrics),
                }
                for t in self.targets
            ],
            "verdict": self.verdict(),
            "detail": self.detail,
            "skipped": self.skipped,
            "error": self.error,
        }


@dataclass
class RunContext:
    """What a benchmark may ask of the run: its size and a scratch directory."""

    quick: bool
    workdir: Path
    postgres_admin_url: str
    #: Per-process queue limit of the distributed suite's worker processes.
    worker_concurrency: int = 100

    def size(self, full: int, quick: int) -> int:
        return quick if self.quick else full


@dataclass(frozen=True)
class Benchmark:
    """A named, selectable benchmark; `run` returns its rows or raises Skip."""

    name: str
    suite: str
    description: str
    run: Callable[[RunContext], list[Row]]


def require(module: str, attribute: str | None = None) -> Any:
    """Import a module (and attribute) under test, or Skip saying what is missing.

    The measured code lands in parallel with the suites, so absence is a skip, not a crash.
    """
    what = f"{module}.{attribute}" if attribute else module
    try:
        loaded = importlib.import_module(module)
        return getattr(loaded, attribute) if attribute else loaded
    except (ImportError, AttributeError) as exc:
        raise Skip(f"{what} not available yet: {exc}") from exc


@contextmanager
def quiet_gc() -> Iterator[None]:
    """Collect, then freeze survivors for the timed section.

    Collection stays enabled (its cost is part of real use), but the objects built before
    timing are moved out of the generations so they are not rescanned on every pass.
    """
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.collect()


@dataclass(frozen=True)
class Samples:
    """Per-call latencies (ns) and the wall time of the whole timed loop."""

    latencies_ns: list[int]
    elapsed_ns: int

    def metrics(self) -> dict[str, float]:
        return latency_metrics(self.latencies_ns) | {
            RATE: rate(len(self.latencies_ns), self.elapsed_ns)
        }


def latency_metrics(latencies_ns: list[int]) -> dict[str, float]:
    """n, median, p95, p99 (nearest-rank style inclusive quantiles) and mean, in ns."""
    if not latencies_ns:
        return {"n": 0.0}
    if len(latencies_ns) == 1:
        only = float(latencies_ns[0])
        return {"n": 1.0, MEDIAN: only, P95: only, P99: only, "mean_ns": only}
    cuts = statistics.quantiles(latencies_ns, n=100, method="inclusive")
    return {
        "n": float(len(latencies_ns)),
        MEDIAN: float(statistics.median(latencies_ns)),
        P95: cuts[94],
        P99: cuts[98],
        "mean_ns": statistics.fmean(latencies_ns),
    }


def rate(count: int, elapsed_ns: int) -> float:
    """Operations per second."""
    return count * 1e9 / elapsed_ns if elapsed_ns > 0 else float("inf")


def time_calls(call: Callable[[], object], iterations: int, warmup: int) -> Samples:
    """Time `iterations` calls one by one after `warmup` untimed ones."""
    for _ in range(warmup):
        call()
    latencies = [0] * iterations
    clock = time.perf_counter_ns
    with quiet_gc():
        begin = clock()
        for index in range(iterations):
            start = clock()
            call()
            latencies[index] = clock() - start
        elapsed = clock() - begin
    return Samples(latencies, elapsed)


def merge(samples: list[Samples]) -> Samples:
    """Pool the samples of several rounds of the same case."""
    return Samples(
        [value for sample in samples for value in sample.latencies_ns],
        sum(sample.elapsed_ns for sample in samples),
    )


def time_block(work: Callable[[], int]) -> tuple[int, int]:
    """Run `work` once under the timer; it returns how many operations it did."""
    with quiet_gc():
        start = time.perf_counter_ns()
        count = work()
        elapsed = time.perf_counter_ns() - start
    return count, elapsed
