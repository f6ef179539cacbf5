"""The PNG chart: throughput and enqueue-to-start latency per system (matplotlib, Agg)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from benchmarks.peers.spec import CONCURRENCY, WIDE_CONCURRENCY, Outcome

THROUGHPUT = (
    ("insert_one", "insert 1/call"),
    ("insert_bulk", "insert bulk"),
    ("drain_1", f"drain, 1 proc x {CONCURRENCY}"),
    ("drain_2", f"drain, 2 proc x {CONCURRENCY}"),
    ("drain_wide_1", f"drain, 1 proc x {WIDE_CONCURRENCY}"),
    ("drain_wide_2", f"drain, 2 proc x {WIDE_CONCURRENCY}"),
    ("flow_inprocess", "3-step wf in-process"),
    ("flow_distributed", "3-step wf distributed"),
)
LATENCY = (("latency_p50_ms", "p50"), ("latency_p95_ms", "p95"), ("latency_p99_ms", "p99"))


def _value(outcome: Outcome, key: str) -> float:
    value = outcome.metrics.get(key, 0.0)
    return value if math.isfinite(value) and value > 0 else 0.0


def write_chart(path: Path, outcomes: Sequence[Outcome], title: str) -> Path:
    """Draw grouped bars (log scale) of every measured figure; return the path written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    systems = [o for o in outcomes if o.metrics]
    names = [o.system for o in systems]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(14, 10), constrained_layout=True)
    width = 0.8 / len(THROUGHPUT)
    for index, (key, label) in enumerate(THROUGHPUT):
        xs = [i + (index - (len(THROUGHPUT) - 1) / 2) * width for i in range(len(systems))]
        top.bar(xs, [_value(o, key) for o in systems], width, label=label)
    top.set_yscale("log")
    low, high = top.get_ylim()
    top.set_ylim(low, high * 20)  # headroom above the tallest bars for the legend
    top.set_ylabel("per second (log scale, higher is better)")
    top.set_xticks(range(len(systems)), names, rotation=15)
    top.set_title("Throughput")
    top.legend(ncols=4, fontsize="small", loc="upper center")
    top.grid(axis="y", which="both", alpha=0.3)

    timed = [o for o in systems if _value(o, "latency_p50_ms") > 0]
    width = 0.8 / len(LATENCY)
    for index, (key, label) in enumerate(LATENCY):
        xs = [i + (index - (len(LATENCY) - 1) / 2) * width for i in range(len(timed))]
        bottom.bar(xs, [_value(o, key) for o in timed], width, label=label)
    bottom.set_yscale("log")
    bottom.set_ylabel("ms (log scale, lower is better)")
    bottom.set_xticks(range(len(timed)), [o.system for o in timed], rotation=15)
    bottom.set_title("Enqueue-to-start latency, idle running worker")
    bottom.legend(fontsize="small")
    bottom.grid(axis="y", which="both", alpha=0.3)

    absent = [f"{o.system}: {o.status}" for o in outcomes if not o.metrics]
    if absent:
        fig.text(0.01, 0.002, "Not measured - " + "; ".join(absent), fontsize="small")
    fig.suptitle(title, fontsize="medium")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
