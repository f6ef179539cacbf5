"""Smoke tests of `python -m benchmarks --peers`: the floor and pgflow rows are measured
with tiny counts, and a system that is not installed keeps its row with the reason.
Timings are never asserted, only that every figure was taken and is positive."""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from benchmarks.peers import (
    chart,
    graph_procs,
    graph_runner,
    graph_spec,
    measure,
    pgflow_ts_peer,
    procs,
    report,
    runner,
    spec,
)
from benchmarks.peers import pgflow_ts_install as ts_install
from benchmarks.peers.celery_peer import CeleryPeer

TINY = measure.Sizes(
    insert_one=20,
    insert_bulk=200,
    bulk_batch=100,
    drain=200,
    latency=5,
    latency_warmup=2,
    flows_inprocess=10,
    flows_distributed=20,
    drain_budget=20.0,
)
PGFLOW_METRICS = (
    "insert_one",
    "insert_bulk",
    "drain_1",
    "drain_2",
    "drain_wide_1",
    "drain_wide_2",
    "latency_p50_ms",
    "latency_p95_ms",
    "latency_p99_ms",
    "flow_inprocess",
    "flow_distributed",
    "rss_mb",
)


class MissingPeer(spec.Peer):
    """A peer whose package cannot be imported."""

    name = "missing"
    module = "missing_peer"

    def check(self) -> None:
        spec.require_modules("pgflow_no_such_queue_package")


@pytest.mark.postgres
@pytest.mark.slow
@pytest.mark.timeout(240)
def test_floor_and_pgflow_rows_are_measured_and_a_missing_peer_is_reported(
    postgres_server: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    instantiate = runner._instantiate

    def fake_instantiate(module: str, cls: str) -> spec.Peer:
        return MissingPeer() if module == "missing_peer" else instantiate(module, cls)

    monkeypatch.setattr(runner, "_instantiate", fake_instantiate)
    outcomes = runner.run(
        quick=True,
        admin_url=postgres_server,
        systems=[("pgflow_peer", "PgflowPeer"), ("missing_peer", "MissingPeer")],
        sizes=TINY,
        show_progress=False,
    )
    by_name = {o.system: o for o in outcomes}
    assert by_name[report.FLOOR_ONE].metrics["insert_one"] > 0
    assert by_name[report.FLOOR_TEN].metrics["drain_1"] > 0
    floor_batch = by_name[report.FLOOR_BATCH]
    for key in ("insert_bulk", "drain_wide_1"):
        assert floor_batch.metrics[key] > 0

    pgflow = by_name["pgflow"]
    assert pgflow.status == "ok"
    assert not pgflow.notes, pgflow.notes
    for key in PGFLOW_METRICS:
        assert math.isfinite(pgflow.metrics[key]) and pgflow.metrics[key] > 0, key

    missing = by_name["Missing"]
    assert missing.status.startswith("not installed")
    assert "pgflow_no_such_queue_package" in missing.status

    table = report.render(outcomes)
    assert "pgflow" in table and report.FLOOR_BATCH in table
    assert "not installed" in table

    document = tmp_path / "peers.json"
    report.write_json(document, {"machine": "test"}, {"quick": True}, outcomes)
    systems = {s["system"]: s for s in json.loads(document.read_text())["systems"]}
    assert systems["Missing"]["status"].startswith("not installed")


def test_the_chart_is_a_png_and_names_the_systems_not_measured(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="the chart needs the bench extra")
    measured = spec.Outcome("fast", metrics={"drain_1": 10.0, "latency_p50_ms": 2.0})
    absent = spec.Outcome("gone", status="not installed (gone)")
    path = chart.write_chart(tmp_path / "peers.png", [measured, absent], "smoke")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


FLOOR_FIGURES = {
    "insert_one": 1000.0,
    "insert_bulk": 50000.0,
    "drain_one": 900.0,
    "drain_batched": 20000.0,
    "drain_batched_10": 8000.0,
    "lifecycle_one": 300.0,
    "lifecycle_batched": 10000.0,
}


def test_ratios_compare_with_the_best_peer_and_the_floor() -> None:
    floor = report.floor_outcomes(FLOOR_FIGURES)
    fast = spec.Outcome(
        "fast", metrics={"drain_1": 4000.0, "drain_wide_1": 10000.0, "latency_p50_ms": 2.0}
    )
    slow = spec.Outcome(
        "slow", metrics={"drain_1": 2000.0, "drain_wide_1": 5000.0, "latency_p50_ms": 4.0}
    )
    table = report.render([*floor, fast, slow])
    ratio_block = table.split("Ratio to the best peer")[1].split("Fraction of")[0]
    slow_line = next(line for line in ratio_block.splitlines() if line.startswith("slow"))
    assert "0.50x" in slow_line
    floor_block = table.split("Fraction of the plain-SQL floor")[1].split("Configuration")[0]
    header = next(line for line in floor_block.splitlines() if line.startswith("system"))
    fast_line = next(line for line in floor_block.splitlines() if line.startswith("fast"))
    columns = [part.strip() for part in header.split("  ") if part.strip()][1:]
    cells = dict(zip(columns, fast_line.split()[1:], strict=True))
    assert cells["drain 1p x10 /s"] == "0.50"  # 4,000 of the 10-per-statement floor's 8,000
    assert cells["drain 1p x100 /s"] == "0.50"  # 10,000 of the 100-per-statement 20,000
    assert "x10 drains vs claim+complete 10 jobs/stmt" in floor_block


def test_each_floor_row_fills_the_columns_it_is_the_reference_of() -> None:
    floors = {o.system: o for o in report.floor_outcomes(FLOOR_FIGURES)}
    assert list(floors) == [report.FLOOR_ONE, report.FLOOR_TEN, report.FLOOR_BATCH]
    for column, (system, metric) in report.FLOOR_REFERENCE.items():
        assert metric == column, column
        assert column in floors[system].metrics, (column, system)
    assert floors[report.FLOOR_TEN].metrics == {"drain_1": 8000.0, "drain_2": 8000.0}
    assert floors[report.FLOOR_BATCH].metrics["drain_wide_2"] == 20000.0
    assert "drain_1" not in floors[report.FLOOR_ONE].metrics  # 1 job/stmt is only a note
    assert "900" in floors[report.FLOOR_ONE].notes["drain"]


def test_the_markdown_names_the_wide_drains_and_what_the_floor_rows_are() -> None:
    machine = {
        "date": "today",
        "usable_cpus": 2,
        "cpu_model": "cpu",
        "platform": "linux",
        "python": "CPython",
        "postgresql": "PostgreSQL",
    }
    celery = spec.Outcome("Celery", metrics={"drain_1": 1000.0})
    celery.notes["drain_wide_1"] = CeleryPeer.wide_drain_skip
    text = report.render_markdown([*report.floor_outcomes(FLOOR_FIGURES), celery], machine, True)
    assert "| drain 1p x100 /s | drain 2p x100 /s |" in text
    assert f"| {report.FLOOR_TEN} | - | - | 8,000 | 8,000 | - | - |" in text
    assert "x100 drains vs 100 jobs/stmt" in text
    assert "drain_wide_1: not measured: the prefork pool" in text


class FakeSink:
    """Every job reported done, one second apart from the first to the last."""

    def __init__(self, total: int) -> None:
        self.done = total
        self.first_done_ns = 0
        self.last_done_ns = 1_000_000_000


class FakeWorkers:
    def check_alive(self) -> None:
        pass

    def peak_rss_mb(self) -> float:
        return 50.0


class RecordingPeer(spec.Peer):
    """Records the drains' inserts; has no other feature."""

    name = "recording"
    module = "recording_peer"

    def __init__(self, skip: str = "") -> None:
        self.wide_drain_skip = skip
        self.inserted: list[tuple[str, int]] = []

    def insert_one(self, i: int) -> None:
        raise spec.Unsupported("no inserts")

    def insert_bulk(self, start: int, count: int) -> None:
        raise spec.Unsupported("no inserts")

    def insert_noops(self, queue: str, count: int) -> None:
        self.inserted.append((queue, count))

    def counts_by_sink(self) -> bool:
        return True


def _drains_only(
    monkeypatch: pytest.MonkeyPatch, peer: RecordingPeer
) -> tuple[spec.Outcome, list[tuple[str, int, int]], list[float]]:
    """Run only the drain steps of `peer`, with fake workers; return the calls they made."""
    started: list[tuple[str, int, int]] = []
    budgets: list[float] = []

    @contextlib.contextmanager
    def fake_workers(
        module: str, url: str, queue: str, count: int, sink: Any, concurrency: int = 0
    ) -> Iterator[FakeWorkers]:
        started.append((queue, count, concurrency))
        yield FakeWorkers()

    real_await = measure._await_done

    def recording_await(*args: Any, **kwargs: Any) -> tuple[float, int]:
        budgets.append(kwargs["budget"])
        return real_await(*args, **kwargs)

    monkeypatch.setattr(procs, "workers", fake_workers)
    monkeypatch.setattr(measure, "_await_done", recording_await)
    monkeypatch.setattr(measure, "STEPS", tuple(s for s in measure.STEPS if "drain" in s[0]))
    sizes = measure.Sizes(1, 1, 1, 100, 1, 1, 1, 1, drain_budget=60.0)
    sink: Any = FakeSink(sizes.drain)
    outcome = measure.run_peer(peer, "postgresql:///unused", sink, sizes, lambda _: None)
    return outcome, started, budgets


def test_the_wide_drains_run_wide_workers_on_their_own_queues(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    peer = RecordingPeer()
    outcome, started, budgets = _drains_only(monkeypatch, peer)
    assert [key for key, _ in measure.STEPS][-2:] == ["drain_wide_1", "drain_wide_2"]
    assert started == [
        (spec.NOOP_QUEUES[1], 1, spec.CONCURRENCY),
        (spec.NOOP_QUEUES[2], 2, spec.CONCURRENCY),
        (spec.WIDE_QUEUES[1], 1, spec.WIDE_CONCURRENCY),
        (spec.WIDE_QUEUES[2], 2, spec.WIDE_CONCURRENCY),
    ]
    assert [queue for queue, _ in peer.inserted] == [queue for queue, _, _ in started]
    assert budgets == [60.0, 60.0, measure.WIDE_BUDGET, measure.WIDE_BUDGET]
    assert set(outcome.metrics) == {"drain_1", "drain_2", "drain_wide_1", "drain_wide_2", "rss_mb"}
    assert outcome.metrics["drain_wide_2"] == pytest.approx(99.0)  # 99 gaps in one second
    assert not outcome.notes


def test_a_peer_with_a_wide_drain_skip_reason_gets_it_as_the_note(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert "-c 100 would start 100 processes" in CeleryPeer.wide_drain_skip
    peer = RecordingPeer(skip=CeleryPeer.wide_drain_skip)
    outcome, started, _ = _drains_only(monkeypatch, peer)
    assert [concurrency for _, _, concurrency in started] == [spec.CONCURRENCY] * 2
    assert outcome.notes == {
        "drain_wide_1": CeleryPeer.wide_drain_skip,
        "drain_wide_2": CeleryPeer.wide_drain_skip,
    }
    assert {"drain_1", "drain_2", "rss_mb"} == set(outcome.metrics)


OBAN_METRICS = (
    "insert_one",
    "insert_bulk",
    "drain_1",
    "drain_2",
    "latency_p50_ms",
    "latency_p95_ms",
    "latency_p99_ms",
    "rss_mb",
)


@pytest.mark.postgres
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_oban_row_is_measured_or_names_why_not(postgres_server: str) -> None:
    """Oban runs in its own Python >= 3.12 venv; without one the row says what is missing."""
    outcomes = runner.run(
        quick=True,
        admin_url=postgres_server,
        systems=[("oban_peer", "ObanPeer")],
        sizes=TINY,
        show_progress=False,
    )
    oban = next(o for o in outcomes if o.system.startswith("Oban"))
    if oban.status.startswith("not installed"):
        assert oban.status.removeprefix("not installed").strip(" :"), oban.status
        return
    assert oban.status == "ok", oban.status
    for key in OBAN_METRICS:
        assert math.isfinite(oban.metrics[key]) and oban.metrics[key] > 0, key
    assert all(key.startswith("flow") for key in oban.notes), oban.notes


# --- graph workloads (pgflow for TypeScript, DBOS, pgflow graph flows) -------------------


def test_graph_workloads_are_consistent() -> None:
    """Dependencies name earlier steps, a map has exactly one, and task counts follow."""
    for workload in graph_spec.WORKLOADS.values():
        seen: set[str] = set()
        for step in workload.steps:
            assert set(step.depends_on) <= seen, (workload.key, step.slug)
            if step.is_map:
                assert len(step.depends_on) == 1, (workload.key, step.slug)
            seen.add(step.slug)
    counts = {key: w.tasks_per_run for key, w in graph_spec.WORKLOADS.items()}
    assert counts == {"chain": 3, "diamond": 4, "fanout": 2 + graph_spec.FANOUT_WIDTH}
    assert graph_spec.FANOUT.run_input == {"n": graph_spec.FANOUT_WIDTH}
    for measurement in graph_spec.MEASUREMENTS:
        assert measurement.workload in graph_spec.WORKLOADS
        assert graph_spec.QUICK.runs(measurement.workload) > 0
    columns = {key for key, _, _ in graph_runner.COLUMNS}
    assert {m.key for m in graph_spec.MEASUREMENTS if m.key != "latency"} <= columns


def test_node_worker_parses_and_handles_the_fanout_steps() -> None:
    import shutil
    import subprocess

    if shutil.which("node") is None:
        pytest.skip("node is not installed")
    done = subprocess.run(
        ["node", "--check", str(pgflow_ts_peer.WORKER)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    source = pgflow_ts_peer.WORKER.read_text()
    for step in graph_spec.FANOUT.steps:
        assert f"  {step.slug}: " in source, step.slug


def test_node_worker_arguments_follow_each_setting(tmp_path: Path) -> None:
    peer = pgflow_ts_peer.PgflowTsPeer()
    argv = peer.worker_command("postgresql://x/db", graph_spec.CHAIN, pgflow_ts_peer.TUNED)
    assert argv[:4] == ["node", str(pgflow_ts_peer.WORKER), "postgresql://x/db", "bench_chain"]
    assert argv[4:] == ["100", "100", "2", "2", "100", "10"]
    default = peer.worker_command("u", graph_spec.CHAIN, pgflow_ts_peer.DEFAULT)
    assert default[4:6] == ["10", "10"]


def test_pgmq_missing_makes_the_typescript_row_say_not_measured(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ts_install, "_extension_version", lambda admin_url: None)
    with pytest.raises(spec.NotInstalled, match=r"^not measured: pgmq is not installed"):
        ts_install.pgmq_source("postgresql://unused/postgres", None)
    monkeypatch.setattr(ts_install, "_extension_version", lambda admin_url: (1, 4, 4))
    with pytest.raises(spec.NotInstalled, match=r"extension is 1\.4\.4"):
        ts_install.pgmq_source("postgresql://unused/postgres", None)


@pytest.mark.postgres
def test_a_missing_pgmq_template_keeps_the_row_with_the_reason(
    postgres_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ts_install, "ensure_packages", lambda: Path("/nonexistent"))
    monkeypatch.setattr(pgflow_ts_peer, "template_option", "pgflow_no_such_template_db")
    outcomes = graph_runner.run(
        quick=True,
        admin_url=postgres_server,
        systems=[("pgflow_ts_peer", "PgflowTsPeer")],
        show_progress=False,
    )
    assert len(outcomes) == 1
    assert outcomes[0].system == "pgflow-TS"
    assert outcomes[0].status.startswith(ts_install.NOT_INSTALLED)
    assert "pgflow_no_such_template_db" in outcomes[0].status
    assert ts_install.NOT_INSTALLED in graph_runner.render_markdown(outcomes)


def test_graph_pgflow_row_says_when_the_engine_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    from benchmarks import graph_flows

    monkeypatch.setattr(graph_flows, "MISSING", "not measured: graph engine missing")
    outcomes = graph_runner.run(
        quick=True,
        admin_url="postgresql://unused/postgres",
        systems=[("pgflow_graph_peer", "PgflowGraphPeer")],
        show_progress=False,
    )
    assert [(o.system, o.status) for o in outcomes] == [
        ("pgflow", "not measured: graph engine missing")
    ]


def test_graph_worker_processes_report_ready_and_stop_on_sigterm() -> None:
    import sys

    serve = (
        "import signal, sys, threading; stop = threading.Event(); "
        "signal.signal(signal.SIGTERM, lambda *a: stop.set()); print('ready', flush=True); "
        "stop.wait(30); sys.exit(0 if stop.is_set() else 3)"
    )
    with graph_procs.running([sys.executable, "-c", serve], 2) as (processes, logs):
        graph_procs.check_alive(processes, logs)
    assert [p.returncode for p in processes] == [0, 0]


def test_a_graph_worker_that_dies_before_ready_is_reported_with_its_stderr() -> None:
    import sys

    crash = "import sys; print('cannot connect to the database', file=sys.stderr); sys.exit(4)"
    with (
        pytest.raises(graph_procs.WorkerFailed, match=r"code 4.*cannot connect"),
        graph_procs.running([sys.executable, "-c", crash], 1),
    ):
        pass
