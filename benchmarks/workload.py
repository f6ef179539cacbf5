"""The measured workload: a 3-step no-op workflow, and its steps to call directly.

Every suite runs this same workflow, so in-process, durable and distributed figures
differ only by what pgflow adds around the three calls.
"""

from __future__ import annotations

from typing import Any

from benchmarks.harness import require

STATE: dict[str, Any] = {"data": "bench", "n": 1}


def validate(state: dict[str, Any]) -> dict[str, Any]:
    return state


def transform(state: dict[str, Any]) -> dict[str, Any]:
    return state


def publish(state: dict[str, Any]) -> dict[str, Any]:
    return state


STEPS = (validate, transform, publish)


def direct_call() -> object:
    """The baseline: the three steps chained by hand, no engine."""
    return publish(transform(validate(STATE)))


def build_flow() -> Any:
    """The same three steps as a `pgflow.Flow` (decorator form), or Skip if not built yet."""
    flow_class = require("pgflow.definition", "Flow")
    flow = flow_class("bench_noop")
    for step in STEPS:
        flow.step(step)
    return flow
