"""Suite 1 (issue 2): what `pgflow.execute` costs over calling the three steps by hand.

Cases are measured in interleaved rounds (baseline, then each case, repeated), so a slow
moment of the machine spreads over all of them instead of skewing one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from benchmarks import workload
from benchmarks.harness import (
    MEDIAN,
    OVERHEAD_PER_STEP,
    Benchmark,
    Row,
    RunContext,
    Samples,
    Skip,
    Target,
    merge,
    require,
    time_calls,
)

NAME = "inprocess"
US = 1_000.0


@dataclass(frozen=True)
class Case:
    """One way of running the workflow; `make_call` builds a fresh call per round."""

    label: str
    make_call: Callable[[], Callable[[], object]]
    targets: tuple[Target, ...] = ()


def _cases(flow: Any) -> tuple[list[Case], list[Row]]:
    """The cases that can run now, and skipped rows for those whose backend is missing."""
    execute = require("pgflow.executor", "execute")

    def no_backend(**options: Any) -> Callable[[], Callable[[], object]]:
        return lambda: lambda: execute(flow, workload.STATE, **options)

    cases = [
        Case(
            "(a) no backend, timeout=None",
            no_backend(timeout=None),
            (Target(OVERHEAD_PER_STEP, "<", 10 * US, "overhead < 10 µs/step"),),
        ),
        Case(
            "(b) no backend, timeout=30",
            no_backend(timeout=30.0),
            (Target(MEDIAN, "<", 50 * US, "median < 50 µs"),),
        ),
    ]
    try:
        memory_backend = require("pgflow_backends.memory", "InMemoryBackend")
    except Skip as skip:
        return cases, [
            Row(NAME, "(c) InMemoryBackend, timeout=30", skipped=str(skip)),
            Row(NAME, "(d) InMemoryBackend, timeout=None", skipped=str(skip)),
        ]

    def with_memory(**options: Any) -> Callable[[], Callable[[], object]]:
        def make() -> Callable[[], object]:
            backend = memory_backend()  # fresh per round so recorded runs do not pile up
            return lambda: execute(flow, workload.STATE, backend=backend, **options)

        return make

    cases += [
        Case(
            "(c) InMemoryBackend, timeout=30",
            with_memory(timeout=30.0),
            (Target(MEDIAN, "<", 100 * US, "median < 100 µs"),),
        ),
        Case("(d) InMemoryBackend, timeout=None", with_memory(timeout=None)),
    ]
    return cases, []


def run(ctx: RunContext) -> list[Row]:
    flow = workload.build_flow()
    cases, skipped = _cases(flow)
    for case in cases:
        result = case.make_call()()
        if result != workload.STATE:
            raise RuntimeError(f"{case.label} returned {result!r}, expected the input back")

    rounds = ctx.size(5, 3)
    iterations = ctx.size(4_000, 500)
    warmup = ctx.size(300, 50)
    baseline: list[Samples] = []
    measured: dict[str, list[Samples]] = {case.label: [] for case in cases}
    for _ in range(rounds):
        baseline.append(time_calls(workload.direct_call, iterations, warmup))
        for case in cases:
            measured[case.label].append(time_calls(case.make_call(), iterations, warmup))

    base = merge(baseline).metrics()
    rows = [Row(NAME, "direct calls (baseline)", base, "workflows/s")]
    steps = len(workload.STEPS)
    for case in cases:
        metrics = merge(measured[case.label]).metrics()
        metrics[OVERHEAD_PER_STEP] = (metrics[MEDIAN] - base[MEDIAN]) / steps
        rows.append(Row(NAME, case.label, metrics, "workflows/s", case.targets))
    return rows + skipped


BENCHMARKS = [
    Benchmark(
        NAME,
        "inprocess",
        "3-step no-op workflow via pgflow.execute: no backend and InMemoryBackend",
        run,
    )
]
