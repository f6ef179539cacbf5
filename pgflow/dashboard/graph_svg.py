"""A flow run drawn as SVG: steps in layers by dependency depth, each coloured by its state.

The layout is deliberately simple: a step's column is the length of the longest dependency
chain before it, its row its place among the steps of that column in definition order, and
each dependency an arrow from the right edge of one box to the left edge of the other.
Every name and value is escaped: step names come from user code.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

import attrs
from markupsafe import Markup, escape

__all__ = ["GraphStep", "layout", "read_definition", "run_graph"]

BOX_WIDTH = 170
BOX_HEIGHT = 54
COLUMN_GAP = 50
ROW_GAP = 18
MARGIN = 10
NAME_CHARS = 22


@attrs.frozen
class GraphStep:
    """One step as drawn: its shape from the definition and what the run says of it."""

    name: str
    kind: str = "step"
    depends_on: tuple[str, ...] = ()
    state: str = "pending"
    #: Map progress (tasks done, tasks total) once known.
    progress: tuple[int, int] | None = None
    #: A sub-flow step's child run.
    child_id: str | None = None


def read_definition(definition: Any) -> list[GraphStep]:
    """The steps of a stored definition (chain or graph form), in definition order; [] when
    the definition is missing or unreadable (a run from an older version)."""
    if not isinstance(definition, Mapping) or not isinstance(definition.get("steps"), list):
        return []
    steps = definition["steps"]
    if definition.get("kind") == "chain":
        names = [name for name in steps if isinstance(name, str)]
        return [
            GraphStep(name, "step", (names[index - 1],) if index else ())
            for index, name in enumerate(names)
        ]
    found: list[GraphStep] = []
    for step in steps:
        if isinstance(step, Mapping) and isinstance(step.get("name"), str):
            depends = step.get("depends_on") or ()
            found.append(
                GraphStep(
                    step["name"],
                    str(step.get("kind", "step")),
                    tuple(str(name) for name in depends if isinstance(name, str)),
                )
            )
    return found


def layout(steps: Sequence[GraphStep]) -> dict[str, tuple[int, int]]:
    """(column, row) of each step: column = longest dependency chain before it."""
    known = {step.name for step in steps}
    depth: dict[str, int] = {}
    for step in steps:  # definitions list steps in topological order
        parents = [depth.get(name, 0) for name in step.depends_on if name in known]
        depth[step.name] = 1 + max(parents) if parents else 0
    rows: dict[int, int] = {}
    placed: dict[str, tuple[int, int]] = {}
    for step in steps:
        column = depth[step.name]
        placed[step.name] = (column, rows.get(column, 0))
        rows[column] = rows.get(column, 0) + 1
    return placed


def _short(name: str) -> str:
    return name if len(name) <= NAME_CHARS else name[: NAME_CHARS - 1] + "…"


def _detail(step: GraphStep, root: str) -> str:
    """The second line of a box: progress, a wait, a sleep, or the link to a child run."""
    if step.kind == "subflow" and step.child_id is not None:
        href = escape(f"{root}/runs/{quote(step.child_id, safe='')}")
        return (
            f'<a href="{href}"><text class="detail link" x="8" y="42">child run '
            f"{escape(step.child_id[:8])}…</text></a>"
        )
    if step.progress is not None and step.kind == "map":
        done, total = step.progress
        return f'<text class="detail progress" x="8" y="42">{done}/{total}</text>'
    if step.kind == "wait" and step.state == "started":
        return '<text class="detail" x="8" y="42">waiting for a signal</text>'
    if step.kind == "sleep" and step.state == "started":
        return '<text class="detail" x="8" y="42">sleeping</text>'
    return f'<text class="detail" x="8" y="42">{escape(step.kind)}</text>'


def run_graph(steps: Sequence[GraphStep], root: str) -> Markup:
    """The `<svg id="run-graph">` of a run: one `<g class="step">` per step, arrows between."""
    placed = layout(steps)
    columns = 1 + max((column for column, _ in placed.values()), default=0)
    rows = 1 + max((row for _, row in placed.values()), default=0)
    width = 2 * MARGIN + columns * BOX_WIDTH + (columns - 1) * COLUMN_GAP
    height = 2 * MARGIN + rows * BOX_HEIGHT + (rows - 1) * ROW_GAP

    def origin(name: str) -> tuple[int, int]:
        column, row = placed[name]
        return (
            MARGIN + column * (BOX_WIDTH + COLUMN_GAP),
            MARGIN + row * (BOX_HEIGHT + ROW_GAP),
        )

    parts = [
        f'<svg id="run-graph" viewBox="0 0 {width} {height}" width="{width}" '
        f'height="{height}" role="img" aria-label="the run\'s steps and their states">',
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="6" '
        'markerHeight="6" orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z"/>'
        "</marker></defs>",
    ]
    for step in steps:
        x2, y2 = origin(step.name)
        for parent in step.depends_on:
            if parent not in placed:
                continue
            x1, y1 = origin(parent)
            start = (x1 + BOX_WIDTH, y1 + BOX_HEIGHT // 2)
            end = (x2, y2 + BOX_HEIGHT // 2)
            middle = (start[0] + end[0]) // 2
            parts.append(
                f'<path class="edge" marker-end="url(#arrow)" d="M {start[0]} {start[1]} '
                f'C {middle} {start[1]}, {middle} {end[1]}, {end[0]} {end[1]}"/>'
            )
    for step in steps:
        x, y = origin(step.name)
        name = escape(step.name)
        state = escape(step.state)
        parts.append(
            f'<g class="step state-{state}" data-step="{name}" data-state="{state}" '
            f'transform="translate({x} {y})">'
            f"<title>{name}: {state}</title>"
            f'<rect width="{BOX_WIDTH}" height="{BOX_HEIGHT}" rx="6"/>'
            f'<text class="name" x="8" y="20">{escape(_short(step.name))}</text>'
            f'<text class="state" x="{BOX_WIDTH - 8}" y="20" text-anchor="end">{state}</text>'
            f"{_detail(step, root)}</g>"
        )
    parts.append("</svg>")
    return Markup("".join(parts))
