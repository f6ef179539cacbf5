"""What a run's page says besides its graph: the timeline of its steps, and whether this
dashboard can resume or restart it (it needs the definition the run was started with)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import attrs

from pgflow.records import RunRecord, StepRecord

__all__ = ["TimelineEntry", "definition_problem", "timeline"]


@attrs.frozen
class TimelineEntry:
    """One line of a run's timeline: a step (or one attempt of an in-process step)."""

    step: str
    state: str
    started_at: datetime | None
    finished_at: datetime | None
    attempts: int = 0
    detail: str = ""


def timeline(run: RunRecord, records: Sequence[StepRecord]) -> list[TimelineEntry]:
    """Steps in the order they started (those not started last, in definition order)."""
    entries: list[TimelineEntry] = []
    if run.steps:
        for state in run.steps.values():
            detail = ""
            if state.tasks_total is not None and state.kind == "map":
                detail = f"{state.tasks_done}/{state.tasks_total} elements"
            elif state.skip_reason:
                detail = state.skip_reason
            elif state.error:
                detail = f"{state.error.get('kind', 'error')}: {state.error.get('message', '')}"
            entries.append(
                TimelineEntry(
                    state.step,
                    state.state.value,
                    state.started_at,
                    state.completed_at,
                    state.attempts,
                    detail,
                )
            )
    else:
        for record in records:
            finished = datetime.fromtimestamp(
                record.started_at.timestamp() + record.duration, record.started_at.tzinfo
            )
            detail = ""
            if record.error:
                detail = f"{record.error.get('kind', 'error')}: {record.error.get('message', '')}"
            name = record.step if record.element is None else f"{record.step}[{record.element}]"
            entries.append(
                TimelineEntry(
                    name, record.outcome.value, record.started_at, finished, record.attempt, detail
                )
            )
    started = sorted(
        (entry for entry in entries if entry.started_at is not None),
        key=lambda entry: entry.started_at or run.started_at,
    )
    return started + [entry for entry in entries if entry.started_at is None]


def definition_problem(run: RunRecord) -> str | None:
    """Why this process cannot resume or restart `run`, or None when it can."""
    from pgflow.graph.registry import flows

    if run.fingerprint is None or not run.steps:
        return "an in-process run (pgflow.execute): only runs started with start_run can be steered"
    if flows.find(run.workflow, run.fingerprint) is None:
        return (
            f"the dashboard does not know the definition of flow {run.workflow!r} this run was "
            "started with: start it with --import MODULE (or create_app(imports=...)) naming "
            "the module that defines the flow"
        )
    return None
