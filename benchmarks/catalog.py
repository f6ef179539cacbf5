"""Every benchmark, in the order the full run executes them (cheap first)."""

from __future__ import annotations

from benchmarks import (
    dashboard,
    distributed,
    durable,
    flow_control,
    graph,
    inprocess,
    primitives,
    steered,
    telemetry,
)
from benchmarks.harness import Benchmark

BENCHMARKS: list[Benchmark] = [
    *inprocess.BENCHMARKS,
    *durable.BENCHMARKS,
    *primitives.BENCHMARKS,
    *distributed.BENCHMARKS,
    *graph.BENCHMARKS,
    *steered.BENCHMARKS,
    *telemetry.BENCHMARKS,
    *flow_control.BENCHMARKS,
    *dashboard.BENCHMARKS,
]


def select(requested: list[str]) -> list[Benchmark]:
    """Benchmarks named in `requested` (names or suite names), in catalog order.

    Raises ValueError naming what is unknown, so a typo never silently runs nothing.
    """
    wanted = {item.strip() for entry in requested for item in entry.split(",") if item.strip()}
    known = {b.name for b in BENCHMARKS} | {b.suite for b in BENCHMARKS}
    unknown = sorted(wanted - known)
    if unknown:
        raise ValueError(
            f"unknown benchmark(s): {', '.join(unknown)}; choose from {', '.join(sorted(known))}"
        )
    return [b for b in BENCHMARKS if b.name in wanted or b.suite in wanted]
