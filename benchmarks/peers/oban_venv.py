"""The Python >= 3.12 virtualenv that Oban's worker and inserter processes run in.

`oban` requires Python >= 3.12 while the project runs 3.11, so the peer builds a separate
venv on first use (benchmarks/.venv-oban, git-ignored) and drives it through subprocesses.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
from pathlib import Path

from benchmarks.peers import spec

#: Environment variable naming a Python >= 3.12 interpreter to build the venv from.
PYTHON_ENV = "PGFLOW_OBAN_PYTHON"
#: Where the venv lives (next to the benchmark code, ignored by git).
VENV = Path(__file__).resolve().parent.parent / ".venv-oban"
#: The repository root, put on the venv interpreter's path so it finds `benchmarks`.
ROOT = VENV.parent.parent
PACKAGES = ("oban", "psycopg[binary]")
#: Seconds creating the venv and installing its packages may take.
INSTALL_TIMEOUT = 600.0
_PROBE = "import sys; print(sys.version_info >= (3, 12))"


def _is_312(python: str) -> bool:
    try:
        done = subprocess.run(
            [python, "-c", _PROBE], capture_output=True, text=True, timeout=30, check=False
        )
    except OSError:
        return False
    return done.returncode == 0 and done.stdout.strip() == "True"


def find_interpreter() -> str | None:
    """$PGFLOW_OBAN_PYTHON, else the newest pyenv 3.12+, else python3.13/python3.12 on PATH."""
    named = os.environ.get(PYTHON_ENV)
    if named:
        return named if _is_312(named) else None
    pyenv_root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    candidates = sorted(
        glob.glob(os.path.join(pyenv_root, "versions", "3.1[2-9]*", "bin", "python3"))
    )
    candidates.reverse()
    candidates += [found for name in ("python3.13", "python3.12") if (found := shutil.which(name))]
    return next((python for python in candidates if _is_312(python)), None)


def venv_python() -> Path:
    return VENV / "bin" / "python"


def _ready(python: Path) -> bool:
    if not python.exists():
        return False
    probe = [str(python), "-c", "import oban, psycopg"]
    return subprocess.run(probe, capture_output=True, timeout=60, check=False).returncode == 0


def ensure() -> Path:
    """The venv's interpreter, creating the venv first; NotInstalled with the reason if not."""
    python = venv_python()
    if _ready(python):
        return python
    base = find_interpreter()
    if base is None:
        raise spec.NotInstalled(
            f"not installed: needs Python >= 3.12 (none found; set {PYTHON_ENV} or install "
            "one with pyenv)"
        )
    steps = (
        [base, "-m", "venv", "--clear", str(VENV)],
        [str(python), "-m", "pip", "install", "--quiet", *PACKAGES],
    )
    for step in steps:
        try:
            done = subprocess.run(
                step, capture_output=True, text=True, timeout=INSTALL_TIMEOUT, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise spec.NotInstalled(f"not installed: building {VENV.name} failed ({exc})") from exc
        if done.returncode != 0:
            tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise spec.NotInstalled(f"not installed: {' '.join(step[1:4])} failed ({tail})")
    if not _ready(python):
        raise spec.NotInstalled(f"not installed: oban does not import in {VENV.name}")
    return python


def child_env() -> dict[str, str]:
    """The environment of a venv process: this one, with the repository root on its path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT)
    env.pop("PYTHONHOME", None)
    return env
