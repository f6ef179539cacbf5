"""Suite "graph" (issue 10): graph flows in-process, and distributed on PostgreSQL.

`graph-inprocess`: `pgflow.execute` of the diamond a -> (b, c) -> d with no backend (µs per
run) and of a root map over 100 elements. `graph-postgres`: the peers' graph measurements
(3-step chain with 1 and 2 worker processes, diamond, fan-out of 100, start-to-result
latency) for pgflow alone. Both are skipped with "not measured: graph engine missing" where
`pgflow.Flow` has no `map`.

The in-process figures depend on where the kernel puts the runner threads: on a small VM a
wake-up of a thread on another, idle vCPU costs ~25 µs (a same-vCPU one ~3 µs), so a run
that waits for such wake-ups measures them (before issue 10's rework the diamond took ~85 µs
with its threads on one vCPU and ~250 µs spread over two, whatever the timing loop).
"""

from __future__ import annotations

from benchmarks.harness import (
    MEDIAN,
    P99,
    RATE,
    Benchmark,
    Row,
    RunContext,
    Skip,
    Target,
    time_calls,
)

US = 1_000.0
MAP_WIDTH = 100


def _require_engine() -> None:
    from benchmarks import graph_flows

    if graph_flows.MISSING:
        raise Skip(graph_flows.MISSING)


def run_inprocess(ctx: RunContext) -> list[Row]:
    _require_engine()
    import pgflow
    from benchmarks import graph_flows

    flows = graph_flows.flows()
    diamond, mapped = flows["diamond"], flows["map"]
    items = list(range(MAP_WIDTH))
    runs = ctx.size(20_000, 2_000)
    diamond_samples = time_calls(lambda: pgflow.execute(diamond, {"n": 1}), runs, runs // 10)
    maps = ctx.size(1_000, 100)
    map_samples = time_calls(lambda: pgflow.execute(mapped, items), maps, maps // 10)
    map_metrics = map_samples.metrics()
    map_metrics["tasks_per_s"] = map_metrics[RATE] * MAP_WIDTH
    return [
        Row(
            "graph-inprocess",
            "diamond a -> (b, c) -> d, no backend",
            diamond_samples.metrics(),
            "runs/s",
            (Target(MEDIAN, "<", 100 * US, "median < 100 µs"),),
        ),
        Row("graph-inprocess", f"map of {MAP_WIDTH}, no backend", map_metrics, "runs/s"),
    ]


def run_postgres(ctx: RunContext) -> list[Row]:
    _require_engine()
    from benchmarks.peers import graph_runner
    from benchmarks.peers.graph_spec import QUICK, Sizes

    sizes: Sizes | None = QUICK if ctx.quick else None
    outcomes = graph_runner.run(
        quick=ctx.quick,
        admin_url=ctx.postgres_admin_url,
        systems=(("pgflow_graph_peer", "PgflowGraphPeer"),),
        sizes=sizes,
        show_progress=False,
    )
    rows: list[Row] = []
    for outcome in outcomes:
        if outcome.status != "ok":
            rows.append(Row("graph-postgres", outcome.system, skipped=outcome.status))
            continue
        rows += _rows(outcome.system, outcome.metrics)
    return rows


#: (metric of the graph table, case label, unit, targets) of each throughput row.
_RATES: tuple[tuple[str, str, str, tuple[Target, ...]], ...] = (
    ("chain_1", "3-step chain, 1 worker process", "runs/s", ()),
    (
        "chain_2",
        "3-step chain, 2 worker processes",
        "runs/s",
        (Target(RATE, ">=", 3_000.0, ">= 3,000 runs/s"),),
    ),
    ("diamond_2", "diamond, 2 worker processes", "runs/s", ()),
    ("fanout_2", "fan-out 1 -> 100 -> 1, 2 processes", "runs/s", ()),
    (
        "fanout_2_map_tasks",
        "fan-out map tasks, 2 processes",
        "tasks/s",
        (Target(RATE, ">=", 15_000.0, ">= 15,000 tasks/s"),),
    ),
)


def _rows(system: str, metrics: dict[str, float]) -> list[Row]:
    """The graph table's figures of one pgflow setting as harness rows (rates, latency)."""
    rows = [
        Row("graph-postgres", f"{system}: {label}", {RATE: metrics[key]}, unit, targets)
        for key, label, unit, targets in _RATES
        if key in metrics
    ]
    if "latency_p50_ms" in metrics:
        latency = {MEDIAN: metrics["latency_p50_ms"] * 1e6, P99: metrics["latency_p99_ms"] * 1e6}
        target = (Target(MEDIAN, "<", 3e6, "p50 < 3 ms"),)
        rows.append(Row("graph-postgres", f"{system}: chain start-to-result", latency, "", target))
    return rows


BENCHMARKS = [
    Benchmark(
        "graph-inprocess",
        "graph",
        "pgflow.execute of a diamond and of a map over 100 elements, no backend",
        run_inprocess,
    ),
    Benchmark(
        "graph-postgres",
        "graph",
        "graph flows as tasks on PostgreSQL: chain (1, 2 processes), diamond, fan-out, latency",
        run_postgres,
    ),
]
