"""`pgflow dashboard`: its refusals (checked before anything is served) and its options."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner

import pgflow
from pgflow.cli import cli
from pgflow.cli_dashboard import is_loopback
from tests.dashboard import flows

ROOT = Path(__file__).resolve().parents[2]


def test_actions_without_a_token_are_refused() -> None:
    result = CliRunner().invoke(
        cli,
        ["dashboard", "--url", "memory://", "--allow-actions"],
        env={"PGFLOW_DASHBOARD_TOKEN": ""},
    )
    assert result.exit_code == 2
    assert "--allow-actions needs a token" in result.output


def test_protected_reads_without_a_token_are_refused() -> None:
    result = CliRunner().invoke(
        cli,
        ["dashboard", "--url", "memory://", "--protect-reads"],
        env={"PGFLOW_DASHBOARD_TOKEN": ""},
    )
    assert result.exit_code == 2
    assert "--protect-reads needs a token" in result.output


def test_help_lists_the_options() -> None:
    result = CliRunner().invoke(cli, ["dashboard", "--help"])
    assert result.exit_code == 0
    for option in ("--url", "--host", "--port", "--allow-actions", "--token", "--import"):
        assert option in result.output
    assert "127.0.0.1" in result.output and "8000" in result.output


def test_loopback_addresses() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.0.0.5")
    assert not is_loopback("example.com")


@pytest.mark.slow
def test_the_command_serves_the_dashboard(tmp_path: Path) -> None:
    """`pgflow dashboard` in a real process: it answers once uvicorn says it listens, with
    actions (token from the environment), then stops on SIGTERM."""
    url = f"sqlite:///{tmp_path}/served.db"
    store = pgflow.Pgflow(url)
    store.migrate()
    store.insert(flows.Idle.new({"to": "served"}))
    store.close()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "PGFLOW_DASHBOARD_TOKEN": "served-token-123", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "pgflow", "dashboard", "--url", url, "--port", str(port)]
    process = subprocess.Popen(
        [*command, "--allow-actions"], env=env, stderr=subprocess.PIPE, text=True
    )
    try:
        listening = threading.Event()

        def watch() -> None:
            assert process.stderr is not None
            for line in process.stderr:
                if "Uvicorn running on" in line:
                    listening.set()

        threading.Thread(target=watch, daemon=True).start()
        assert listening.wait(60), "pgflow dashboard did not start listening"
        base = f"http://127.0.0.1:{port}"
        with urllib.request.urlopen(f"{base}/healthz", timeout=10) as response:
            assert response.read() == b"ok"
        with urllib.request.urlopen(f"{base}/jobs?queue=mail", timeout=10) as response:
            assert b'<tr data-job-id="1">' in response.read()
        request = urllib.request.Request(
            f"{base}/queues/mail/pause",
            method="POST",
            headers={"Authorization": "Bearer served-token-123"},
            data=b"",
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200  # followed the 303 to the queue's page
            assert b'<span class="paused">paused</span>' in response.read()
    finally:
        process.terminate()
        process.wait(30)
