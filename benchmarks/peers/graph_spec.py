"""The graph workloads every flow system runs alike, and what such a system provides.

Each system defines the same three flows under the same names: a 3-step chain, a diamond
a -> (b, c) -> d, and a fan-out seed -> map of FANOUT_WIDTH -> gather. Runs are started
by the parent; worker processes (any language) print one "ready" line when they serve.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from benchmarks.peers.spec import NotInstalled, Outcome, Unsupported

__all__ = ["NotInstalled", "Outcome", "Unsupported"]

#: Elements of the fan-out's map step (its seed step returns a list this long).
FANOUT_WIDTH = 100


@dataclass(frozen=True)
class Step:
    """One step of a workload: its name, what it depends on, and whether it is a map."""

    slug: str
    depends_on: tuple[str, ...] = ()
    is_map: bool = False


@dataclass(frozen=True)
class Workload:
    """A flow shape; `slug` names the flow (and its queue) in every system."""

    key: str
    slug: str
    steps: tuple[Step, ...]
    run_input: dict[str, Any]

    @property
    def tasks_per_run(self) -> int:
        """Tasks one run makes: one per plain step, FANOUT_WIDTH per map step."""
        return sum(FANOUT_WIDTH if step.is_map else 1 for step in self.steps)

    @property
    def map_tasks_per_run(self) -> int:
        return sum(FANOUT_WIDTH for step in self.steps if step.is_map)


CHAIN = Workload(
    "chain",
    "bench_chain",
    (Step("first"), Step("second", ("first",)), Step("third", ("second",))),
    {"n": 1},
)
DIAMOND = Workload(
    "diamond",
    "bench_diamond",
    (Step("a"), Step("b", ("a",)), Step("c", ("a",)), Step("d", ("b", "c"))),
    {"n": 1},
)
FANOUT = Workload(
    "fanout",
    "bench_fanout",
    (Step("seed"), Step("each", ("seed",), is_map=True), Step("gather", ("each",))),
    {"n": FANOUT_WIDTH},
)
WORKLOADS: dict[str, Workload] = {w.key: w for w in (CHAIN, DIAMOND, FANOUT)}
#: The chain again for the latency samples, under its own key: a system whose queue is named
#: per workload (DBOS) serves them on a queue where no run left by a budget-limited
#: throughput measurement waits ahead of them.
LATENCY_CHAIN = Workload("latency", CHAIN.slug, CHAIN.steps, CHAIN.run_input)


@dataclass(frozen=True)
class Measurement:
    """One figure-taking step: a workload, how many worker processes, which metric keys."""

    key: str
    label: str
    workload: str
    processes: int


#: Every measurement, in order; the latency one uses a single idle worker.
MEASUREMENTS: tuple[Measurement, ...] = (
    Measurement("chain_1", "3-step chain, 1 worker process", "chain", 1),
    Measurement("chain_2", "3-step chain, 2 worker processes", "chain", 2),
    Measurement("diamond_2", "diamond, 2 worker processes", "diamond", 2),
    Measurement("fanout_2", f"fan-out 1 -> {FANOUT_WIDTH} -> 1, 2 worker processes", "fanout", 2),
    Measurement("latency", "start-to-result of a 3-step chain, idle worker", "chain", 1),
)


@dataclass(frozen=True)
class Sizes:
    """Runs per measurement, and how long one may take before it is timed on what is done."""

    chain_runs: int
    diamond_runs: int
    fanout_runs: int
    latency_samples: int
    latency_warmup: int
    budget_s: float

    def runs(self, workload: str) -> int:
        return {
            "chain": self.chain_runs,
            "diamond": self.diamond_runs,
            "fanout": self.fanout_runs,
        }[workload]


FULL = Sizes(2_000, 1_000, 50, 100, 5, 60.0)
QUICK = Sizes(200, 100, 5, 20, 3, 15.0)


@dataclass(frozen=True)
class Setting:
    """One configuration of a system's workers; each setting is its own table row."""

    label: str
    config: str
    options: dict[str, int] = field(default_factory=dict)


@dataclass
class Started:
    """Runs the parent started: when work could begin (epoch seconds), how many, the system's
    handles on them, and how many runs of that flow had completed before (set by the caller)."""

    at: float
    count: int
    handles: list[Any] = field(default_factory=list)
    baseline: int = 0


class GraphPeer:
    """Base class: one flow system, bound to its own fresh database once `setup` ran."""

    name = ""
    settings: Sequence[Setting] = ()
    #: Measurement key -> why this system cannot express it ("" = it can).
    cannot: ClassVar[dict[str, str]] = {}

    def check(self) -> None:
        """Raise NotInstalled (its message is the row's status) when the system cannot run."""

    def database(self, admin_url: str) -> Any:
        """A context manager yielding the URL of a fresh database for this system."""
        from benchmarks import postgres

        return postgres.temporary_database(admin_url)

    def setup(self, url: str) -> None:
        """Install the system's schema and define the three flows."""

    def close(self) -> None:
        """Release what `setup` opened."""

    def worker_command(self, url: str, workload: Workload, setting: Setting) -> list[str]:
        """argv of one worker process serving `workload`; it prints "ready" once serving."""
        raise NotImplementedError

    def worker_env(self) -> dict[str, str] | None:
        """Environment of the worker processes (None: this process's)."""
        return None

    def start_runs(self, workload: Workload, count: int) -> Started:
        """Start `count` runs at once (one transaction where the system allows)."""
        raise NotImplementedError

    def finished(self, workload: Workload) -> tuple[int, float]:
        """Runs of `workload` completed so far, and the latest completion (epoch seconds)."""
        raise NotImplementedError

    def wait_runs(self, workload: Workload, started: Started, deadline: float) -> tuple[int, float]:
        """Block until every started run completed or `deadline` (monotonic) passed.

        Returns how many of them completed and the latest completion (epoch seconds); the
        default polls `finished`, so a run is timed by the system's own completion stamp.
        """
        while True:
            done, last = self.finished(workload)
            done -= started.baseline
            if done >= started.count or time.monotonic() > deadline:
                return done, last
            time.sleep(0.02)

    def start_one(self, workload: Workload) -> Any:
        """Start one run for the latency measurement; returns what `wait_result` needs."""
        raise NotImplementedError

    def wait_result(self, handle: Any, timeout: float) -> None:
        """Block until the run's result is available to a client (raise on failure/timeout)."""
        raise NotImplementedError
