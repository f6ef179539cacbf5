"""The in-memory run store: workflow runs and their step attempts, fenced by attempt.

Not thread-safe on its own; InMemoryBackend holds its lock around every call. Values are kept
as JSON text, so what a test reads back is exactly what a SQL backend would return.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import attrs

from pgflow.backend import RunStart
from pgflow.records import RunRecord, RunState, StepOutcome, StepRecord
from pgflow.serialization import dumps, loads


@attrs.define
class _Run:
    workflow_id: str
    workflow: str
    state: RunState
    attempt: int
    max_attempts: int
    input: str
    started_at: datetime
    job_id: int | None
    fingerprint: str | None = None
    definition: str | None = None
    output: str | None = None
    error: str | None = None
    finished_at: datetime | None = None
    parent_id: str | None = None
    parent_step: str | None = None
    restart_of: str | None = None
    deadline_at: datetime | None = None

    def to_record(self) -> RunRecord:
        return RunRecord(
            workflow_id=self.workflow_id,
            workflow=self.workflow,
            state=self.state,
            attempt=self.attempt,
            max_attempts=self.max_attempts,
            input=loads(self.input),
            started_at=self.started_at,
            output=loads(self.output),
            error=loads(self.error),
            finished_at=self.finished_at,
            job_id=self.job_id,
            fingerprint=self.fingerprint,
            definition=loads(self.definition),
            parent_id=self.parent_id,
            parent_step=self.parent_step,
            restart_of=self.restart_of,
            deadline_at=self.deadline_at,
        )


@attrs.define
class _Step:
    workflow_id: str
    step: str
    index: int
    attempt: int
    outcome: StepOutcome
    started_at: datetime
    duration: float
    output: str | None
    error: str | None
    element: int | None = None

    def to_record(self) -> StepRecord:
        return StepRecord(
            workflow_id=self.workflow_id,
            step=self.step,
            index=self.index,
            attempt=self.attempt,
            outcome=self.outcome,
            started_at=self.started_at,
            duration=self.duration,
            output=loads(self.output),
            error=loads(self.error),
            element=self.element,
        )


class RunTable:
    """Runs by workflow_id (in start order) and each run's steps (in record order)."""

    def __init__(self) -> None:
        self._runs: dict[str, _Run] = {}
        self._steps: dict[str, list[_Step]] = {}
        self._last_definition: tuple[object, str | None] = (None, None)

    def encode_definition(self, definition: Any) -> str | None:
        """The definition's JSON text. A workflow makes its definition once and hands the
        same object to each of its runs, so the last one is remembered by identity (safe
        without the lock: one tuple is read or replaced at a time)."""
        seen, text = self._last_definition
        if definition is None or seen is not definition:
            text = None if definition is None else dumps(definition, what="definition")
            self._last_definition = (definition, text)
        return text

    def start(
        self,
        *,
        workflow_id: str,
        workflow: str,
        input: str,
        max_attempts: int,
        job_id: int | None,
        fingerprint: str | None,
        definition: str | None,
        now: datetime,
        parent_id: str | None = None,
        parent_step: str | None = None,
        restart_of: str | None = None,
        deadline_at: datetime | None = None,
    ) -> RunStart:
        run = self._runs.get(workflow_id)
        created = run is None
        if run is None:
            run = _Run(
                workflow_id=workflow_id,
                workflow=workflow,
                state=RunState.RUNNING,
                attempt=1,
                max_attempts=max_attempts,
                input=input,
                started_at=now,
                job_id=job_id,
                fingerprint=fingerprint,
                definition=definition,
                parent_id=parent_id,
                parent_step=parent_step,
                restart_of=restart_of,
                deadline_at=deadline_at,
            )
            self._runs[workflow_id] = run
            self._steps[workflow_id] = []
        return RunStart(run.to_record(), created)

    def start_attempt(self, workflow_id: str, attempt: int) -> bool:
        """Compare-and-set: only a running or failed run still at `attempt - 1` moves on."""
        run = self._runs.get(workflow_id)
        if (
            run is None
            or run.attempt != attempt - 1
            or run.state not in (RunState.RUNNING, RunState.FAILED)
        ):
            return False
        run.attempt = attempt
        run.state = RunState.RUNNING
        run.output = run.error = run.finished_at = None
        return True

    def reopen(self, workflow_id: str) -> None:
        """A resumed flow run is running again at its one attempt: its end is cleared."""
        run = self._runs[workflow_id]
        run.state = RunState.RUNNING
        run.output = run.error = run.finished_at = None

    def expired(self, now: datetime, limit: int) -> list[str]:
        """Running runs whose deadline has passed, earliest deadline first."""
        due = [
            run
            for run in self._runs.values()
            if run.state is RunState.RUNNING
            and run.deadline_at is not None
            and run.deadline_at <= now
        ]
        due.sort(key=lambda run: run.deadline_at or now)
        return [run.workflow_id for run in due[: max(limit, 0)]]

    def record_step(self, step: StepRecord, output: str | None, error: str | None) -> bool:
        if self._holding(step.workflow_id, step.attempt) is None:
            return False
        self._steps[step.workflow_id].append(
            _Step(
                workflow_id=step.workflow_id,
                step=step.step,
                index=step.index,
                attempt=step.attempt,
                outcome=StepOutcome(step.outcome),
                started_at=step.started_at,
                duration=step.duration,
                output=output,
                error=error,
                element=step.element,
            )
        )
        return True

    def finish(
        self,
        workflow_id: str,
        attempt: int,
        state: RunState,
        output: str | None,
        error: str | None,
        now: datetime,
    ) -> bool:
        run = self._holding(workflow_id, attempt)
        if run is None:
            return False
        run.state = state
        run.output = output
        run.error = error
        run.finished_at = now
        return True

    def get(self, workflow_id: str) -> RunRecord | None:
        run = self._runs.get(workflow_id)
        return None if run is None else run.to_record()

    def state(self, workflow_id: str) -> RunState | None:
        """The run's state alone (None when unknown): a read that decodes nothing."""
        run = self._runs.get(workflow_id)
        return None if run is None else run.state

    def steps(self, workflow_id: str) -> list[StepRecord]:
        return [step.to_record() for step in self._steps.get(workflow_id, ())]

    def select(
        self,
        workflow: str | None,
        state: RunState | None,
        limit: int | None,
        since: datetime | None = None,
    ) -> list[RunRecord]:
        """Matching runs, newest first (latest start, later insertion breaking ties)."""
        found: list[RunRecord] = []
        for run in sorted(reversed(self._runs.values()), key=_newest_first):
            if limit is not None and len(found) >= limit:
                break
            if (
                (workflow is None or run.workflow == workflow)
                and (state is None or run.state is RunState(state))
                and (since is None or run.started_at >= since)
            ):
                found.append(run.to_record())
        return found

    def prune(self, cutoff: datetime, limit: int) -> int:
        """Delete up to `limit` finished runs (with their steps) that finished before cutoff."""
        doomed = [
            run.workflow_id
            for run in self._runs.values()
            if run.state is not RunState.RUNNING
            and run.finished_at is not None
            and run.finished_at < cutoff
        ][: max(limit, 0)]
        for workflow_id in doomed:
            del self._runs[workflow_id]
            del self._steps[workflow_id]
        return len(doomed)

    def _holding(self, workflow_id: str, attempt: int) -> _Run | None:
        """The run if it is still running `attempt`; a later attempt or a finish fences out."""
        run = self._runs.get(workflow_id)
        if run is None or run.attempt != attempt or run.state is not RunState.RUNNING:
            return None
        return run


def _newest_first(run: _Run) -> float:
    return -run.started_at.timestamp()
