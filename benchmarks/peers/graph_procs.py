"""Worker processes of a flow system, started from an argv (Node or Python alike).

A worker prints "ready" on stdout once it serves; it stops on SIGTERM. Each runs in its own
session so that stopping it never signals the benchmark, and it is killed if it lingers.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from typing import IO

#: Seconds a worker may take to start, connect and print "ready".
READY_TIMEOUT = 60.0
#: Seconds a worker gets after SIGTERM before it is killed.
STOP_TIMEOUT = 10.0
#: Pause after every worker is ready, so pools and listeners settle.
SETTLE = 0.3


class WorkerFailed(RuntimeError):
    """A worker process exited or never became ready; the message carries its stderr tail."""


def _tail(log: IO[bytes], lines: int = 5) -> str:
    log.seek(0)
    text = log.read().decode(errors="replace").strip().splitlines()
    return " | ".join(text[-lines:]) or "no output"


def _await_ready(process: subprocess.Popen[bytes], log: IO[bytes]) -> None:
    if process.stdout is None:
        raise WorkerFailed("worker has no stdout")
    chooser = selectors.DefaultSelector()
    chooser.register(process.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + READY_TIMEOUT
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise WorkerFailed(f"worker not ready after {READY_TIMEOUT:.0f} s: {_tail(log)}")
            if chooser.select(timeout=min(remaining, 0.5)):
                line = process.stdout.readline()
                if line.strip() == b"ready":
                    return
                if not line:
                    code = process.wait(timeout=5)
                    raise WorkerFailed(f"worker exited with code {code}: {_tail(log)}")
    finally:
        chooser.close()


def check_alive(processes: Sequence[subprocess.Popen[bytes]], logs: Sequence[IO[bytes]]) -> None:
    """Raise WorkerFailed when a worker exited while it should be serving."""
    for process, log in zip(processes, logs, strict=True):
        code = process.poll()
        if code is not None:
            raise WorkerFailed(f"worker exited early with code {code}: {_tail(log)}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)
    if process.stdout is not None:
        process.stdout.close()


@contextlib.contextmanager
def running(
    argv: Sequence[str], count: int, env: dict[str, str] | None = None
) -> Iterator[tuple[list[subprocess.Popen[bytes]], list[IO[bytes]]]]:
    """Start `count` copies of `argv`; yield (processes, stderr logs) once all are ready."""
    processes: list[subprocess.Popen[bytes]] = []
    logs: list[IO[bytes]] = []
    try:
        for _ in range(count):
            log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in the finally below
            logs.append(log)
            processes.append(
                subprocess.Popen(
                    list(argv),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=log,
                    env=env,
                    start_new_session=True,
                )
            )
        for process, log in zip(processes, logs, strict=True):
            _await_ready(process, log)
        time.sleep(SETTLE)
        yield processes, logs
    finally:
        for process in processes:
            _stop(process)
        for log in logs:
            log.close()
