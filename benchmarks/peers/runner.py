"""`python -m benchmarks --peers`: every system in a fresh database, one after the other.

The floor runs first, then pgflow and each peer; a peer that is not installed or fails
keeps its row with the reason. The table goes to stdout, the bar to stderr.
"""

from __future__ import annotations

import json
import sys
import traceback
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks import postgres
from benchmarks import report as bench_report
from benchmarks.peers import chart, floor, measure, report, spec
from benchmarks.peers.progress import Progress
from benchmarks.peers.sink import Sink

#: (module, class) of every system, pgflow first.
SYSTEMS: tuple[tuple[str, str], ...] = (
    ("pgflow_peer", "PgflowPeer"),
    ("procrastinate_peer", "ProcrastinatePeer"),
    ("pgqueuer_peer", "PgqueuerPeer"),
    ("oban_peer", "ObanPeer"),
    ("dbos_peer", "DbosPeer"),
    ("celery_peer", "CeleryPeer"),
)
#: What `--peers --only` may choose: the job-queue table and the graph table.
GROUPS = ("graph", "jobs")
RESULTS = Path(__file__).resolve().parent.parent / "results"
DEFAULT_CHART = RESULTS / "peers.png"


def _instantiate(module: str, cls: str) -> spec.Peer:
    peer: spec.Peer = getattr(spec.load(module), cls)()
    return peer


def _measure_floor(admin_url: str, sizes: measure.Sizes, progress: Progress) -> list[spec.Outcome]:
    progress.tick("floor: plain SQL lifecycle")
    try:
        with postgres.temporary_database(admin_url) as url:
            return report.floor_outcomes(floor.measure(url, sizes.drain))
    except Exception as exc:
        traceback.print_exc(file=sys.stderr)
        return [spec.Outcome(report.FLOOR_ONE, status=f"error: {type(exc).__name__}: {exc}")]


def _measure_system(
    module: str, cls: str, admin_url: str, sizes: measure.Sizes, sink: Sink, progress: Progress
) -> spec.Outcome:
    steps = len(measure.STEPS)
    try:
        peer = _instantiate(module, cls)
        peer.check()
    except spec.NotInstalled as exc:
        progress.skip(steps)
        return spec.Outcome(cls.removesuffix("Peer"), status=str(exc))
    except Exception as exc:
        progress.skip(steps)
        return spec.Outcome(cls.removesuffix("Peer"), status=f"error: {type(exc).__name__}: {exc}")
    try:
        with postgres.temporary_database(admin_url) as url:
            peer.setup(url)
            try:
                return measure.run_peer(peer, url, sink, sizes, progress.tick)
            finally:
                peer.close()
    except Exception as exc:
        traceback.print_exc(file=sys.stderr)
        return spec.Outcome(peer.name, peer.config, status=f"error: {type(exc).__name__}: {exc}")


def run(
    *,
    quick: bool,
    admin_url: str = postgres.DEFAULT_ADMIN_URL,
    systems: Sequence[tuple[str, str]] = SYSTEMS,
    sizes: measure.Sizes | None = None,
    show_progress: bool = True,
) -> list[spec.Outcome]:
    """Measure the floor and `systems`; return one or two outcomes per entry, in order."""
    chosen = sizes or (measure.QUICK if quick else measure.FULL)
    progress = Progress(1 + len(systems) * len(measure.STEPS), enabled=show_progress)
    sink = Sink()
    try:
        outcomes = _measure_floor(admin_url, chosen, progress)
        for module, cls in systems:
            outcomes.append(_measure_system(module, cls, admin_url, chosen, sink, progress))
    finally:
        sink.close()
        progress.close()
    return outcomes


def main(
    *,
    quick: bool,
    json_path: Path | None,
    admin_url: str = postgres.DEFAULT_ADMIN_URL,
    chart_path: Path | None = None,
    groups: Sequence[str] = GROUPS,
) -> int:
    """Run, print the tables, write the chart (and JSON when asked); 1 if anything failed."""
    machine = bench_report.machine_info(postgres.server_version(admin_url))
    print(bench_report.render_header(machine, quick), flush=True)
    graph_failed = False
    if "graph" in groups:
        graph_failed = _graph(quick, admin_url, json_path)
    if "jobs" not in groups:
        return 1 if graph_failed else 0
    outcomes = run(quick=quick, admin_url=admin_url)
    print()
    print(report.render(outcomes))
    target = chart_path or (RESULTS / ("peers-quick.png" if quick else "peers.png"))
    title = (
        f"pgflow and peers, {machine['date']}, {machine['usable_cpus']} CPUs "
        f"({machine['cpu_model']}), {machine['postgresql']}, {machine['python']}"
        + (" [quick]" if quick else "")
    )
    print(f"\nchart written to {chart.write_chart(target, outcomes, title)}")
    table = target.with_suffix(".md")
    table.write_text(report.render_markdown(outcomes, machine, quick))
    print(f"Markdown table written to {table}")
    if json_path is not None:
        sizes = measure.QUICK if quick else measure.FULL
        settings: dict[str, Any] = {
            "quick": quick,
            "concurrency_per_process": spec.CONCURRENCY,
            "wide_concurrency_per_process": spec.WIDE_CONCURRENCY,
            "wide_drain_budget_s": min(sizes.drain_budget, measure.WIDE_BUDGET),
            "sizes": vars(sizes),
            "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        report.write_json(json_path, machine, settings, outcomes)
        print(f"figures written to {json_path}")
    return 1 if graph_failed or _failed(outcomes) else 0


def _failed(outcomes: Sequence[spec.Outcome]) -> bool:
    return any(
        o.status.startswith("error") or any(n.startswith("error") for n in o.notes.values())
        for o in outcomes
    )


def _graph(quick: bool, admin_url: str, json_path: Path | None) -> bool:
    """The graph table (pgflow, pgflow for TypeScript, DBOS); True if anything failed."""
    from benchmarks.peers import graph_runner

    outcomes = graph_runner.run(quick=quick, admin_url=admin_url)
    table = graph_runner.render_markdown(outcomes)
    print("\nGraph workloads\n")
    print(table)
    target = RESULTS / ("peers-graph-quick.md" if quick else "peers-graph.md")
    target.write_text(table)
    print(f"graph table written to {target}")
    if json_path is not None:
        graph_json = json_path.with_name(json_path.stem + "-graph.json")
        graph_json.write_text(json.dumps([o.to_json() for o in outcomes], indent=2) + "\n")
        print(f"graph figures written to {graph_json}")
    return _failed(outcomes)
