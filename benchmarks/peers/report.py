"""The peers table: figures per system, then ratios to the best peer and to the floor."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.peers.spec import CONCURRENCY, WIDE_CONCURRENCY, Outcome

#: (metric, header, higher is better)
COLUMNS: tuple[tuple[str, str, bool], ...] = (
    ("insert_one", "insert 1/call /s", True),
    ("insert_bulk", "insert bulk /s", True),
    ("drain_1", f"drain 1p x{CONCURRENCY} /s", True),
    ("drain_2", f"drain 2p x{CONCURRENCY} /s", True),
    ("drain_wide_1", f"drain 1p x{WIDE_CONCURRENCY} /s", True),
    ("drain_wide_2", f"drain 2p x{WIDE_CONCURRENCY} /s", True),
    ("latency_p50_ms", "start p50 ms", False),
    ("latency_p95_ms", "p95 ms", False),
    ("latency_p99_ms", "p99 ms", False),
    ("flow_inprocess", "wf in-proc /s", True),
    ("flow_distributed", "wf distrib /s", True),
    ("rss_mb", "worker RSS MB", False),
)
FLOOR_ONE = "floor (SQL, 1 job/stmt)"
FLOOR_TEN = "floor (SQL, 10 jobs/stmt)"
FLOOR_BATCH = "floor (SQL, 100 jobs/stmt)"
#: Which floor row and metric each column is compared with (throughput columns only): the
#: drains with as many jobs per statement as the workers have slots per process.
FLOOR_REFERENCE: dict[str, tuple[str, str]] = {
    "insert_one": (FLOOR_ONE, "insert_one"),
    "insert_bulk": (FLOOR_BATCH, "insert_bulk"),
    "drain_1": (FLOOR_TEN, "drain_1"),
    "drain_2": (FLOOR_TEN, "drain_2"),
    "drain_wide_1": (FLOOR_BATCH, "drain_wide_1"),
    "drain_wide_2": (FLOOR_BATCH, "drain_wide_2"),
}
#: What each Fraction column is compared with, for the sentences above the tables.
FLOOR_SENTENCE = (
    f"insert 1/call vs 1 job/stmt; the x{CONCURRENCY} drains vs claim+complete "
    f"{CONCURRENCY} jobs/stmt; insert bulk and the x{WIDE_CONCURRENCY} drains vs "
    f"{WIDE_CONCURRENCY} jobs/stmt"
)


def floor_outcomes(figures: dict[str, float]) -> list[Outcome]:
    """The floor as three table rows: one, 10 and 100 jobs per statement.

    Its "drain" is claim + complete on one connection until the queue is empty; each row
    fills the columns it is the like-for-like reference of (FLOOR_REFERENCE).
    """
    one = Outcome(FLOOR_ONE, "psycopg, one connection, autocommit, 3 round trips per job")
    one.metrics = {"insert_one": figures["insert_one"]}
    one.notes["lifecycle"] = f"insert+claim+complete {figures['lifecycle_one']:,.0f} jobs/s"
    one.notes["drain"] = f"claim+complete 1 job/stmt: {figures['drain_one']:,.0f} jobs/s"
    ten = Outcome(FLOOR_TEN, "psycopg, one connection, claim and complete 10 jobs per statement")
    ten.metrics = {"drain_1": figures["drain_batched_10"], "drain_2": figures["drain_batched_10"]}
    ten.notes["drain_2"] = "one connection (same figure as drain_1)"
    batch = Outcome(FLOOR_BATCH, "psycopg, one connection, 3 statements per 100 jobs")
    batch.metrics = {
        "insert_bulk": figures["insert_bulk"],
        "drain_wide_1": figures["drain_batched"],
        "drain_wide_2": figures["drain_batched"],
    }
    batch.notes["lifecycle"] = f"insert+claim+complete {figures['lifecycle_batched']:,.0f} jobs/s"
    batch.notes["drain_wide_2"] = "one connection (same figure as drain_wide_1)"
    return [one, ten, batch]


def _cell(outcome: Outcome, key: str) -> str:
    value = outcome.metrics.get(key)
    if value is None or not math.isfinite(value):
        return "-"
    if key.endswith("_ms"):
        return f"{value:,.2f}" if value < 100 else f"{value:,.0f}"
    return f"{value:,.0f}"


def _grid(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(
            str(c).rjust(w) if i else str(c).ljust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in [header, *rows]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def is_floor(outcome: Outcome) -> bool:
    return outcome.system.startswith("floor")


def best_peer(outcomes: Sequence[Outcome], key: str, higher: bool) -> float | None:
    values = [
        o.metrics[key]
        for o in outcomes
        if not is_floor(o) and key in o.metrics and math.isfinite(o.metrics[key])
    ]
    if not values:
        return None
    return max(values) if higher else min(values)


def render(outcomes: Sequence[Outcome]) -> str:
    """Figures, ratio to the best peer, fraction of the floor, then every note."""
    header = ["system", *(label for _, label, _ in COLUMNS)]
    figures = [[o.system, *(_cell(o, key) for key, _, _ in COLUMNS)] for o in outcomes]
    parts = ["Figures (throughput per second; latency in ms; - = not measured, see notes)"]
    parts.append(_grid(header, figures))

    measured = [o for o in outcomes if not is_floor(o) and o.status == "ok"]
    bests = {key: best_peer(outcomes, key, higher) for key, _, higher in COLUMNS}
    ratio_rows = []
    for o in measured:
        cells = [o.system]
        for key, _, higher in COLUMNS:
            best = bests[key]
            value = o.metrics.get(key)
            if best is None or value is None or not math.isfinite(value) or value <= 0:
                cells.append("-")
            else:
                ratio = value / best if higher else best / value
                cells.append("best" if math.isclose(ratio, 1.0) else f"{ratio:.2f}x")
        ratio_rows.append(cells)
    parts.append("\nRatio to the best peer (1 = best; below 1 = behind, for latency and RSS too)")
    parts.append(_grid(header, ratio_rows))

    floors = {o.system: o for o in outcomes if is_floor(o)}
    floor_header = ["system", *(label for key, label, _ in COLUMNS if key in FLOOR_REFERENCE)]
    floor_rows = []
    for o in measured:
        cells = [o.system]
        for key, _, _ in COLUMNS:
            if key not in FLOOR_REFERENCE:
                continue
            system, metric = FLOOR_REFERENCE[key]
            reference = floors.get(system, Outcome(system)).metrics.get(metric)
            value = o.metrics.get(key)
            cells.append(f"{value / reference:.2f}" if value and reference else "-")
        floor_rows.append(cells)
    parts.append(f"\nFraction of the plain-SQL floor ({FLOOR_SENTENCE})")
    parts.append(_grid(floor_header, floor_rows))

    parts.append("\nConfiguration and notes")
    for o in outcomes:
        parts.append(f"- {o.system}: {o.config}" + ("" if o.status == "ok" else f" [{o.status}]"))
        for key, note in o.notes.items():
            parts.append(f"    {key}: {note}")
    return "\n".join(parts)


def render_markdown(outcomes: Sequence[Outcome], machine: dict[str, Any], quick: bool) -> str:
    """The figures as a Markdown table, with the machine and each system's configuration."""
    lines = [
        f"# pgflow and its peers ({'quick' if quick else 'full'} run, {machine['date']})",
        "",
        f"Machine: {machine['usable_cpus']} usable CPUs ({machine['cpu_model']}), "
        f"{machine['platform']}; {machine['python']}; {machine['postgresql']}. "
        "Reproduce with `pip install -e '.[bench]'` and `python -m benchmarks --peers` "
        "(Celery needs Redis on 127.0.0.1:6379).",
        "",
        "Inserts: no-op jobs through each system's client, one per call and in its bulk API. "
        "Drains: pre-inserted no-op jobs, timed from the first to the last job the task "
        f"body reported done, by 1 or 2 worker processes (1p, 2p) of {CONCURRENCY} slots "
        f"each (x{CONCURRENCY}) and of {WIDE_CONCURRENCY} slots each (x{WIDE_CONCURRENCY}). "
        "Start latency: sequential jobs on an idle, running worker, "
        "the task's start minus the insert call's start. Workflows: 3 no-op steps, each "
        "recorded. RSS: peak resident set of one worker process (with its pool children) "
        f"in the x{CONCURRENCY} drain by 1 process.",
        "",
        "The floor rows are plain SQL on one psycopg connection (FOR UPDATE SKIP LOCKED), "
        "each filled in where it is the like-for-like reference of the systems' column: "
        f"{FLOOR_SENTENCE}.",
        "",
        "| system | " + " | ".join(label for _, label, _ in COLUMNS) + " |",
        "|---|" + "---:|" * len(COLUMNS),
    ]
    for o in outcomes:
        cells = [_cell(o, key) for key, _, _ in COLUMNS]
        if o.status != "ok":
            cells = [o.status, *["-"] * (len(COLUMNS) - 1)]
        lines.append(f"| {o.system} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Configuration (every worker process gets the same concurrency: {CONCURRENCY} slots, "
        f"{WIDE_CONCURRENCY} in the x{WIDE_CONCURRENCY} drains) and notes:",
        "",
    ]
    for o in outcomes:
        lines.append(f"- **{o.system}**: {o.config or '-'}")
        lines += [f"  - {key}: {note}" for key, note in o.notes.items()]
    return "\n".join(lines) + "\n"


def write_json(
    path: Path, machine: dict[str, Any], settings: dict[str, Any], outcomes: Sequence[Outcome]
) -> None:
    document = {
        "machine": machine,
        "settings": settings,
        "systems": [o.to_json() for o in outcomes],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, allow_nan=False, default=_finite) + "\n")


def _finite(value: object) -> object:
    return None
