"""Command line: choose benchmarks, run them, print the table, optionally write JSON."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

from benchmarks import catalog, postgres, report
from benchmarks.harness import Benchmark, Row, RunContext, Skip


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Measure pgflow against the targets of its issues and print a table.",
    )
    parser.add_argument(
        "--quick", action="store_true", help="short run with small counts (well under a minute)"
    )
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="NAME",
        help="run only this benchmark or suite (repeatable, or a comma list); see --list",
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the figures as JSON")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    parser.add_argument(
        "--peers",
        action="store_true",
        help="compare pgflow with procrastinate, pgqueuer, Oban, DBOS, Celery and the plain-SQL "
        "floor (pip install -e '.[bench]'); writes a chart under benchmarks/results/",
    )
    parser.add_argument(
        "--pgmq-template",
        metavar="NAME",
        help="with --peers: template database holding pgmq >= 1.5, from which pgflow for "
        "TypeScript's database is made (default $PGFLOW_PGMQ_TEMPLATE; see benchmarks/README.md)",
    )
    parser.add_argument(
        "--postgres-admin-url",
        default=postgres.DEFAULT_ADMIN_URL,
        metavar="URL",
        help="server where throw-away databases are created and dropped "
        f"(default {postgres.DEFAULT_ADMIN_URL})",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=100,
        metavar="N",
        help="queue limit of each worker process in the distributed suite (default 100)",
    )
    args = parser.parse_args(argv)
    if args.concurrency < 1:
        parser.error("--concurrency must be at least 1")
    return args


def run_one(benchmark: Benchmark, ctx: RunContext) -> list[Row]:
    """Run one benchmark; a Skip or an unexpected error becomes a row, never a missing line."""
    try:
        return benchmark.run(ctx)
    except Skip as skip:
        return [Row(benchmark.name, "-", skipped=str(skip))]
    except Exception as exc:
        traceback.print_exc(file=sys.stderr)
        return [Row(benchmark.name, "-", error=f"{type(exc).__name__}: {exc}")]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.peers:
        from benchmarks.peers import pgflow_ts_peer, runner

        pgflow_ts_peer.template_option = args.pgmq_template
        groups = {item.strip() for entry in args.only for item in entry.split(",") if item.strip()}
        unknown = groups - set(runner.GROUPS)
        if unknown:
            print(
                f"python -m benchmarks --peers: unknown group(s) {', '.join(sorted(unknown))}; "
                f"choose from {', '.join(runner.GROUPS)}",
                file=sys.stderr,
            )
            return 2
        return runner.main(
            quick=args.quick,
            json_path=args.json,
            admin_url=args.postgres_admin_url,
            groups=tuple(sorted(groups)) or runner.GROUPS,
        )
    if args.list:
        for b in catalog.BENCHMARKS:
            print(f"{b.name:<22} suite {b.suite:<12} {b.description}")
        return 0
    try:
        selected = catalog.select(args.only) if args.only else list(catalog.BENCHMARKS)
    except ValueError as exc:
        print(f"python -m benchmarks: {exc}", file=sys.stderr)
        return 2

    machine = report.machine_info(postgres.server_version(args.postgres_admin_url))
    print(report.render_header(machine, args.quick), flush=True)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="pgflow-bench-") as workdir:
        ctx = RunContext(args.quick, Path(workdir), args.postgres_admin_url, args.concurrency)
        for benchmark in selected:
            print(f"running {benchmark.name} ...", file=sys.stderr, flush=True)
            started = time.monotonic()
            rows += run_one(benchmark, ctx)
            print(
                f"  {benchmark.name} done in {time.monotonic() - started:.1f} s",
                file=sys.stderr,
                flush=True,
            )
    print()
    print(report.render_table(rows))
    if args.json:
        settings = {"quick": args.quick, "worker_concurrency": args.concurrency}
        report.write_json(args.json, machine, settings, rows)
        print(f"\nfigures written to {args.json}")
    return 1 if any(row.error for row in rows) else 0
