"""The flows of the steered benchmarks (issue 11), defined when this module is imported.

A worker process knows them by importing this module (`Pgflow(..., imports=[__name__])`);
the flows stay referenced here, since the registry holds flows weakly. Where pgflow has no
`wait_for` yet, nothing is defined and MISSING says why.
"""

from __future__ import annotations

import time
from typing import Any

import pgflow

#: Why the steered benchmarks cannot run on this pgflow, or "" when they can.
MISSING = "" if hasattr(pgflow.Flow, "wait_for") else "not measured: wait_for steps missing"

SIGNAL_QUEUE = "steered_signal"
CANCEL_QUEUE = "steered_cancel"
#: The wait step of the signal flow, the name `app.signal` is called with.
WAIT_STEP = "approval"


def _signal_flow() -> pgflow.Flow:
    """approval (wait_for, the run's first step) -> resumed, which reports when it starts."""
    flow = pgflow.Flow("bench_steered_signal", queue=SIGNAL_QUEUE)
    flow.wait_for(WAIT_STEP)

    @flow.step(depends_on=[WAIT_STEP])
    def resumed(approval: dict[str, Any]) -> int:
        started_ns = time.monotonic_ns()  # CLOCK_MONOTONIC: one clock for every process
        from benchmarks import jobs

        if jobs.start_sink is not None:
            jobs.start_sink.put((approval["seq"], started_ns))
        return int(approval["seq"])

    return flow


def _cancel_flow() -> pgflow.Flow:
    """elements -> element (a map, each element sleeping a little) -> gather."""
    flow = pgflow.Flow("bench_steered_cancel", queue=CANCEL_QUEUE)

    @flow.step
    def elements(input: dict[str, Any]) -> list[float]:
        return [float(input["seconds"])] * int(input["count"])

    @flow.map(over="elements")
    def element(item: float) -> None:
        time.sleep(item)

    @flow.step(depends_on=["element"])
    def gather(element: list[None]) -> int:
        return len(element)

    return flow


#: The flows by key ("signal", "cancel"); empty where MISSING.
FLOWS: dict[str, pgflow.Flow] = (
    {} if MISSING else {"signal": _signal_flow(), "cancel": _cancel_flow()}
)
