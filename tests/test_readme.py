"""The README and docs/ are part of the product: the test command is CI's, and examples run."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
SKIP_MARK = "<!-- not run by tests:"
FENCE = re.compile(r"(?P<before>[^\n]*)\n```(?P<lang>\w*)\n(?P<body>.*?)\n```", re.S)


PAGES = ["README.md", *sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").glob("*.md"))]


class Block(NamedTuple):
    page: str
    line: int
    before: str
    body: str


def fenced_blocks(text: str) -> list[tuple[str, str, str]]:
    return [(m.group("lang"), m.group("before"), m.group("body")) for m in FENCE.finditer(text)]


def _blocks(page: str, lang: str) -> list[Block]:
    """Each fenced block of one language on a page, with its line and the line before it."""
    text = (ROOT / page).read_text(encoding="utf-8")
    found = []
    for match in FENCE.finditer(text):
        if match.group("lang") == lang:
            line = text.count("\n", 0, match.start("lang")) + 1
            found.append(Block(page, line, match.group("before"), match.group("body")))
    return found


ALL_PYTHON = [block for page in PAGES for block in _blocks(page, "python")]
RUN = [block for block in ALL_PYTHON if SKIP_MARK not in block.before]


def test_ci_runs_the_readme_test_command() -> None:
    quick_start = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands = [body for _, _, body in fenced_blocks(quick_start)]
    assert len(commands) == 2, "the Quick start gives exactly two commands"
    test_command = commands[1].strip()
    assert "pytest" in test_command
    ci_script = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert test_command in ci_script.splitlines()


def test_every_skipped_example_says_why() -> None:
    for block in ALL_PYTHON:
        if SKIP_MARK in block.before:
            reason = block.before.split(SKIP_MARK, 1)[1].rstrip("-> ").strip()
            assert reason, f"{block.page} line {block.line}: a skipped example must give its reason"


def test_every_docs_page_is_linked_from_the_readme() -> None:
    for page in PAGES[1:]:
        assert f"({page})" in README or f"({page}#" in README, f"README does not link {page}"


@pytest.mark.parametrize("block", RUN, ids=[f"{b.page}:line{b.line}" for b in RUN])
def test_example_runs(block: Block, tmp_path: Path) -> None:
    script = tmp_path / "example.py"
    script.write_text(block.body, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, (
        f"{block.page} line {block.line}: example failed:\n{block.body}\n--- stderr:\n{done.stderr}"
    )


LINK = re.compile(r"\]\((?P<target>[^)\s]+)\)")


def _anchors(text: str) -> set[str]:
    """GitHub's anchors for a page's headings (outside code blocks)."""
    anchors, fenced = set(), False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return anchors


@pytest.mark.parametrize("page", PAGES)
def test_relative_links_resolve(page: str) -> None:
    """A guide moved or a heading renamed must not leave a dead link behind."""
    text = (ROOT / page).read_text(encoding="utf-8")
    for match in LINK.finditer(text):
        target = match.group("target")
        if target.startswith(("http://", "https://")):
            continue
        path, _, anchor = target.partition("#")
        linked = (ROOT / page).parent / path if path else ROOT / page
        assert linked.exists(), f"{page}: {target} does not exist"
        if anchor and linked.suffix == ".md":
            assert anchor in _anchors(linked.read_text(encoding="utf-8")), f"{page}: {target}"
