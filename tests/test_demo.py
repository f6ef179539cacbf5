"""The README's Quick start demo runs on a fresh machine: no server, SQLite file, exit code 0."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PGFLOW_URL", "DATABASE_URL")}
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=90, cwd=cwd, env=env
    )


def test_python_m_pgflow_demo_runs_and_reads_runs_back(tmp_path: Path) -> None:
    result = _run(["-m", "pgflow.demo"], cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert (tmp_path / "pgflow-demo.db").is_file()
    assert f"database: {tmp_path / 'pgflow-demo.db'} (new" in out
    # 1. seed form, durably recorded and read back
    assert "'data': 'HELLO'" in out and "'published': True" in out
    assert "(pgflow.demo.ProcessData) completed, attempt 1/3" in out
    for step in ("validate", "transform", "publish"):
        assert f"attempt 1  {step}" in out
    # 2. retries with a short backoff, then the error type
    assert "raised MaxAttemptsExceeded: attempts=3" in out
    assert "ValueError: missing data" in out
    assert "failed, attempt 3/3" in out
    assert "attempt 3  validate  failed" in out
    # 3. decorator form with an async step
    assert "'data': 'olleh'" in out
    assert "(process_data) completed" in out
    assert "Traceback" not in result.stderr


def test_pgflow_demo_command_with_db_option_reuses_the_file(tmp_path: Path) -> None:
    db = tmp_path / "sub" / "demo.db"
    db.parent.mkdir()
    for expected in ("(new; kept", "(kept after"):
        result = _run(["-m", "pgflow", "demo", "--db", str(db)], cwd=tmp_path)
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"database: {db} {expected}" in result.stdout
    assert not (tmp_path / "pgflow-demo.db").exists()


def test_demo_needs_no_postgres_driver(tmp_path: Path) -> None:
    """A fresh `pip install -e .` has no psycopg: the demo must not import it."""
    code = (
        "import sys, runpy; sys.modules['psycopg'] = None; sys.argv = ['demo'];"
        "runpy.run_module('pgflow.demo', run_name='__main__')"
    )
    result = _run(["-c", code], cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "raised MaxAttemptsExceeded" in result.stdout
