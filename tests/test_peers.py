"""Smoke tests of `python -m benchmarks --peers`: the floor and pgflow rows are measured
with tiny counts, and a system that is not installed keeps its row with the reason.
Timings are never asserted, only that every figure was taken and is positive."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from benchmarks.peers import chart, measure, report, runner, spec

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
    floor_one, floor_batch = by_name[report.FLOOR_ONE], by_name[report.FLOOR_BATCH]
    for key in ("insert_one", "drain_1"):
        assert floor_one.metrics[key] > 0
    for key in ("insert_bulk", "drain_1"):
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


def test_ratios_compare_with_the_best_peer_and_the_floor() -> None:
    floor = report.floor_outcomes(
        {
            "insert_one": 1000.0,
            "insert_bulk": 50000.0,
            "drain_one": 900.0,
            "drain_batched": 20000.0,
            "drain_batched_10": 9000.0,
            "lifecycle_one": 300.0,
            "lifecycle_batched": 10000.0,
        }
    )
    fast = spec.Outcome("fast", metrics={"drain_1": 10000.0, "latency_p50_ms": 2.0})
    slow = spec.Outcome("slow", metrics={"drain_1": 5000.0, "latency_p50_ms": 4.0})
    table = report.render([*floor, fast, slow])
    ratio_block = table.split("Ratio to the best peer")[1].split("Fraction of")[0]
    slow_line = next(line for line in ratio_block.splitlines() if line.startswith("slow"))
    assert "0.50x" in slow_line
    floor_block = table.split("Fraction of the plain-SQL floor")[1].split("Configuration")[0]
    fast_line = next(line for line in floor_block.splitlines() if line.startswith("fast"))
    assert "0.50" in fast_line  # 10,000 of the batched floor's 20,000 jobs/s


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
