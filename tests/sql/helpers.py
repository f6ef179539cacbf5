"""Starting the helper scripts of these tests as real, separate processes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def run_helpers(script: str, args_list: list[list[str]], timeout: float = 60) -> list[str]:
    """Start one process per argument list at once; return their stdouts (fail on error)."""
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
