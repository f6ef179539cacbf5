"""`pgflow runs` and `pgflow run show|cancel|resume|restart|signal`: against a real SQLite
database with a running instance, and on memory with pgflow.testing (the CLI then opens the
harness's store)."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import pgflow
from pgflow import cli, testing
from pgflow.errors import RunStateError
from pgflow.records import RunState


def _name(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/runs.db"


@pytest.fixture
def app(url: str) -> Iterator[pgflow.Pgflow]:
    app = pgflow.Pgflow(url, queues={"default": 4}, poll_interval=0.05, instance_id="cli")
    app.migrate()
    app.start()
    try:
        yield app
    finally:
        app.close()


def _invoke(*args: str) -> Any:
    result = CliRunner().invoke(cli.cli, list(args))
    return result


def test_runs_lists_newest_first_and_filters_by_state_and_flow(
    app: pgflow.Pgflow, url: str
) -> None:
    done = pgflow.Flow(_name("done"))

    @done.step
    def only(x: int) -> int:
        return x

    first = app.start_run(done, 1, workflow_id="r-1")
    assert first.result(timeout=20) == 1
    second = app.start_run(done, 2, workflow_id="r-2")
    assert second.result(timeout=20) == 2

    listed = _invoke("runs", "--url", url)
    assert listed.exit_code == 0, listed.output
    lines = listed.output.splitlines()
    assert lines[0].split() == ["run", "flow", "state", "started", "finished"]
    assert [line.split()[0] for line in lines[2:]] == ["r-2", "r-1"]

    as_json = _invoke("runs", "--url", url, "--json", "--flow", done.name, "--state", "completed")
    data = json.loads(as_json.output)
    assert [run["workflow_id"] for run in data] == ["r-2", "r-1"]
    assert {run["state"] for run in data} == {"completed"}
    none = json.loads(_invoke("runs", "--url", url, "--json", "--state", "failed").output)
    assert none == []

    assert [r.workflow_id for r in app.list_runs(done, limit=1)] == ["r-2"]
    assert [r.workflow_id for r in app.list_runs(done.name, state="completed")] == ["r-2", "r-1"]
    later = datetime.now(UTC) + timedelta(hours=1)
    assert app.list_runs(since=later) == []
    with pytest.raises(ValueError, match="aware"):
        app.list_runs(since=datetime.now())  # a naive datetime
    with pytest.raises(TypeError, match=r"pgflow\.Flow or a name"):
        app.list_runs(flow=3)


def test_run_show_prints_each_step_and_json(app: pgflow.Pgflow, url: str) -> None:
    flow = pgflow.Flow(_name("shown"))

    @flow.step
    def items(input: int) -> list[int]:
        return list(range(input))

    @flow.map(over="items")
    def double(item: int) -> int:
        return item * 2

    handle = app.start_run(flow, 3, workflow_id="s-1")
    assert handle.result(timeout=20) == {"double": [0, 2, 4]}
    shown = _invoke("run", "show", "s-1", "--url", url)
    assert shown.exit_code == 0, shown.output
    assert "run s-1 of " + flow.name + ": completed" in shown.output
    assert 'result: {"double": [0, 2, 4]}' in shown.output
    double_line = next(line for line in shown.output.splitlines() if "└─ double" in line)
    assert double_line.split()[:5] == ["└─", "double", "completed", "1", "3/3"]
    data = json.loads(_invoke("run", "show", "s-1", "--url", url, "--json").output)
    assert data["state"] == "completed" and data["output"] == {"double": [0, 2, 4]}
    assert data["steps"]["double"]["tasks_done"] == 3
    missing = _invoke("run", "show", "nope", "--url", url)
    assert missing.exit_code == 1 and "run 'nope' is not stored" in missing.output


def test_run_cancel_cancels_once_then_names_the_state(app: pgflow.Pgflow, url: str) -> None:
    flow = pgflow.Flow(_name("cancelled"))
    started = threading.Event()

    @flow.step
    async def wait(x: int) -> int:
        import asyncio

        started.set()
        await asyncio.sleep(60)
        return x

    handle = app.start_run(flow, 1, workflow_id="c-1")
    assert started.wait(20)
    done = _invoke("run", "cancel", "c-1", "--url", url, "--json")
    assert done.exit_code == 0, done.output
    assert json.loads(done.output)["state"] == "cancelled"
    with pytest.raises(pgflow.RunCancelled):
        handle.result(timeout=5)
    again = _invoke("run", "cancel", "c-1", "--url", url)
    assert again.exit_code == 1 and "is cancelled" in again.output
    unknown = _invoke("run", "cancel", "nope", "--url", url)
    assert unknown.exit_code == 1 and "not stored" in unknown.output
    stored = app.get_run("c-1")
    assert stored is not None and stored.state is RunState.CANCELLED
    with pytest.raises(RunStateError):
        app.cancel_run("c-1")


# -- steering runs from the command line, on memory -------------------------------------------

FAILING: set[str] = set()
CALLS: list[str] = []

review = pgflow.Flow("cli_review")


@review.step
def write(input: dict[str, str]) -> str:
    CALLS.append("write")
    return input["text"]


review.wait_for("approve", depends_on=["write"], timeout=3600)


@review.step(depends_on=["write", "approve"])
def release(write: str, approve: dict[str, str]) -> str:
    CALLS.append("release")
    if "release" in FAILING:
        raise RuntimeError("bug in release")
    return f"{write} approved by {approve['by']}"


packing = pgflow.Flow("cli_packing")


@packing.step
def pack(input: str) -> str:
    return f"box of {input}"


sending = pgflow.Flow("cli_sending")


@sending.step
def items(input: int) -> list[str]:
    return [f"item{n}" for n in range(input)]


@sending.map(over="items")
def weigh(item: str) -> int:
    return len(item)


sending.sleep("settle", 60, depends_on=["items"])
sending.subflow("packed", packing, depends_on=["settle"])


@pytest.fixture
def harness(monkeypatch: pytest.MonkeyPatch) -> Iterator[testing.TestQueue]:
    """A pgflow.testing store that every CLI command of the test opens (and cannot close)."""
    import pgflow.cli_runs

    FAILING.clear()
    CALLS.clear()
    with testing.manual() as t:
        monkeypatch.setattr(t.backend, "close", lambda: None)
        monkeypatch.setattr(pgflow.cli_runs, "open_backend", lambda url: t.backend)
        yield t


def _cli(*args: str) -> Any:
    return _invoke(*args, "--url", "memory://")


def test_run_show_draws_the_graph_as_a_tree(harness: testing.TestQueue) -> None:
    handle = harness.app.start_run(review, {"text": "essay"})
    harness.drain()
    shown = _cli("run", "show", handle.workflow_id)
    assert shown.exit_code == 0, shown.output
    lines = shown.output.splitlines()
    assert lines[0] == f"run {handle.workflow_id} of cli_review: running"
    rows = lines[lines.index(next(line for line in lines if line.startswith("step"))) + 2 :]
    assert [row.split()[0] for row in rows] == ["write", "└─", "└─"]
    assert rows[0].split()[:3] == ["write", "completed", "1"]
    assert rows[1].split()[:3] == ["└─", "approve", "started"]
    assert "wait: waiting for a signal" in rows[1]
    assert rows[2].startswith("   └─ release") and "after write" in rows[2]

    data = json.loads(_cli("run", "show", handle.workflow_id, "--json").output)
    assert data["steps"]["approve"]["kind"] == "wait"
    assert data["steps"]["release"]["depends_on"] == ["approve", "write"]
    assert data["deadline_at"] is None and data["restart_of"] is None


def test_run_show_nests_a_sub_flow_run_and_map_progress(harness: testing.TestQueue) -> None:
    handle = harness.app.start_run(sending, 3, deadline=3600)
    harness.drain()
    shown = _cli("run", "show", handle.workflow_id)
    assert "deadline " in shown.output
    weigh_row = next(line for line in shown.output.splitlines() if "weigh" in line)
    assert weigh_row.split()[1:5] == ["weigh", "completed", "1", "3/3"]
    assert "sleep: sleeping" in shown.output
    harness.drain(with_scheduled=True)
    child_id = harness.assert_step(handle.workflow_id, "packed", state="completed").child_id
    assert child_id is not None
    shown = _cli("run", "show", handle.workflow_id)
    assert shown.exit_code == 0, shown.output
    lines = shown.output.splitlines()
    packed = next(index for index, line in enumerate(lines) if "└─ packed" in line)
    assert f"sub-flow run {child_id}" in lines[packed]
    assert f"┆ run {child_id} of cli_packing" in lines[packed + 1]
    assert lines[packed + 2].split()[-4:] == ["pack", "completed", "1", "-"]
    data = json.loads(_cli("run", "show", handle.workflow_id, "--json").output)
    child = data["steps"]["packed"]["child"]
    assert child["workflow_id"] == child_id and child["parent_id"] == handle.workflow_id
    assert child["steps"]["pack"]["output"] == "box of ['item0', 'item1', 'item2']"
    child_shown = _cli("run", "show", child_id)
    assert f"sub-flow run of step 'packed' of run {handle.workflow_id}" in child_shown.output


def test_run_signal_delivers_keeps_and_refuses(harness: testing.TestQueue) -> None:
    handle = harness.app.start_run(review, {"text": "essay"})
    run_id = handle.workflow_id
    kept = _cli("run", "signal", run_id, "approve", '{"by": "ada"}', "--import", __name__)
    assert kept.exit_code == 0, kept.output
    assert "kept for run" in kept.output  # write has not run yet
    again = _cli("run", "signal", run_id, "approve", '{"by": "bob"}', "--json")
    assert again.exit_code == 1 and "already signalled" in again.output
    harness.drain()
    assert handle.result() == {"release": "essay approved by ada"}

    other = harness.app.start_run(review, {"text": "poem"})
    harness.drain()
    done = _cli("run", "signal", other.workflow_id, "approve", '{"by": "cy"}', "--json")
    assert done.exit_code == 0, done.output
    assert json.loads(done.output) == {
        "workflow_id": other.workflow_id,
        "step": "approve",
        "delivered": True,
    }
    bad_json = _cli("run", "signal", other.workflow_id, "approve", "{nope")
    assert bad_json.exit_code == 2 and "PAYLOAD_JSON" in bad_json.output
    deep = _cli("run", "signal", other.workflow_id, "approve", "[" * 100_000 + "]" * 100_000)
    assert deep.exit_code == 2 and "nested too deeply" in deep.output, deep.output[-300:]
    assert len(deep.output) < 1_000  # the 200,000-character argument is not echoed whole
    no_step = _cli("run", "signal", other.workflow_id, "aprove")
    assert no_step.exit_code == 2 and "has no step 'aprove'" in no_step.output
    not_wait = _cli("run", "signal", other.workflow_id, "write")
    assert not_wait.exit_code == 2 and "not a wait_for step" in not_wait.output
    unknown = _cli("run", "signal", "nope", "approve")
    assert unknown.exit_code == 1 and "'nope' is not stored" in unknown.output
    no_module = _cli("run", "signal", other.workflow_id, "approve", "--import", "no.such.module")
    assert no_module.exit_code == 2 and "no.such.module" in no_module.output


def test_run_resume_after_a_fix(harness: testing.TestQueue) -> None:
    FAILING.add("release")
    handle = harness.app.start_run(review, {"text": "essay"}, max_attempts=1)
    run_id = handle.workflow_id
    harness.signal(run_id, "approve", {"by": "ada"})
    harness.drain(raise_on_failure=False)
    harness.assert_run(run_id, state="failed")
    not_yet = _cli("run", "restart", run_id, "--from", "relase")
    assert not_yet.exit_code == 2 and "has no step 'relase'" in not_yet.output
    FAILING.clear()
    CALLS.clear()
    resumed = _cli("run", "resume", run_id, "--import", __name__)
    assert resumed.exit_code == 0, resumed.output
    assert resumed.output.strip() == f"run {run_id} resumed"
    harness.drain()
    assert handle.result() == {"release": "essay approved by ada"}
    assert CALLS == ["release"]
    again = _cli("run", "resume", run_id)
    assert again.exit_code == 1 and "is completed" in again.output


def test_run_restart_from_a_step_with_a_new_input(harness: testing.TestQueue) -> None:
    handle = harness.app.start_run(review, {"text": "essay"})
    harness.signal(handle.workflow_id, "approve", {"by": "ada"})
    harness.drain()
    CALLS.clear()
    restarted = _cli("run", "restart", handle.workflow_id, "--from", "release", "--json")
    assert restarted.exit_code == 0, restarted.output
    data = json.loads(restarted.output)
    assert data["restart_of"] == handle.workflow_id and data["state"] == "running"
    harness.drain()
    harness.assert_run(data["workflow_id"], state="completed")
    assert CALLS == ["release"]

    fresh = _cli("run", "restart", handle.workflow_id, "--input", '{"text": "novel"}')
    assert fresh.exit_code == 0, fresh.output
    new_id = fresh.output.split()[-1]
    assert fresh.output.startswith(f"run {handle.workflow_id} restarted as ")
    harness.drain()
    # A new input re-runs everything downstream of the roots, the wait included.
    harness.assert_step(new_id, "approve", state="started")
    harness.signal(new_id, "approve", {"by": "di"})
    harness.drain()
    harness.assert_run(new_id, output={"release": "novel approved by di"})
    bad = _cli("run", "restart", handle.workflow_id, "--input", "novel")
    assert bad.exit_code == 2 and "--input" in bad.output
    running = harness.app.start_run(review, {"text": "x"})
    refused = _cli("run", "restart", running.workflow_id)
    assert refused.exit_code == 1 and "is running" in refused.output


def test_steering_a_run_whose_flow_is_not_imported_says_so(harness: testing.TestQueue) -> None:
    import gc

    name = _name("cli_unimported")

    def start() -> None:
        flow = pgflow.Flow(name)
        flow.wait_for("ok")
        harness.backend.start_flow_run(  # type: ignore[attr-defined]
            flow.workflow.plan, workflow_id="far-1", input=1, max_attempts=1
        )

    start()
    gc.collect()
    refused = _cli("run", "signal", "far-1", "ok", "true")
    assert refused.exit_code == 1
    assert f"flow {name!r}" in refused.output and "import the module" in refused.output
    harness.app.cancel_run("far-1")
    resumed = _cli("run", "resume", "far-1")
    assert resumed.exit_code == 1 and "not known in this process" in resumed.output
