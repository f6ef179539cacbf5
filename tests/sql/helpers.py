"""Helpers of the SQL tests: helper scripts run as real, separate processes, and killing
connections server-side."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pgflow_backends.postgres import PostgresBackend

HERE = Path(__file__).resolve().parent


def run_helpers(
    script: str,
    args_list: list[list[str]],
    timeout: float = 60,
    *,
    go: Path | None = None,
) -> list[str]:
    """Start one process per argument list at once; return their stdouts (fail on error).

    With `go`, wait until each process touched "<go>.<its second argument>.ready", then
    create `go`: the signal for all of them to start together.
    """
    procs = [
        subprocess.Popen(
            [sys.executable, str(HERE / script), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for args in args_list
    ]
    outputs: list[str] = []
    try:
        if go is not None:
            _release(go, [f"{go}.{args[1]}.ready" for args in args_list], procs, timeout)
        for proc in procs:
            out, err = proc.communicate(timeout=timeout)
            assert proc.returncode == 0, f"{script} failed ({proc.returncode}): {err}"
            outputs.append(out)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return outputs


def _release(
    go: Path, ready: list[str], procs: list[subprocess.Popen[str]], timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while not all(Path(name).exists() for name in ready):
        assert time.monotonic() < deadline, "helper processes never became ready"
        assert all(proc.poll() is None for proc in procs), "a helper process died early"
        time.sleep(0.02)
    go.touch()


def kill_other_connections(backend: PostgresBackend) -> None:
    """Terminate every session on `backend`'s database but this one: a server-side drop of
    pooled and held connections, as a restart or a network cut would leave them."""
    import psycopg

    url = backend.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )


@contextlib.contextmanager
def no_idle_ping() -> Iterator[None]:
    """Within the block, every pooled connection looks freshly used, so checkout skips its
    ping: the first statement on a connection killed server-side must fail."""
    from pgflow_backends.sql import pool

    frozen = time.monotonic()
    real_time = pool.time
    pool.time = types.SimpleNamespace(monotonic=lambda: frozen)  # type: ignore[assignment]
    try:
        yield
    finally:
        pool.time = real_time
