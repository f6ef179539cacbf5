"""`pgflow runs` and `pgflow run show|cancel`, against a real SQLite database."""

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
from pgflow import cli
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
    double_line = next(line for line in shown.output.splitlines() if line.startswith("double"))
    assert double_line.split()[:4] == ["double", "completed", "1", "3/3"]
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
