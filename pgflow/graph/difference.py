"""How one stored flow definition differs from another, in words: steps added, removed, or
with other dependencies, kind, map source or input.

Used to explain why a run cannot be served: its stored definition against the definitions
this process knows. Both forms are compared as graphs (a chain is a graph in which each step
depends on the one before), so a chain that became a graph reads as the edges that changed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

#: At most this many changes are spelled out; the rest are counted.
MAX_CHANGES = 8


@attrs.frozen
class _StepShape:
    """What the fingerprint covers of one step."""

    kind: str
    depends_on: tuple[str, ...]
    over: str | None = None
    takes_input: bool = False
    defaults: tuple[str, ...] = ()


def _shapes(definition: Any) -> dict[str, _StepShape] | None:
    """Steps by name of a stored definition (chain or graph form); None when unreadable."""
    if not isinstance(definition, Mapping):
        return None
    steps = definition.get("steps")
    if not isinstance(steps, list):
        return None
    if definition.get("kind") == "chain":
        if not all(isinstance(name, str) for name in steps):
            return None
        return {
            name: _StepShape("step", (steps[index - 1],) if index else ())
            for index, name in enumerate(steps)
        }
    shapes: dict[str, _StepShape] = {}
    for step in steps:
        if not isinstance(step, Mapping) or not isinstance(step.get("name"), str):
            return None
        shapes[step["name"]] = _StepShape(
            kind=str(step.get("kind", "step")),
            depends_on=tuple(sorted(map(str, step.get("depends_on") or ()))),
            over=None if step.get("over") is None else str(step["over"]),
            takes_input=bool(step.get("input", False)),
            defaults=tuple(sorted(map(str, step.get("defaults") or ()))),
        )
    return shapes


def _names(names: tuple[str, ...]) -> str:
    return "[" + ", ".join(repr(name) for name in names) + "]"


def _version(version: Any) -> str:
    return "unversioned" if version is None else f"version {version!r}"


def _describe_step(name: str, shape: _StepShape) -> str:
    what = "a map" if shape.kind == "map" else shape.kind
    details = [f"step {name!r} ({what}"]
    if shape.depends_on:
        details.append(f", depends on {_names(shape.depends_on)}")
    return "".join(details) + ")"


def _step_changes(name: str, old: _StepShape, new: _StepShape) -> list[str]:
    changes: list[str] = []
    if old.kind != new.kind:
        changes.append(f"step {name!r} is now a {new.kind} (was a {old.kind})")
    if old.depends_on != new.depends_on:
        changes.append(
            f"step {name!r} now depends on {_names(new.depends_on)} (was {_names(old.depends_on)})"
        )
    if old.over != new.over and old.kind == new.kind == "map":
        source = "the run's input" if new.over is None else repr(new.over)
        was = "the run's input" if old.over is None else repr(old.over)
        changes.append(f"step {name!r} now maps over {source} (was {was})")
    if old.takes_input != new.takes_input:
        verb = "now takes" if new.takes_input else "no longer takes"
        changes.append(f"step {name!r} {verb} the run's input")
    if old.defaults != new.defaults:
        changes.append(
            f"step {name!r} has defaults for {_names(new.defaults)} (was {_names(old.defaults)})"
        )
    return changes


def definition_changes(stored: Any, current: Any) -> list[str]:
    """Each difference between the `stored` definition and `current`, from the point of view
    of `current` ("step 'c' added" means `current` has it and `stored` has not)."""
    old, new = _shapes(stored), _shapes(current)
    if old is None:
        return ["the run's definition is not readable (started before definitions were stored?)"]
    if new is None:
        return [f"the definition changed from {stored!r} to {current!r}"]
    changes: list[str] = []
    old_version = stored.get("version")
    new_version = current.get("version")
    if old_version != new_version:
        changes.append(f"now {_version(new_version)} (was {_version(old_version)})")
    if stored.get("kind") != current.get("kind"):
        changes.append(f"now a {current.get('kind')} (was a {stored.get('kind')})")
    changes += [f"{_describe_step(name, new[name])} added" for name in new if name not in old]
    changes += [f"step {name!r} removed" for name in old if name not in new]
    for name, shape in new.items():
        if name in old:
            changes += _step_changes(name, old[name], shape)
    if not changes and list(old) != list(new):
        changes.append(f"steps reordered from {_names(tuple(old))} to {_names(tuple(new))}")
    return changes


def describe_difference(stored: Any, current: Any) -> str:
    """`definition_changes` as one line, at most MAX_CHANGES spelled out."""
    changes = definition_changes(stored, current)
    if not changes:
        return "no difference in steps or dependencies"
    shown = changes[:MAX_CHANGES]
    if len(changes) > MAX_CHANGES:
        shown.append(f"and {len(changes) - MAX_CHANGES} more change(s)")
    return "; ".join(shown)
