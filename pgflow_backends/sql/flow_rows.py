"""The row operations a settle is made of, each over a whole batch of rows.

`FlowSettler` decides; a `FlowRows` reads and writes. `CoreFlowRows` runs the portable Core
statements once per row (SQLite: in-process, so a statement costs microseconds);
PostgreSQL replaces the hot ones with one statement per batch (see postgres_flow_rows).
Keys are (workflow_id, step) pairs; output texts are JSON already checked by the caller.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs
from sqlalchemy import Connection

from pgflow.graph.ready import Settled
from pgflow.records import StepStatus, TaskCompletion
from pgflow_backends.sql.flow_statements import FlowStatements

__all__ = ["CoreFlowRows", "FlowRows", "StepKey", "TaskResult"]

StepKey = tuple[str, str]


@attrs.frozen
class TaskResult:
    """A fenced-in completion: which task, at which attempt, and what it produced."""

    completion: TaskCompletion
    attempt: int

    @property
    def key(self) -> StepKey:
        return (self.completion.task.workflow_id, self.completion.task.step)


class FlowRows:
    """Batched row operations over one connection (the portable implementation's API)."""

    def __init__(self, connection: Connection, statements: FlowStatements) -> None:
        self.c = connection
        self.f = statements

    def complete_jobs(
        self, completions: Sequence[TaskCompletion], tokens: Sequence[Any]
    ) -> list[TaskResult]:
        """Complete the task jobs whose fence holds (and whose task matches)."""
        raise NotImplementedError

    def settle_singles(self, results: Sequence[TaskResult]) -> set[StepKey]:
        """Single-task steps: completed (or skipped) with their task, counted once."""
        raise NotImplementedError

    def store_outputs(self, results: Sequence[TaskResult]) -> list[TaskResult]:
        """Map elements: store each output once; return those stored now."""
        raise NotImplementedError

    def count_tasks(self, counts: Mapping[StepKey, tuple[int, int]]) -> dict[StepKey, bool]:
        """Add (tasks, highest attempt) to started map steps; True where all are done."""
        raise NotImplementedError

    def map_outputs(self, keys: Iterable[StepKey]) -> dict[StepKey, list[Any]]:
        raise NotImplementedError

    def release(self, counts: Mapping[StepKey, int]) -> list[StepKey]:
        """Count settled dependencies off their dependents; return those now ready."""
        raise NotImplementedError

    def settled(self, keys: Iterable[StepKey]) -> dict[StepKey, Settled]:
        raise NotImplementedError

    def inputs(self, workflow_ids: Iterable[str]) -> dict[str, Any]:
        raise NotImplementedError

    def start_steps(self, rows: Sequence[tuple[str, str, int]]) -> None:
        raise NotImplementedError

    def complete_steps(self, rows: Sequence[tuple[str, str, str]]) -> None:
        raise NotImplementedError

    def skip_steps(self, rows: Sequence[tuple[str, str, str]]) -> None:
        raise NotImplementedError

    def count_off(self, counts: Mapping[str, int]) -> dict[str, int]:
        """Subtract settled steps from runs; return each run's remaining count."""
        raise NotImplementedError

    def complete_runs(self, rows: Sequence[tuple[str, str]]) -> None:
        raise NotImplementedError


class CoreFlowRows(FlowRows):
    """One portable Core statement per row (executemany where nothing comes back)."""

    def complete_jobs(
        self, completions: Sequence[TaskCompletion], tokens: Sequence[Any]
    ) -> list[TaskResult]:
        results: list[TaskResult] = []
        for completion, token in zip(completions, tokens, strict=True):
            task = completion.task
            row = self.c.execute(
                self.f.complete_task,
                {
                    "p_id": completion.ref.id,
                    "p_attempt": completion.ref.attempt,
                    "p_claimed_at": token,
                    "p_workflow_id": task.workflow_id,
                    "p_step": task.step,
                    "p_task_index": task.index,
                },
            ).first()
            if row is not None:
                results.append(TaskResult(completion, int(row[0])))
        return results

    def settle_singles(self, results: Sequence[TaskResult]) -> set[StepKey]:
        settled: set[StepKey] = set()
        for result in results:
            completion = result.completion
            skipped = completion.skipped is not None
            row = self.c.execute(
                self.f.settle_single,
                {
                    "p_workflow_id": completion.task.workflow_id,
                    "p_step": completion.task.step,
                    "p_attempt": result.attempt,
                    "p_state": "skipped" if skipped else "completed",
                    "p_output": None if skipped else completion.output,
                    "p_reason": completion.skipped,
                },
            ).first()
            if row is not None:
                settled.add(result.key)
        return settled

    def store_outputs(self, results: Sequence[TaskResult]) -> list[TaskResult]:
        stored: list[TaskResult] = []
        for result in results:
            task = result.completion.task
            row = self.c.execute(
                self.f.insert_output,
                {
                    "p_workflow_id": task.workflow_id,
                    "p_step": task.step,
                    "p_task_index": task.index,
                    "p_output": result.completion.output,
                },
            ).first()
            if row is not None:
                stored.append(result)
        return stored

    def count_tasks(self, counts: Mapping[StepKey, tuple[int, int]]) -> dict[StepKey, bool]:
        progress: dict[StepKey, bool] = {}
        for (workflow_id, step), (count, attempt) in counts.items():
            row = self.c.execute(
                self.f.count_tasks,
                {
                    "p_workflow_id": workflow_id,
                    "p_step": step,
                    "p_count": count,
                    "p_attempt": attempt,
                },
            ).first()
            if row is not None:
                done, total = row
                progress[(workflow_id, step)] = total is not None and done >= total
        return progress

    def map_outputs(self, keys: Iterable[StepKey]) -> dict[StepKey, list[Any]]:
        return {
            (workflow_id, step): list(
                self.c.execute(
                    self.f.map_outputs, {"p_workflow_id": workflow_id, "p_step": step}
                ).scalars()
            )
            for workflow_id, step in keys
        }

    def release(self, counts: Mapping[StepKey, int]) -> list[StepKey]:
        ready: list[StepKey] = []
        for (workflow_id, step), count in counts.items():
            row = self.c.execute(
                self.f.release,
                {"p_workflow_id": workflow_id, "p_step": step, "p_count": count},
            ).first()
            if row is not None and row[0] == 0:
                ready.append((workflow_id, step))
        return ready

    def settled(self, keys: Iterable[StepKey]) -> dict[StepKey, Settled]:
        by_run: dict[str, list[str]] = {}
        for workflow_id, step in keys:
            by_run.setdefault(workflow_id, []).append(step)
        found: dict[StepKey, Settled] = {}
        for workflow_id, names in by_run.items():
            rows = self.c.execute(
                self.f.settled, {"p_workflow_id": workflow_id, "p_steps": names}
            ).all()
            for name, state, output in rows:
                found[(workflow_id, name)] = Settled(StepStatus(state), output)
        return found

    def inputs(self, workflow_ids: Iterable[str]) -> dict[str, Any]:
        return {
            workflow_id: self.c.execute(
                self.f.run_input, {"p_workflow_id": workflow_id}
            ).scalar_one()
            for workflow_id in workflow_ids
        }

    def start_steps(self, rows: Sequence[tuple[str, str, int]]) -> None:
        if rows:
            self.c.execute(
                self.f.start_step,
                [{"p_workflow_id": w, "p_step": s, "p_total": n} for w, s, n in rows],
            )

    def complete_steps(self, rows: Sequence[tuple[str, str, str]]) -> None:
        if rows:
            self.c.execute(
                self.f.complete_step,
                [{"p_workflow_id": w, "p_step": s, "p_output": o} for w, s, o in rows],
            )

    def skip_steps(self, rows: Sequence[tuple[str, str, str]]) -> None:
        if rows:
            self.c.execute(
                self.f.skip_step,
                [{"p_workflow_id": w, "p_step": s, "p_reason": r} for w, s, r in rows],
            )

    def count_off(self, counts: Mapping[str, int]) -> dict[str, int]:
        return {
            workflow_id: int(
                self.c.execute(
                    self.f.count_off, {"p_workflow_id": workflow_id, "p_count": count}
                ).scalar_one()
            )
            for workflow_id, count in counts.items()
        }

    def complete_runs(self, rows: Sequence[tuple[str, str]]) -> None:
        if rows:
            self.c.execute(
                self.f.complete_run, [{"p_workflow_id": w, "p_output": o} for w, o in rows]
            )
