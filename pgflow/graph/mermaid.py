"""A flow drawn as a Mermaid flowchart: maps as parallelograms, edges from each dependency."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pgflow.definition import Workflow

_SAFE = re.compile(r"[^A-Za-z0-9_]")


def _node_id(index: int, name: str) -> str:
    """Mermaid ids must be plain words; names may hold anything, so ids are made up."""
    return f"s{index}_{_SAFE.sub('_', name)}"


#: Characters that would end a quoted label, start markup, or break the line, as Mermaid
#: entity codes; `#` first, since every replacement introduces one.
_ESCAPES = (
    ("#", "#35;"),
    ('"', "#quot;"),
    ("<", "#lt;"),
    (">", "#gt;"),
    ("`", "#96;"),
    ("\r", "#13;"),
    ("\n", "#10;"),
)


def _label(text: str) -> str:
    """A step name as the text of a quoted Mermaid label: shown as written, never parsed."""
    for char, code in _ESCAPES:
        text = text.replace(char, code)
    return text


def to_mermaid(workflow: Workflow) -> str:
    """`flowchart TD` text for the workflow (a chain is drawn as a straight line)."""
    plan = workflow.plan
    ids = {step.name: _node_id(step.index, step.name) for step in plan.steps}
    lines = ["flowchart TD"]
    for step in plan.steps:
        label = _label(step.name)
        if step.is_map:
            over = "input" if step.over is None else step.over
            lines.append(f'    {ids[step.name]}[/"{label} (map over {_label(over)})"/]')
        else:
            lines.append(f'    {ids[step.name]}["{label}"]')
    for step in plan.steps:
        for dependency in step.deps:
            lines.append(f"    {ids[dependency]} --> {ids[step.name]}")
    return "\n".join(lines) + "\n"
