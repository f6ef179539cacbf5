"""Starting the helper scripts of these tests as real, separate processes."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

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
