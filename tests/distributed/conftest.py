"""Fixtures for the multi-process tests: a migrated database and worker processes to spawn.

Every child is killed (SIGKILL) at teardown whatever happened, and its log is printed when
the test failed, so a failure explains itself.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pgflow.registry import backend_from_url
from tests.distributed.workers import SIDE_EFFECTS_DDL

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).with_name("run_worker.py")

#: Short intervals so that rescue and leadership hand-over happen within seconds.
FAST = {
    "poll_interval": 0.2,
    "heartbeat_interval": 0.25,
    "stale_timeout": 2.0,
    "stage_interval": 0.2,
    "rescue_interval": 0.5,
    "shutdown_timeout": 15.0,
}


def query(url: str, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
        cursor = conn.execute(sql, params)
        return cursor.fetchall() if cursor.description is not None else []


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    if not condition():
        raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture
def pg(postgres_url: str) -> str:
    """A fresh, migrated PostgreSQL database with the side_effects table."""
    backend = backend_from_url(postgres_url)
    try:
        backend.migrate()
    finally:
        backend.close()
    query(postgres_url, SIDE_EFFECTS_DDL)
    return postgres_url


class Cluster:
    """Worker processes of one test."""

    def __init__(self, url: str, logs: Path) -> None:
        self.url = url
        self.logs = logs
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def spawn(
        self,
        instance_id: str,
        *,
        queues: dict[str, int] | None = None,
        cron: list[tuple[str, str]] | None = None,
        clock_offset: float = 0.0,
        **options: Any,
    ) -> subprocess.Popen[bytes]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        env["PGFLOW_TEST_OPTIONS"] = json.dumps(
            {**FAST, "queues": queues or {"default": 5}, **options}
        )
        env["PGFLOW_TEST_CRON"] = json.dumps(cron or [])
        env["PGFLOW_TEST_CLOCK_OFFSET"] = str(clock_offset)
        log = (self.logs / f"{instance_id}.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, str(SCRIPT), self.url, instance_id],
            env=env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.procs[instance_id] = proc
        return proc

    def wait_online(self, *instance_ids: str, timeout: float = 30.0) -> None:
        def online() -> bool:
            rows = query(
                self.url,
                "SELECT instance_id FROM pgflow_instances WHERE status = 'online'",
            )
            return set(instance_ids) <= {row[0] for row in rows}

        wait_until(online, timeout, f"instances {instance_ids} online")

    def signal(self, instance_id: str, sig: signal.Signals) -> None:
        self.procs[instance_id].send_signal(sig)

    def log_of(self, instance_id: str) -> str:
        path = self.logs / f"{instance_id}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def kill_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                try:
                    proc.send_signal(signal.SIGCONT)
                    proc.kill()
                except ProcessLookupError:
                    pass
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)


@pytest.fixture
def cluster(pg: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    spawned = Cluster(pg, tmp_path)
    try:
        yield spawned
    finally:
        spawned.kill_all()
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            for instance_id in spawned.procs:
                print(f"----- log of {instance_id} -----\n{spawned.log_of(instance_id)[-6000:]}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[Any]:
    outcome: Any = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)
