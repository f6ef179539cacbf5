"""The graph table of `--peers`: each flow system and setting in a fresh database, in turn.

A system that cannot run here (not installed, no pgmq, engine missing) keeps its row with the
reason; a measurement it cannot express says so in its cell's note.
"""

from __future__ import annotations

import math
import sys
import traceback
from collections.abc import Sequence

from benchmarks import postgres
from benchmarks.peers import graph_measure, spec
from benchmarks.peers.graph_spec import (
    FANOUT_WIDTH,
    FULL,
    MEASUREMENTS,
    QUICK,
    GraphPeer,
    NotInstalled,
    Outcome,
    Sizes,
)
from benchmarks.peers.progress import Progress

#: (module, class) of every flow system, pgflow first.
SYSTEMS: tuple[tuple[str, str], ...] = (
    ("pgflow_graph_peer", "PgflowGraphPeer"),
    ("pgflow_ts_peer", "PgflowTsPeer"),
    ("dbos_graph_peer", "DbosGraphPeer"),
)
#: (metric, header, higher is better)
COLUMNS: tuple[tuple[str, str, bool], ...] = (
    ("chain_1", "chain 1p runs/s", True),
    ("chain_2", "chain 2p runs/s", True),
    ("diamond_2", "diamond 2p runs/s", True),
    ("fanout_2", "fan-out 2p runs/s", True),
    ("fanout_2_map_tasks", f"fan-out map tasks/s (x{FANOUT_WIDTH})", True),
    ("latency_p50_ms", "chain start-to-result p50 ms", False),
    ("latency_p99_ms", "p99 ms", False),
)


def _measure_system(
    module: str, cls: str, admin_url: str, sizes: Sizes, progress: Progress
) -> list[Outcome]:
    steps = len(MEASUREMENTS)
    peer: GraphPeer = getattr(spec.load(module), cls)()
    try:
        peer.check()
        context = peer.database(admin_url)
    except NotInstalled as exc:
        progress.skip(steps * 2)
        return [Outcome(peer.name, status=str(exc))]
    except Exception as exc:
        traceback.print_exc(file=sys.stderr)
        progress.skip(steps * 2)
        return [Outcome(peer.name, status=f"error: {type(exc).__name__}: {exc}")]
    outcomes: list[Outcome] = []
    try:
        with context as url:
            peer.setup(url)
            try:
                for setting in peer.settings:
                    outcome = graph_measure.run_setting(peer, url, setting, sizes, progress.tick)
                    note = getattr(peer, "note", "")
                    if note:
                        outcome.notes["setup"] = note
                    outcomes.append(outcome)
            finally:
                peer.close()
    except Exception as exc:
        traceback.print_exc(file=sys.stderr)
        outcomes.append(Outcome(peer.name, status=f"error: {type(exc).__name__}: {exc}"))
    progress.skip(steps * (2 - len(peer.settings)))
    return outcomes


def run(
    *,
    quick: bool,
    admin_url: str = postgres.DEFAULT_ADMIN_URL,
    systems: Sequence[tuple[str, str]] = SYSTEMS,
    sizes: Sizes | None = None,
    show_progress: bool = True,
) -> list[Outcome]:
    """Measure every flow system; one outcome per setting (or one with the reason)."""
    chosen = sizes or (QUICK if quick else FULL)
    progress = Progress(len(systems) * len(MEASUREMENTS) * 2, enabled=show_progress)
    outcomes: list[Outcome] = []
    try:
        for module, cls in systems:
            outcomes += _measure_system(module, cls, admin_url, chosen, progress)
    finally:
        progress.close()
    return outcomes


def _cell(outcome: Outcome, key: str) -> str:
    value = outcome.metrics.get(key)
    if value is None or not math.isfinite(value):
        return "-"
    if key.endswith("_ms"):
        return f"{value:,.1f}" if value < 100 else f"{value:,.0f}"
    return f"{value:,.0f}"


def render_markdown(outcomes: Sequence[Outcome]) -> str:
    """The graph table in Markdown, then each row's configuration and notes."""
    header = ["system"] + [label for _, label, _ in COLUMNS]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for outcome in outcomes:
        if outcome.status != "ok":
            cells = [outcome.system, outcome.status] + [""] * (len(COLUMNS) - 1)
        else:
            cells = [outcome.system] + [_cell(outcome, key) for key, _, _ in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for outcome in outcomes:
        if outcome.config:
            lines.append(f"- **{outcome.system}**: {outcome.config}")
        for key, note in outcome.notes.items():
            lines.append(f"  - {key}: {note}")
    return "\n".join(lines) + "\n"
