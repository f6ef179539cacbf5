"""Two processes execute one workflow_id at once: each step runs exactly once (issue 9 #4)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pgflow.records import RunState
from pgflow.registry import backend_from_url

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).with_name("run_execute.py")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest) -> str:
    """A migrated SQLite file or PostgreSQL database, shared by the two processes."""
    fixture = "sqlite_url" if request.param == "sqlite" else "postgres_url"
    url: str = request.getfixturevalue(fixture)
    backend = backend_from_url(url)
    backend.migrate()
    backend.close()
    return url


def test_two_processes_executing_one_workflow_id_run_each_step_once(
    database_url: str, tmp_path: Path
) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    callers = [
        subprocess.Popen(
            [sys.executable, str(SCRIPT), database_url, str(tmp_path)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs: list[tuple[int, str, str]] = []
    try:
        for caller in callers:
            stdout, stderr = caller.communicate(timeout=90)
            outputs.append((caller.returncode, stdout, stderr))
    finally:
        for caller in callers:
            if caller.poll() is None:
                caller.kill()
                caller.wait()

    for code, _, stderr in outputs:
        assert code == 0, stderr
    expected = {"order": 1, "charged": True, "receipt": True}
    assert [json.loads(stdout) for _, stdout, _ in outputs] == [expected, expected]
    assert (tmp_path / "effects").read_text().splitlines() == ["charge", "receipt"]
    backend = backend_from_url(database_url)
    try:
        run = backend.get_run("order-proc")
        assert run is not None and (run.state, run.attempt) == (RunState.COMPLETED, 1)
    finally:
        backend.close()
