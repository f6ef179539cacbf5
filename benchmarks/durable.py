"""Suite 2a (issue 3): the 3-step workflow run durably, each step recorded in the database."""

from __future__ import annotations

from collections.abc import Callable

from benchmarks import workload
from benchmarks.backends import Kind, open_backend
from benchmarks.harness import RATE, Benchmark, Row, RunContext, Target, require, time_calls

TARGETS: dict[Kind, float] = {"sqlite": 1_000, "postgres": 300}
KINDS: tuple[Kind, ...] = ("sqlite", "postgres")


def _runner(kind: Kind) -> Callable[[RunContext], list[Row]]:
    def run(ctx: RunContext) -> list[Row]:
        execute = require("pgflow.executor", "execute")
        flow = workload.build_flow()
        with open_backend(kind, ctx) as opened:

            def call() -> object:
                return execute(flow, workload.STATE, backend=opened.backend)

            if call() != workload.STATE:
                raise RuntimeError("the durable workflow did not return its input")
            samples = time_calls(call, ctx.size(3_000, 200), warmup=ctx.size(100, 20))
        target = TARGETS[kind]
        return [
            Row(
                f"durable-{kind}",
                "3-step workflow, default options",
                samples.metrics(),
                "workflows/s",
                (Target(RATE, ">=", target, f">= {target:,.0f} workflows/s"),),
            )
        ]

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
