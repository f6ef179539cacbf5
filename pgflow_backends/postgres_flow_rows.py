"""The settle's row operations on PostgreSQL: each one statement for the whole batch.

Arrays go in through unnest (one bind parameter per column), so completing fifty tasks of
fifty runs costs the same round trips as completing one. Run with exec_driver_sql
(psycopg placeholders). The step rows touched belong to runs whose rows the transaction
has locked first, so the order in which an UPDATE ... FROM visits them cannot deadlock.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pgflow.graph.ready import Settled
from pgflow.records import StepStatus, TaskCompletion
from pgflow_backends.sql.flow_rows import FlowRows, StepKey, TaskResult

__all__ = ["PostgresFlowRows"]

_COMPLETE_TASKS = """
    UPDATE pgflow_jobs AS j
    SET state = 'completed', completed_at = now(),
        unique_key = CASE WHEN j.unique_release THEN NULL ELSE j.unique_key END
    FROM unnest(CAST(%(ids)s AS BIGINT[]), CAST(%(attempts)s AS INTEGER[]),
                CAST(%(claimed)s AS TIMESTAMPTZ[]), CAST(%(runs)s AS TEXT[]),
                CAST(%(steps)s AS TEXT[]), CAST(%(indexes)s AS INTEGER[]))
         AS v(id, attempt, claimed_at, workflow_id, step, task_index)
    WHERE j.id = v.id AND j.attempt = v.attempt AND (j.state = 'executing') IS TRUE
      AND (v.claimed_at IS NULL OR j.attempted_at = v.claimed_at)
      AND j.workflow_id = v.workflow_id AND j.step = v.step AND j.task_index = v.task_index
    RETURNING j.id, j.attempt
"""

_SETTLE_SINGLES = """
    UPDATE pgflow_step_states AS s
    SET tasks_done = 1, attempts = GREATEST(s.attempts, v.attempt), state = v.state,
        output = CAST(v.output AS JSONB), skip_reason = v.reason, completed_at = now()
    FROM unnest(CAST(%(runs)s AS TEXT[]), CAST(%(steps)s AS TEXT[]),
                CAST(%(states)s AS TEXT[]), CAST(%(outputs)s AS TEXT[]),
                CAST(%(reasons)s AS TEXT[]), CAST(%(attempts)s AS INTEGER[]))
         AS v(workflow_id, step, state, output, reason, attempt)
    WHERE s.workflow_id = v.workflow_id AND s.step = v.step
      AND s.state = 'started' AND s.tasks_done = 0
    RETURNING s.workflow_id, s.step
"""

_STORE_OUTPUTS = """
    INSERT INTO pgflow_task_outputs (workflow_id, step, task_index, output)
    SELECT v.workflow_id, v.step, v.task_index, CAST(v.output AS JSONB)
    FROM unnest(CAST(%(runs)s AS TEXT[]), CAST(%(steps)s AS TEXT[]),
                CAST(%(indexes)s AS INTEGER[]), CAST(%(outputs)s AS TEXT[]))
         AS v(workflow_id, step, task_index, output)
    ON CONFLICT DO NOTHING
    RETURNING workflow_id, step, task_index
"""

_COUNT_TASKS = """
    UPDATE pgflow_step_states AS s
    SET tasks_done = s.tasks_done + v.n, attempts = GREATEST(s.attempts, v.attempt)
    FROM unnest(CAST(%(runs)s AS TEXT[]), CAST(%(steps)s AS TEXT[]),
                CAST(%(counts)s AS INTEGER[]), CAST(%(attempts)s AS INTEGER[]))
         AS v(workflow_id, step, n, attempt)
    WHERE s.workflow_id = v.workflow_id AND s.step = v.step AND s.state = 'started'
    RETURNING s.workflow_id, s.step, s.tasks_done, s.tasks_total
"""

_MAP_OUTPUTS = """
    SELECT o.workflow_id, o.step, o.output
    FROM unnest(CAST(%(runs)s AS TEXT[]), CAST(%(steps)s AS TEXT[])) AS v(workflow_id, step)
    JOIN pgflow_task_outputs AS o ON o.workflow_id = v.workflow_id AND o.step = v.step
    ORDER BY o.workflow_id, o.step, o.task_index
"""

_RELEASE = """
    UPDATE pgflow_step_states AS s
    SET remaining_deps = s.remaining_deps - v.n
    FROM unnest(CAST(%(runs)s AS TEXT[]), CAST(%(steps)s AS TEXT[]),
                CAST(%(counts)s AS INTEGER[])) AS v(workflow_id, step, n)
    WHERE s.workflow_id = v.workflow_id AND s.step = v.step
    RETURNING s.workflow_id, s.step, s.remaining_deps
"""

_SETTLED = """
    SELECT s.workflow_id, s.step, s.state, s.output
    FROM unnest(CAST(%(runs)s AS TEXT[]), CAST(%(steps)s AS TEXT[])) AS v(workflow_id, step)
    JOIN pgflow_step_states AS s ON s.workflow_id = v.workflow_id AND s.step = v.step
"""

_INPUTS = """
    SELECT workflow_id, input FROM pgflow_runs WHERE workflow_id = ANY(CAST(%(runs)s AS TEXT[]))
"""

_START_STEPS = """
    UPDATE pgflow_step_states AS s
    SET state = 'started', started_at = now(), tasks_total = v.total
    FROM unnest(CAST(%(runs)s AS TEXT[]), CAST(%(steps)s AS TEXT[]),
                CAST(%(totals)s AS INTEGER[])) AS v(workflow_id, step, total)
    WHERE s.workflow_id = v.workflow_id AND s.step = v.step
"""

_COMPLETE_STEPS = """
    UPDATE pgflow_step_states AS s
    SET state = 'completed', output = CAST(v.output AS JSONB),
        tasks_total = COALESCE(s.tasks_total, 0), started_at = COALESCE(s.started_at, now()),
        completed_at = now()
    FROM unnest(CAST(%(runs)s AS TEXT[]), CAST(%(steps)s AS TEXT[]),
                CAST(%(outputs)s AS TEXT[])) AS v(workflow_id, step, output)
    WHERE s.workflow_id = v.workflow_id AND s.step = v.step
"""

_SKIP_STEPS = """
    UPDATE pgflow_step_states AS s
    SET state = 'skipped', skip_reason = v.reason, completed_at = now()
    FROM unnest(CAST(%(runs)s AS TEXT[]), CAST(%(steps)s AS TEXT[]),
                CAST(%(reasons)s AS TEXT[])) AS v(workflow_id, step, reason)
    WHERE s.workflow_id = v.workflow_id AND s.step = v.step
"""

_COUNT_OFF = """
    UPDATE pgflow_runs AS r
    SET remaining_steps = r.remaining_steps - v.n
    FROM unnest(CAST(%(runs)s AS TEXT[]), CAST(%(counts)s AS INTEGER[])) AS v(workflow_id, n)
    WHERE r.workflow_id = v.workflow_id
    RETURNING r.workflow_id, r.remaining_steps
"""

_COMPLETE_RUNS = """
    UPDATE pgflow_runs AS r
    SET state = 'completed', output = CAST(v.output AS JSONB), finished_at = now()
    FROM unnest(CAST(%(runs)s AS TEXT[]), CAST(%(outputs)s AS TEXT[])) AS v(workflow_id, output)
    WHERE r.workflow_id = v.workflow_id AND r.state = 'running'
"""


class PostgresFlowRows(FlowRows):
    """FlowRows with one unnest statement per operation."""

    @property
    def _driver(self) -> Any:
        """The psycopg connection under the SQLAlchemy one (same transaction): these
        statements carry their own SQL and parameters, so SQLAlchemy's per-call work
        (events, result wrapping) is skipped."""
        return self.c.connection.driver_connection

    def _run(self, sql: str, params: Mapping[str, Any]) -> Sequence[Any]:
        rows: Sequence[Any] = self._driver.execute(sql, params).fetchall()
        return rows

    def _do(self, sql: str, params: Mapping[str, Any]) -> None:
        self._driver.execute(sql, params)

    def complete_jobs(
        self, completions: Sequence[TaskCompletion], tokens: Sequence[Any]
    ) -> list[TaskResult]:
        if not completions:
            return []
        rows = self._run(
            _COMPLETE_TASKS,
            {
                "ids": [c.ref.id for c in completions],
                "attempts": [c.ref.attempt for c in completions],
                "claimed": list(tokens),
                "runs": [c.task.workflow_id for c in completions],
                "steps": [c.task.step for c in completions],
                "indexes": [c.task.index for c in completions],
            },
        )
        attempts = {int(job_id): int(attempt) for job_id, attempt in rows}
        results: list[TaskResult] = []
        for completion in completions:
            attempt = attempts.pop(completion.ref.id, None)  # a repeated job counts once
            if attempt is not None:
                results.append(TaskResult(completion, attempt))
        return results

    def settle_singles(self, results: Sequence[TaskResult]) -> set[StepKey]:
        if not results:
            return set()
        completions = [r.completion for r in results]
        rows = self._run(
            _SETTLE_SINGLES,
            {
                "runs": [c.task.workflow_id for c in completions],
                "steps": [c.task.step for c in completions],
                "states": ["completed" if c.skipped is None else "skipped" for c in completions],
                "outputs": [c.output if c.skipped is None else None for c in completions],
                "reasons": [c.skipped for c in completions],
                "attempts": [r.attempt for r in results],
            },
        )
        return {(str(w), str(s)) for w, s in rows}

    def store_outputs(self, results: Sequence[TaskResult]) -> list[TaskResult]:
        if not results:
            return []
        tasks = [r.completion.task for r in results]
        rows = self._run(
            _STORE_OUTPUTS,
            {
                "runs": [t.workflow_id for t in tasks],
                "steps": [t.step for t in tasks],
                "indexes": [t.index for t in tasks],
                "outputs": [r.completion.output for r in results],
            },
        )
        stored = {(str(w), str(s), int(i)) for w, s, i in rows}
        kept: list[TaskResult] = []
        for result in results:
            task = result.completion.task
            key = (task.workflow_id, task.step, task.index)
            if key in stored:
                stored.discard(key)  # a repeated task in the batch counts once
                kept.append(result)
        return kept

    def count_tasks(self, counts: Mapping[StepKey, tuple[int, int]]) -> dict[StepKey, bool]:
        if not counts:
            return {}
        keys = list(counts)
        rows = self._run(
            _COUNT_TASKS,
            {
                "runs": [w for w, _ in keys],
                "steps": [s for _, s in keys],
                "counts": [counts[k][0] for k in keys],
                "attempts": [counts[k][1] for k in keys],
            },
        )
        return {(str(w), str(s)): total is not None and done >= total for w, s, done, total in rows}

    def map_outputs(self, keys: Iterable[StepKey]) -> dict[StepKey, list[Any]]:
        wanted = list(keys)
        found: dict[StepKey, list[Any]] = {key: [] for key in wanted}
        if wanted:
            params = {"runs": [w for w, _ in wanted], "steps": [s for _, s in wanted]}
            for workflow_id, step, output in self._run(_MAP_OUTPUTS, params):
                found[(workflow_id, step)].append(output)
        return found

    def release(self, counts: Mapping[StepKey, int]) -> list[StepKey]:
        if not counts:
            return []
        keys = list(counts)
        rows = self._run(
            _RELEASE,
            {
                "runs": [w for w, _ in keys],
                "steps": [s for _, s in keys],
                "counts": [counts[k] for k in keys],
            },
        )
        return [(str(w), str(s)) for w, s, remaining in rows if remaining == 0]

    def settled(self, keys: Iterable[StepKey]) -> dict[StepKey, Settled]:
        wanted = list(keys)
        if not wanted:
            return {}
        params = {"runs": [w for w, _ in wanted], "steps": [s for _, s in wanted]}
        return {
            (str(w), str(s)): Settled(StepStatus(state), output)
            for w, s, state, output in self._run(_SETTLED, params)
        }

    def inputs(self, workflow_ids: Iterable[str]) -> dict[str, Any]:
        wanted = list(workflow_ids)
        if not wanted:
            return {}
        return {str(w): value for w, value in self._run(_INPUTS, {"runs": wanted})}

    def start_steps(self, rows: Sequence[tuple[str, str, int]]) -> None:
        if rows:
            self._do(
                _START_STEPS,
                {
                    "runs": [w for w, _, _ in rows],
                    "steps": [s for _, s, _ in rows],
                    "totals": [n for _, _, n in rows],
                },
            )

    def complete_steps(self, rows: Sequence[tuple[str, str, str]]) -> None:
        if rows:
            self._do(
                _COMPLETE_STEPS,
                {
                    "runs": [w for w, _, _ in rows],
                    "steps": [s for _, s, _ in rows],
                    "outputs": [o for _, _, o in rows],
                },
            )

    def skip_steps(self, rows: Sequence[tuple[str, str, str]]) -> None:
        if rows:
            self._do(
                _SKIP_STEPS,
                {
                    "runs": [w for w, _, _ in rows],
                    "steps": [s for _, s, _ in rows],
                    "reasons": [r for _, _, r in rows],
                },
            )

    def count_off(self, counts: Mapping[str, int]) -> dict[str, int]:
        if not counts:
            return {}
        keys = list(counts)
        rows = self._run(_COUNT_OFF, {"runs": keys, "counts": [counts[k] for k in keys]})
        return {str(w): int(left) for w, left in rows}

    def complete_runs(self, rows: Sequence[tuple[str, str]]) -> None:
        if rows:
            self._do(
                _COMPLETE_RUNS,
                {"runs": [w for w, _ in rows], "outputs": [o for _, o in rows]},
            )
