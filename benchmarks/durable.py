"""Suite 2a (issue 3): the 3-step workflow run durably, each step recorded in the database.

Measured with a whole-run timeout (the target; once the default) and with timeout=None
(today's default), so a miss can be told apart: storage round trips, or the timeout's cost.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from benchmarks import workload
from benchmarks.backends import Kind, open_backend
from benchmarks.harness import RATE, Benchmark, Row, RunContext, Target, require, time_calls

TARGETS: dict[Kind, float] = {"sqlite": 1_000, "postgres": 300}
KINDS: tuple[Kind, ...] = ("sqlite", "postgres")
CASES: tuple[tuple[str, dict[str, Any]], ...] = (
    ("3-step workflow, timeout=30", {"timeout": 30.0}),
    ("3-step workflow, timeout=None (default)", {"timeout": None}),
)


def _runner(kind: Kind) -> Callable[[RunContext], list[Row]]:
    def run(ctx: RunContext) -> list[Row]:
        execute = require("pgflow.executor", "execute")
        flow = workload.build_flow()
        target = TARGETS[kind]
        rows = []
        with open_backend(kind, ctx) as opened:
            for label, options in CASES:

                def call(options: dict[str, Any] = options) -> object:
                    return execute(flow, workload.STATE, backend=opened.backend, **options)

                if call() != workload.STATE:
                    raise RuntimeError(f"{label}: the workflow did not return its input")
                samples = time_calls(call, ctx.size(2_000, 200), warmup=ctx.size(100, 20))
                targets = (Target(RATE, ">=", target, f">= {target:,.0f} workflows/s"),)
                rows.append(
                    Row(
                        f"durable-{kind}",
                        label,
                        samples.metrics(),
                        "workflows/s",
                        targets if options["timeout"] is not None else (),
                    )
                )
        return rows

    return run


BENCHMARKS = [
    Benchmark(
        f"durable-{kind}",
        "durable",
        f"3-step workflow recorded in {kind} (workflows/s)",
        _runner(kind),
    )
    for kind in KINDS
]
