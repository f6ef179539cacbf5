"""The benchmark runner works end to end (never asserts a timing) and its pieces are right."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import catalog
from benchmarks.harness import MEDIAN, P99, RATE, Row, Target, latency_metrics
from benchmarks.report import format_duration, render_table

ROOT = Path(__file__).resolve().parent.parent


def run_benchmarks(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "benchmarks", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )


def test_quick_run_prints_the_table_and_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "figures.json"
    result = run_benchmarks("--quick", "--only", "inprocess,primitives-memory", "--json", str(out))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("pgflow benchmarks (quick run)")
    assert any(line.startswith("python: CPython") for line in lines)
    header = next(line for line in lines if line.startswith("benchmark "))
    for column in ("median", "p99", "throughput", "target", "result"):
        assert column in header
    assert any(line.startswith("inprocess ") for line in lines)
    assert any(line.startswith("primitives-memory ") for line in lines)
    assert not any(line.startswith("durable-") for line in lines)  # --only was honoured

    document = json.loads(out.read_text())
    assert document["quick"] is True
    assert document["machine"]["cpu_count"] >= 1
    names = {row["benchmark"] for row in document["results"]}
    assert names == {"inprocess", "primitives-memory"}
    for row in document["results"]:
        assert row["error"] is None, row
        if row["skipped"] is None:
            assert row["metrics"]["n"] > 0
            assert row["metrics"][RATE] > 0


def test_list_names_every_benchmark() -> None:
    result = run_benchmarks("--list")
    assert result.returncode == 0
    for benchmark in catalog.BENCHMARKS:
        assert benchmark.name in result.stdout


def test_unknown_benchmark_is_refused_by_name() -> None:
    result = run_benchmarks("--only", "inprocess,nope")
    assert result.returncode == 2
    assert "nope" in result.stderr


def test_selection_accepts_suites_and_keeps_catalog_order() -> None:
    names = [b.name for b in catalog.select(["latency-sqlite", "durable"])]
    assert names == ["durable-sqlite", "durable-postgres", "latency-sqlite"]


def test_latency_metrics() -> None:
    metrics = latency_metrics(list(range(1, 101)))
    assert metrics["n"] == 100
    assert metrics[MEDIAN] == 50.5
    assert metrics[P99] == pytest.approx(99.01)  # inclusive quantiles: 99 + 0.01 * (100 - 99)
    assert latency_metrics([]) == {"n": 0.0}


@pytest.mark.parametrize(
    ("op", "value", "figure", "expected"),
    [("<", 10.0, 9.0, "PASS"), ("<", 10.0, 10.0, "MISS"), (">=", 5.0, 5.0, "PASS")],
)
def test_targets_give_pass_or_miss(op: str, value: float, figure: float, expected: str) -> None:
    target = Target(MEDIAN, op, value, "label")  # type: ignore[arg-type]
    assert Row("b", "c", {MEDIAN: figure}, targets=(target,)).verdict() == expected


def test_skipped_and_unmeasured_rows_say_so() -> None:
    skipped = Row("drain-postgres", "-", skipped="PostgreSQL unreachable")
    plain = Row("inprocess", "baseline", {MEDIAN: 1500.0})
    table = render_table([skipped, plain])
    assert "skipped: PostgreSQL unreachable" in table
    assert plain.verdict() == "-"
    assert "1.5 µs" in table


def test_durations_pick_a_readable_unit() -> None:
    assert format_duration(999) == "999 ns"
    assert format_duration(12_300) == "12.3 µs"
    assert format_duration(2_500_000) == "2.50 ms"
    assert format_duration(3_000_000_000) == "3.00 s"


@pytest.mark.postgres
def test_postgres_benchmark_runs_on_a_throwaway_database(
    postgres_server: str, tmp_path: Path
) -> None:
    out = tmp_path / "figures.json"
    result = run_benchmarks(
        "--quick",
        "--only",
        "primitives-postgres",
        "--postgres-admin-url",
        postgres_server,
        "--json",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    rows = json.loads(out.read_text())["results"]
    assert [row["case"] for row in rows] == [
        "insert 1 job per call",
        "insert batches of 1,000",
        "claim+complete batches of 100",
    ]
    for row in rows:
        assert row["skipped"] is None and row["error"] is None, row
        met = [target["met"] for target in row["targets"] if target["met"] is not None]
        expected = "-" if not met else "PASS" if all(met) else "MISS"
        assert row["verdict"] == expected, row  # the verdict follows the row's own figures


def test_unreachable_postgres_is_a_skipped_row_not_a_crash(tmp_path: Path) -> None:
    out = tmp_path / "figures.json"
    result = run_benchmarks(
        "--quick",
        "--only",
        "durable-postgres",
        "--postgres-admin-url",
        "postgresql://postgres@127.0.0.1:1/postgres",
        "--json",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    assert "skipped: PostgreSQL unreachable at 127.0.0.1:1" in result.stdout
    [row] = json.loads(out.read_text())["results"]
    assert row["skipped"].startswith("PostgreSQL unreachable")


def test_graph_suite_is_selectable_and_skips_without_the_graph_engine(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from benchmarks import catalog, cli, graph_flows
    from benchmarks.harness import RunContext

    selected = catalog.select(["graph"])
    assert [b.name for b in selected] == ["graph-inprocess", "graph-postgres"]
    monkeypatch.setattr(graph_flows, "MISSING", "not measured: graph engine missing")
    ctx = RunContext(True, tmp_path, "postgresql://unused/postgres")
    for benchmark in selected:
        rows = cli.run_one(benchmark, ctx)
        assert [row.skipped for row in rows] == ["not measured: graph engine missing"]


def test_graph_postgres_rows_carry_rates_latency_and_the_issue_targets() -> None:
    from benchmarks import graph

    metrics = {
        "chain_1": 1_000.0,
        "chain_2": 3_500.0,
        "diamond_2": 900.0,
        "fanout_2": 100.0,
        "fanout_2_map_tasks": 10_000.0,
        "latency_p50_ms": 2.0,
        "latency_p99_ms": 5.0,
    }
    rows = graph._rows("pgflow (x100)", metrics)
    by_case = {row.case.split(": ", 1)[1]: row for row in rows}
    assert by_case["3-step chain, 2 worker processes"].verdict() == "PASS"
    assert by_case["fan-out map tasks, 2 processes"].verdict() == "MISS"
    latency = by_case["chain start-to-result"]
    assert latency.metrics == {MEDIAN: 2e6, P99: 5e6}
    assert latency.verdict() == "PASS"
    assert "3,500 runs/s" in render_table(rows)


def test_steered_suite_is_selectable_and_skips_without_wait_steps(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from benchmarks import catalog, cli, steered_flows
    from benchmarks.harness import RunContext

    selected = catalog.select(["steered"])
    assert [b.name for b in selected] == ["steered-postgres"]
    monkeypatch.setattr(steered_flows, "MISSING", "not measured: wait_for steps missing")
    ctx = RunContext(True, tmp_path, "postgresql://unused/postgres")
    [row] = cli.run_one(selected[0], ctx)
    assert row.skipped == "not measured: wait_for steps missing"


def test_steered_results_file_lists_every_case(tmp_path: Path) -> None:
    from benchmarks import steered

    rows = [
        Row("steered-postgres", "signal-to-resume", {"n": 3.0, MEDIAN: 4e6}, detail="p50 4 ms"),
        Row("steered-postgres", "app.cancel_run", skipped="no PostgreSQL"),
    ]
    machine = {
        "date": "2026-12-01",
        "cpu_count": 2,
        "cpu_model": "cpu",
        "python": "CPython 3.11",
        "postgresql": "PostgreSQL 15",
    }
    path = tmp_path / "steered.md"
    steered.write_results(path, machine, rows)
    text = path.read_text()
    assert "| signal-to-resume | 3 | 4.00 ms |  |  | p50 4 ms |" in text
    assert "| app.cancel_run |  |  |  |  | skipped: no PostgreSQL |" in text


@pytest.mark.postgres
@pytest.mark.slow
def test_steered_postgres_runs_at_a_tiny_size(
    postgres_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole group end to end (worker processes, signals, cancels) at a tiny size; a quick
    run never writes benchmarks/results/steered.md."""
    from benchmarks import cli, steered
    from benchmarks.harness import RunContext

    monkeypatch.setattr(steered, "QUICK", steered.Sizes(5, 1, 2, 200))
    monkeypatch.setattr(steered, "RESULTS", tmp_path / "never.md")
    [benchmark] = [b for b in catalog.BENCHMARKS if b.name == "steered-postgres"]
    rows = cli.run_one(benchmark, RunContext(True, tmp_path, postgres_server))
    assert [row.error or row.skipped for row in rows] == [None, None, None], rows
    resume, call, cancel = rows
    assert resume.metrics["n"] == 5 and resume.metrics[MEDIAN] > 0
    assert call.metrics["n"] == 5
    assert cancel.metrics["n"] == 2
    assert 60 <= cancel.metrics["elements_done_median"] < 200
    # at least the run, its map step and the elements still waiting were written
    assert cancel.metrics["rows_written_median"] >= 3
    assert "wrote" in render_table(rows)
    assert not (tmp_path / "never.md").exists()


def test_telemetry_suite_measures_every_case_and_states_each_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A quick run (never writing benchmarks/results/telemetry.md) gives a figure for every
    case, and the extra of each case over its baseline."""
    pytest.importorskip("opentelemetry.sdk")
    pytest.importorskip("prometheus_client")
    from benchmarks import cli, telemetry
    from benchmarks.harness import RunContext

    monkeypatch.setattr(telemetry, "RESULTS", tmp_path / "never.md")
    [benchmark] = catalog.select(["telemetry"])
    rows = cli.run_one(benchmark, RunContext(True, tmp_path, "postgresql://unused/postgres"))
    assert [row.error or row.skipped for row in rows] == [None] * 9, rows
    extras = {row.case: row.metrics.get(telemetry.OVERHEAD) for row in rows}
    assert [case for case, extra in extras.items() if extra is None] == [
        "execute_job, unwrapped (before the hook)",
        "app.insert of 1 job (memory), telemetry off",
        "insert + drain (memory) per job, off",
    ]
    targeted = {row.case: [t.label for t in row.targets] for row in rows if row.targets}
    assert targeted == {
        "execute_job, telemetry off": ["< 200 ns/job more"],
        "execute_job, OpenTelemetry on": ["< 20 µs/job more"],
        "app.insert of 1 job (memory), OpenTelemetry on": ["< 20 µs/job more"],
    }
    drained = next(row for row in rows if row.case == "insert + drain (memory) per job, off")
    assert drained.metrics["n"] == 5 * 3 * telemetry.DRAIN_BATCH  # counted per job
    assert not (tmp_path / "never.md").exists()


def test_telemetry_results_file_lists_every_case(tmp_path: Path) -> None:
    from benchmarks import telemetry

    rows = [
        Row("telemetry-overhead", "execute_job, telemetry off", {"n": 3.0, MEDIAN: 2300.0}),
        Row(
            "telemetry-overhead",
            "execute_job, OpenTelemetry on",
            {"n": 3.0, MEDIAN: 20000.0, telemetry.OVERHEAD: 17700.0},
            targets=(Target(telemetry.OVERHEAD, "<", 20000.0, "< 20 µs/job more"),),
        ),
    ]
    machine = {"date": "2026-12-01", "cpu_count": 2, "cpu_model": "cpu", "python": "CPython 3.11"}
    path = tmp_path / "telemetry.md"
    telemetry.write_results(path, machine, rows)
    text = path.read_text(encoding="utf-8")
    assert "| execute_job, telemetry off | 3 | 2.3 µs |  |  | - |" in text
    assert "load average" in text
    assert "| execute_job, OpenTelemetry on | 3 | 20.0 µs |  | 17.7 µs | PASS |" in text


def test_flow_control_rows_compare_each_shape_with_the_plain_drain(tmp_path: Path) -> None:
    from datetime import datetime, timedelta

    from benchmarks import flow_control

    t0 = datetime(2026, 12, 1)
    # 1,000 at once, then 1,000 a second: 3,000 starts over 2 s sustain 1,000/s.
    starts = [t0 + timedelta(seconds=float(i // 1_000)) for i in range(3_000)]
    rate = flow_control.Drained(3.0, starts[0], starts[-1], starts)
    assert flow_control.sustained_rate(rate, 3_000) == pytest.approx(1_000.0)
    seconds = {"plain": [1.0, 2.0, 1.0], "global": [1.0, 1.0, 1.0]}
    seconds |= {"partitions": [2.0, 2.0, 2.0], "partition-limit": [1.4, 1.6, 1.5]}
    rows = flow_control._rows(seconds, 10_000, rate, 3_000, 100)
    assert [row.verdict() for row in rows] == ["-", "PASS", "MISS", "PASS", "PASS"]
    assert rows[2].metrics["vs_plain"] == pytest.approx(0.5)
    assert rows[2].detail == "0.50x plain; rounds: 5,000 / 5,000 / 5,000 jobs/s"
    assert rows[4].metrics["busiest_window"] == 1_000
    machine = {
        "date": "2026-12-01",
        "cpu_count": 2,
        "cpu_model": "cpu",
        "python": "CPython 3.11",
        "postgresql": "PostgreSQL 15",
    }
    path = tmp_path / "flow-control.md"
    flow_control.write_results(path, machine, rows, 3, "load average 0.5 before, 1.5 after")
    text = path.read_text()
    assert "median of 3 rounds; load average 0.5 before, 1.5 after" in text
    assert (
        "| drain 10,000 jobs, partition_by, 100 tenants, 2 proc x 100 slots | 5,000 jobs/s | "
        "0.50x plain; rounds: 5,000 / 5,000 / 5,000 jobs/s | >= plain/1.5 (6,667 jobs/s) | MISS |"
    ) in text


@pytest.mark.postgres
@pytest.mark.slow
def test_flow_control_benchmark_drains_every_shape_and_reports_ratios_to_the_plain_drain(
    postgres_server: str, tmp_path: Path
) -> None:
    """`--only flow-control` end to end at its quick size; a quick run never rewrites
    benchmarks/results/flow-control.md."""
    from benchmarks import flow_control

    before = flow_control.RESULTS.stat().st_mtime_ns if flow_control.RESULTS.exists() else None
    out = tmp_path / "figures.json"
    result = run_benchmarks(
        "--quick",
        "--only",
        "flow-control",
        "--postgres-admin-url",
        postgres_server,
        "--json",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    rows = json.loads(out.read_text())["results"]
    labels = [
        "plain queue,",
        "global_limit=1,000,",
        "100 tenants, 2 proc",
        "partition_limit=10,",
        "rate_limit=(1,000, 1) sustained",
    ]
    assert len(rows) == len(labels)
    for row, label in zip(rows, labels, strict=True):
        assert label in row["case"], (label, row["case"])
    for row in rows:
        assert row["skipped"] is None and row["error"] is None, row
        assert row["metrics"][RATE] > 0
    plain = rows[0]["metrics"][RATE]
    for row in rows[1:4]:
        assert row["metrics"]["vs_plain"] == pytest.approx(row["metrics"][RATE] / plain)
        [target] = row["targets"]
        assert target["value"] == pytest.approx(plain / 1.5)
        assert row["verdict"] == ("PASS" if target["met"] else "MISS")
    rate = rows[4]
    assert 0 < rate["metrics"]["busiest_window"] <= 1_000  # the limit held while measured
    assert "flow-control-postgres" in result.stdout
    after = flow_control.RESULTS.stat().st_mtime_ns if flow_control.RESULTS.exists() else None
    assert after == before
