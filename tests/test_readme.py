"""The README is part of the product: its test command is CI's, and its examples run."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
SKIP_MARK = "<!-- not run by tests:"
FENCE = re.compile(r"(?P<before>[^\n]*)\n```(?P<lang>\w*)\n(?P<body>.*?)\n```", re.S)


def _blocks(lang: str) -> list[tuple[int, str, str]]:
    """(line number, text of the line before the fence, body) of each fenced block."""
    found = []
    for match in FENCE.finditer(README):
        if match.group("lang") == lang:
            line = README.count("\n", 0, match.start("lang")) + 1
            found.append((line, match.group("before"), match.group("body")))
    return found


def test_ci_runs_the_readme_test_command() -> None:
    quick_start = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands = [body for _, _, body in fenced_blocks(quick_start)]
    assert len(commands) == 2, "the Quick start gives exactly two commands"
    test_command = commands[1].strip()
    assert "pytest" in test_command
    ci_script = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert test_command in ci_script.splitlines()


def fenced_blocks(text: str) -> list[tuple[str, str, str]]:
    return [(m.group("lang"), m.group("before"), m.group("body")) for m in FENCE.finditer(text)]


PYTHON_BLOCKS = [block for block in _blocks("python") if SKIP_MARK not in block[1]]


def test_every_skipped_example_says_why() -> None:
    for line, before, _ in _blocks("python"):
        if SKIP_MARK in before:
            reason = before.split(SKIP_MARK, 1)[1].rstrip("-> ").strip()
            assert reason, f"README line {line}: a skipped example must give its reason"


@pytest.mark.parametrize(
    "body", [body for _, _, body in PYTHON_BLOCKS], ids=[f"line{n}" for n, _, _ in PYTHON_BLOCKS]
)
def test_readme_example_runs(body: str, tmp_path: Path) -> None:
    script = tmp_path / "example.py"
    script.write_text(body, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, f"README example failed:\n{body}\n--- stderr:\n{done.stderr}"
