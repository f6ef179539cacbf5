"""The run graph's layout (columns by dependency depth) and markup, and the throughput
chart: pure functions, no store."""

from __future__ import annotations

from datetime import UTC, datetime

from pgflow.dashboard.charts import throughput_chart
from pgflow.dashboard.graph_svg import GraphStep, layout, read_definition, run_graph


def test_columns_follow_the_longest_dependency_chain() -> None:
    steps = read_definition(
        {
            "kind": "graph",
            "steps": [
                {"name": "a", "kind": "step", "depends_on": []},
                {"name": "b", "kind": "map", "depends_on": ["a"]},
                {"name": "c", "kind": "step", "depends_on": ["a"]},
                {"name": "d", "kind": "step", "depends_on": ["b", "c", "a"]},
                {"name": "e", "kind": "step", "depends_on": []},
            ],
        }
    )
    assert [step.kind for step in steps] == ["step", "map", "step", "step", "step"]
    assert layout(steps) == {"a": (0, 0), "b": (1, 0), "c": (1, 1), "d": (2, 0), "e": (0, 1)}


def test_a_chain_is_one_row_and_unreadable_definitions_draw_nothing() -> None:
    chain = read_definition({"kind": "chain", "steps": ["one", "two", "three"]})
    assert layout(chain) == {"one": (0, 0), "two": (1, 0), "three": (2, 0)}
    assert read_definition(None) == []
    assert read_definition({"kind": "graph", "steps": "nope"}) == []
    assert read_definition({"kind": "graph", "steps": [{"no": "name"}]}) == []


def test_boxes_carry_state_progress_waits_and_child_links() -> None:
    steps = [
        GraphStep("fan", "map", (), "started", progress=(3, 10)),
        GraphStep("approve", "wait", ("fan",), "started"),
        GraphStep("child", "subflow", ("fan",), "started", child_id="id/with?odd#chars"),
        GraphStep('<b x="1">', "step", ("approve",), "pending"),
    ]
    svg = str(run_graph(steps, "/pgflow"))
    assert svg.startswith('<svg id="run-graph"')
    assert '<g class="step state-started" data-step="fan" data-state="started"' in svg
    assert ">3/10<" in svg
    assert "waiting for a signal" in svg
    assert '<a href="/pgflow/runs/id%2Fwith%3Fodd%23chars">' in svg
    assert 'data-step="&lt;b x=&#34;1&#34;&gt;"' in svg
    assert "<b x" not in svg
    assert svg.count('class="edge"') == 3


def test_the_chart_scales_bars_to_the_busiest_minute() -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    buckets = [(start, 0, 0), (start, 4, 0), (start, 2, 2)]
    svg = str(throughput_chart(buckets, "<q>"))
    assert svg.startswith('<svg class="throughput"')
    assert 'height="24.0"' in svg  # 4 completed: the full height
    assert svg.count('class="failed"') == 1
    assert "&lt;q&gt;: 6 completed, 2 failed" in svg
    assert "<q>" not in svg
    idle = str(throughput_chart([(start, 0, 0)] * 3, "q"))
    assert "<rect" not in idle and "0 completed, 0 failed" in idle
