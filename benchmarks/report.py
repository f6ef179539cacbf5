"""Presenting results: the machine header, the text table and the JSON document."""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.harness import (
    INSERT_CALL,
    MEDIAN,
    OVERHEAD_PER_STEP,
    P95,
    P99,
    RATE,
    SECONDS,
    Row,
)

COLUMNS = ("benchmark", "case", "n", "median", "p95", "p99", "throughput", "detail", "target")


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo where there is one (Linux), else platform's."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info(postgres_version: str) -> dict[str, Any]:
    """What the figures depend on, printed above the table and stored in the JSON."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(),
        "usable_cpus": usable,
        "cpu_model": cpu_model(),
        "platform": platform.platform(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "postgresql": postgres_version,
    }


def format_duration(ns: float) -> str:
    """A latency in the largest unit that keeps it above 1."""
    if ns < 1_000:
        return f"{ns:.0f} ns"
    if ns < 1_000_000:
        return f"{ns / 1_000:.1f} µs"
    if ns < 1_000_000_000:
        return f"{ns / 1_000_000:.2f} ms"
    return f"{ns / 1_000_000_000:.2f} s"


def _detail(row: Row) -> str:
    """The detail column: the row's own text, else what its extra metric says."""
    metrics = row.metrics
    if row.detail:
        return row.detail
    if OVERHEAD_PER_STEP in metrics:
        return f"{format_duration(metrics[OVERHEAD_PER_STEP])}/step overhead"
    if SECONDS in metrics:
        return f"in {metrics[SECONDS]:.2f} s"
    if INSERT_CALL in metrics:
        return f"insert call {format_duration(metrics[INSERT_CALL])}"
    return ""


def _cells(row: Row) -> list[str]:
    metrics = row.metrics
    latency = [
        format_duration(metrics[key]) if key in metrics else "" for key in (MEDIAN, P95, P99)
    ]
    throughput = f"{metrics[RATE]:,.0f} {row.rate_unit}".strip() if RATE in metrics else ""
    detail = _detail(row)
    target = "; ".join(t.label for t in row.targets)
    count = f"{metrics['n']:,.0f}" if "n" in metrics else ""
    return [row.benchmark, row.case, count, *latency, throughput, detail, target]


def render_table(rows: Sequence[Row]) -> str:
    """A plain-text table; the last column is PASS / MISS / skipped: reason / error: reason."""
    header = [*COLUMNS, "result"]
    body = [[*_cells(row), row.verdict()] for row in rows]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    numeric = {2, 3, 4, 5, 6}

    def fmt(line: list[str]) -> str:
        cells = [
            cell.rjust(width) if i in numeric else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(line, widths, strict=True))
        ]
        return "  ".join(cells).rstrip()

    rule = "  ".join("-" * width for width in widths)
    return "\n".join([fmt(header), rule, *(fmt(line) for line in body)])


def render_header(machine: dict[str, Any], quick: bool) -> str:
    usable = machine["usable_cpus"]
    cpus = f"{machine['cpu_count']} CPUs" + (f" ({usable} usable)" if usable else "")
    return "\n".join(
        [
            f"pgflow benchmarks ({'quick' if quick else 'full'} run) {machine['date']}",
            f"machine: {cpus}, {machine['cpu_model']}, {machine['platform']}",
            f"python: {machine['python']}; postgresql: {machine['postgresql']}",
        ]
    )


def write_json(
    path: Path, machine: dict[str, Any], settings: dict[str, Any], rows: Sequence[Row]
) -> None:
    """The header, the run's settings (quick, concurrency, ...) and every row, as JSON."""
    document = {"machine": machine, **settings, "results": [row.to_json() for row in rows]}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, allow_nan=False) + "\n")
