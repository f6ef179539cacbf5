"""The benchmark flows as pgflow graph flows (API section 9), built on first use.

Built lazily, so that importing this module works where the graph engine is missing; a
worker process builds them before it starts, which is how its instance knows them.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import pgflow

#: Why the graph benchmarks cannot run on this pgflow, or "" when they can.
MISSING = "" if hasattr(pgflow.Flow, "map") else "not measured: graph engine missing"


def _chain() -> Any:
    flow: Any = pgflow.Flow("bench_chain", queue="graph_chain")

    @flow.step
    def first(input: Any) -> Any:
        return input

    @flow.step(depends_on=["first"])
    def second(first: Any) -> Any:
        return first

    @flow.step(depends_on=["second"])
    def third(second: Any) -> Any:
        return second

    return flow


def _diamond() -> Any:
    flow: Any = pgflow.Flow("bench_diamond", queue="graph_diamond")

    @flow.step
    def a(input: Any) -> Any:
        return input

    @flow.step(depends_on=["a"])
    def b(a: Any) -> Any:
        return a

    @flow.step(depends_on=["a"])
    def c(a: Any) -> Any:
        return a

    @flow.step(depends_on=["b", "c"])
    def d(b: Any, c: Any) -> Any:
        return {"b": b, "c": c}

    return flow


def _fanout() -> Any:
    flow: Any = pgflow.Flow("bench_fanout", queue="graph_fanout")

    @flow.step
    def seed(input: Any) -> list[int]:
        return list(range(int(input["n"])))

    @flow.map(over="seed")
    def each(item: int) -> int:
        return item * 2

    @flow.step(depends_on=["each"])
    def gather(each: list[int]) -> Any:
        return {"total": len(each)}

    return flow


def _map_inprocess() -> Any:
    flow: Any = pgflow.Flow("bench_map_inprocess")

    @flow.map
    def double(item: int) -> int:
        return item * 2

    return flow


@cache
def flows() -> dict[str, Any]:
    """The chain, diamond and fan-out flows by workload key, and a root map of its input."""
    return {"chain": _chain(), "diamond": _diamond(), "fanout": _fanout(), "map": _map_inprocess()}
