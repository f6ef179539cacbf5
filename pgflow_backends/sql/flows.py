"""Settling distributed flow runs inside one SQL transaction (the SQL half of FlowStore).

A `FlowSettler` lives for one transaction. Every decision comes from `pgflow.graph.ready`;
this module only reads and writes rows, in an order that cannot deadlock: a run's row is
locked (FOR NO KEY UPDATE, ascending workflow_id) before any of its step or job rows, by
every transaction that writes about the run's steps: completions, failures, cancels,
rescues and sweeps. SQLite serializes writers anyway, so the locks are no-ops there.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import attrs
from sqlalchemy import Connection

from pgflow.backend import RunStart
from pgflow.errors import BackendError, SerializationError
from pgflow.graph.ready import (
    Complete,
    Decision,
    Fail,
    Settled,
    Skip,
    Start,
    decide,
    plan_fingerprint,
    run_output,
    task_jobs,
    unknown_step_error,
)
from pgflow.graph.shape import FlowPlan, StepPlan
from pgflow.records import JobState, NewJob, StepStatus, TaskCompletion
from pgflow.serialization import dumps
from pgflow_backends.sql.flow_statements import FlowStatements
from pgflow_backends.sql.rows import decode_errors, run_from_row
from pgflow_backends.sql.statements import Statements

__all__ = ["FlowSettler", "LockedRun"]


@attrs.define
class LockedRun:
    """A run row as its lock found it, plus what this transaction learnt about it."""

    workflow_id: str
    state: str
    fingerprint: str | None
    max_attempts: int
    is_flow: bool
    #: Steps settled in this transaction, counted off `remaining_steps` once, at the end.
    settled: int = 0
    input: Any = None
    input_loaded: bool = False

    @property
    def live(self) -> bool:
        return self.state == "running" and self.is_flow


class FlowSettler:
    """One transaction's view of the flow runs it writes about.

    `insert_jobs` stores task jobs on the same connection (and wakes their queues at
    commit); `run_finished` tells waiters a run ended (PostgreSQL: NOTIFY, transactional).
    """

    def __init__(
        self,
        connection: Connection,
        flow_sql: FlowStatements,
        job_sql: Statements,
        *,
        insert_jobs: Callable[[list[NewJob]], None],
        run_finished: Callable[[str], None],
        limit: int | None,
        token: Callable[[Any], Any],
    ) -> None:
        self._c = connection
        self._f = flow_sql
        self._s = job_sql
        self._insert_jobs = insert_jobs
        self._run_finished = run_finished
        self._limit = limit
        self._token = token
        self._runs: dict[str, LockedRun] = {}

    # -- locks -----------------------------------------------------------------------------

    def lock(self, workflow_ids: Iterable[str]) -> dict[str, LockedRun]:
        """Lock these runs' rows (ascending id), once per transaction; unknown ids skipped."""
        wanted = sorted({w for w in workflow_ids if w not in self._runs})
        if wanted:
            rows = self._c.execute(self._f.lock_runs, {"p_ids": wanted}).all()
            for workflow_id, state, fingerprint, remaining, max_attempts in rows:
                self._runs[workflow_id] = LockedRun(
                    workflow_id, state, fingerprint, max_attempts, remaining is not None
                )
        return self._runs

    def lock_task_runs(self, job_ids: Sequence[int]) -> None:
        """Before touching these jobs' rows: lock the runs they are tasks of (if any)."""
        if job_ids:
            found = self._c.execute(self._f.task_run_of, {"p_job_ids": list(job_ids)})
            self.lock(found.scalars())

    # -- starting --------------------------------------------------------------------------

    def start(
        self,
        plan: FlowPlan,
        *,
        workflow_id: str,
        encoded_input: str,
        input: Any,
        max_attempts: int,
        definition: str,
    ) -> RunStart:
        """Store the run and its step rows, then decide its roots (cascading)."""
        params = {
            "p_workflow_id": workflow_id,
            "p_workflow": plan.flow,
            "p_max_attempts": max_attempts,
            "p_input": encoded_input,
            "p_fingerprint": plan_fingerprint(plan),
            "p_definition": definition,
            "p_steps": len(plan.steps),
        }
        row = self._c.execute(self._f.insert_run, params).first()
        if row is None:
            existing = self._c.execute(self._f.run, params).one()
            return RunStart(run_from_row(existing), False)
        self._c.execute(
            self._f.insert_steps,
            [
                {
                    "p_workflow_id": workflow_id,
                    "p_step": step.name,
                    "p_index": step.index,
                    "p_kind": step.kind,
                    "p_deps": len(step.deps),
                }
                for step in plan.steps
            ],
        )
        run = LockedRun(workflow_id, "running", plan_fingerprint(plan), max_attempts, True)
        run.input, run.input_loaded = input, True
        self._runs[workflow_id] = run
        self._cascade(run, plan, [step.index for step in plan.roots])
        self._count_off(run, plan)
        stored = self._c.execute(self._f.run, params).one()
        return RunStart(run_from_row(stored), True)

    # -- completing ------------------------------------------------------------------------

    def complete(
        self, completions: Sequence[TaskCompletion], plans: Mapping[str, FlowPlan]
    ) -> list[int]:
        """Complete the fenced-in task jobs and settle what they finish (see FlowStore)."""
        runs = self.lock(c.task.workflow_id for c in completions)
        counted: list[int] = []
        touched: dict[str, FlowPlan] = {}
        for completion in completions:
            task = completion.task
            done = self._c.execute(
                self._f.complete_task,
                {
                    "p_id": completion.ref.id,
                    "p_attempt": completion.ref.attempt,
                    "p_claimed_at": self._token(completion.ref),
                    "p_workflow_id": task.workflow_id,
                    "p_step": task.step,
                    "p_task_index": task.index,
                },
            ).first()
            run = runs.get(task.workflow_id)
            if done is None or run is None or not run.live:
                continue
            plan = self._plan_of(run, plans)
            if not plan.has_step(task.step):  # a forged job: fail the run, naming it
                self._fail(run, None, None, unknown_step_error(plan, completion))
                continue
            step = plan.step(task.step)
            if self._count(run, plan, step, completion, attempt=done[0]):
                counted.append(completion.ref.id)
                touched[run.workflow_id] = plan
        for workflow_id, plan in touched.items():
            self._count_off(runs[workflow_id], plan)
        return sorted(counted)

    @staticmethod
    def _plan_of(run: LockedRun, plans: Mapping[str, FlowPlan]) -> FlowPlan:
        plan = plans.get(run.fingerprint or "")
        if plan is None:
            raise BackendError(
                f"complete_tasks: no plan given for run {run.workflow_id!r} "
                f"(fingerprint {run.fingerprint!r}); nothing was written"
            )
        return plan

    def _count(
        self,
        run: LockedRun,
        plan: FlowPlan,
        step: StepPlan,
        completion: TaskCompletion,
        *,
        attempt: int,
    ) -> bool:
        """Count one task of `step`; settle the step when it was the last. False when the
        task had been counted already (or its step is no longer started)."""
        key = {"p_workflow_id": run.workflow_id, "p_step": step.name, "p_attempt": attempt}
        if not step.is_map:
            skipped = completion.skipped is not None
            settled = self._c.execute(
                self._f.settle_single,
                dict(
                    key,
                    p_state="skipped" if skipped else "completed",
                    p_output=None if skipped else completion.output,
                    p_reason=completion.skipped,
                ),
            ).first()
            if settled is None:
                return False
            self._after_settle(run, plan, step)
            return True
        stored = self._c.execute(
            self._f.insert_output,
            dict(key, p_task_index=completion.task.index, p_output=completion.output),
        ).first()
        if stored is None:
            return False
        progress = self._c.execute(self._f.count_task, key).first()
        if progress is None:
            return False
        done, total = progress
        if total is not None and done >= total:
            self._settle_map(run, plan, step)
        return True

    def _settle_map(self, run: LockedRun, plan: FlowPlan, step: StepPlan) -> None:
        """Every element is done: the step's output is their list, in index order."""
        key = {"p_workflow_id": run.workflow_id, "p_step": step.name}
        values = list(self._c.execute(self._f.map_outputs, key).scalars())
        try:
            text = dumps(values, what="output", limit=self._limit, owner=f"map step {step.name!r}")
        except SerializationError as exc:
            error = {"kind": "SerializationError", "message": str(exc), "step": step.name}
            error["traceback"] = ""
            self._fail(run, step.name, error, error)
            return
        self._c.execute(self._f.complete_step, dict(key, p_output=text))
        self._after_settle(run, plan, step)

    # -- deciding --------------------------------------------------------------------------

    def _after_settle(self, run: LockedRun, plan: FlowPlan, step: StepPlan) -> None:
        run.settled += 1
        ready = self._release(run, step)
        self._cascade(run, plan, [plan.step(name).index for name in ready])

    def _release(self, run: LockedRun, step: StepPlan) -> list[str]:
        """`step` settled: count it off its dependents; return those now ready."""
        if not step.dependents:
            return []
        rows = self._c.execute(
            self._f.release,
            {"p_workflow_id": run.workflow_id, "p_steps": list(step.dependents)},
        ).all()
        return [name for name, remaining in rows if remaining == 0]

    def _cascade(self, run: LockedRun, plan: FlowPlan, ready: list[int]) -> None:
        """Decide ready steps in topological order until nothing more settles at once."""
        heap = list(ready)
        heapq.heapify(heap)
        while heap and run.live:
            step = plan.steps[heapq.heappop(heap)]
            deps = self._settled(run, step.deps)
            needs_input = not step.deps or step.takes_input or (step.is_map and step.over is None)
            decision = decide(plan, step, deps, self._input(run) if needs_input else None)
            for name in self._apply(run, plan, step, decision):
                heapq.heappush(heap, plan.step(name).index)

    def _settled(self, run: LockedRun, names: Sequence[str]) -> dict[str, Settled]:
        if not names:
            return {}
        rows = self._c.execute(
            self._f.settled, {"p_workflow_id": run.workflow_id, "p_steps": list(names)}
        ).all()
        return {name: Settled(StepStatus(state), output) for name, state, output in rows}

    def _input(self, run: LockedRun) -> Any:
        if not run.input_loaded:
            params = {"p_workflow_id": run.workflow_id}
            run.input = self._c.execute(self._f.run_input, params).scalar_one()
            run.input_loaded = True
        return run.input

    def _apply(
        self, run: LockedRun, plan: FlowPlan, step: StepPlan, decision: Decision
    ) -> list[str]:
        """Carry out one decision; return the dependents it made ready."""
        key = {"p_workflow_id": run.workflow_id, "p_step": step.name}
        if isinstance(decision, Start):
            new = task_jobs(
                plan, step, run.workflow_id, decision.arguments, max_attempts=run.max_attempts
            )
            self._insert_jobs(new)
            self._c.execute(self._f.start_step, dict(key, p_total=len(new)))
            return []
        if isinstance(decision, Fail):
            self._fail(run, step.name, decision.error, decision.error)
            return []
        if isinstance(decision, Complete):
            output = dumps(decision.output, what="output")
            self._c.execute(self._f.complete_step, dict(key, p_output=output))
        elif isinstance(decision, Skip):
            self._c.execute(self._f.skip_step, dict(key, p_reason=decision.reason))
        run.settled += 1
        return self._release(run, step)

    def _count_off(self, run: LockedRun, plan: FlowPlan) -> None:
        """Subtract this transaction's settled steps; at 0 the run completes."""
        if not run.live or run.settled == 0:
            return
        params = {"p_workflow_id": run.workflow_id, "p_count": run.settled}
        remaining = self._c.execute(self._f.count_off, params).scalar_one()
        run.settled = 0
        if remaining > 0:
            return
        leaves = self._settled(run, plan.leaves)
        output = dumps(run_output(plan, leaves), what="output")
        self._c.execute(
            self._f.complete_run, {"p_workflow_id": run.workflow_id, "p_output": output}
        )
        run.state = "completed"
        self._run_finished(run.workflow_id)

    # -- failing ---------------------------------------------------------------------------

    def job_ended(self, job_id: int) -> None:
        """A job just changed state: if it is a task of a live run and ended discarded or
        cancelled, its step fails (with the job's last error) and so does its run. The run
        should have been locked first (lock_task_runs), before the job's row."""
        row = self._c.execute(self._s.job, {"p_id": job_id}).first()
        if row is None or row.workflow_id is None:
            return
        state = JobState(row.state)
        if state not in (JobState.DISCARDED, JobState.CANCELLED):
            return
        run = self.lock([row.workflow_id]).get(row.workflow_id)
        if run is None or not run.live:
            return
        step = str(row.step)
        errors = decode_errors(row.errors)
        last = errors[-1] if errors and isinstance(errors[-1], dict) else None
        if last is None:
            last = {"kind": "cancelled", "message": f"task job {job_id} was cancelled"}
        error = {
            "kind": str(last.get("kind", "error")),
            "message": (
                f"step {step!r} failed (job {job_id} {state.value}): {last.get('message', '')}"
            ),
            "step": step,
            "traceback": str(last.get("traceback", "")),
        }
        self._fail(run, step, last, error, attempt=int(row.attempt))

    def fail_run(self, workflow_id: str, error: dict[str, Any]) -> bool:
        """Fail a live run from outside: the sweep without a culprit step."""
        run = self.lock([workflow_id]).get(workflow_id)
        if run is None or not run.live:
            return False
        self._fail(run, None, None, error)
        return True

    def _fail(
        self,
        run: LockedRun,
        culprit: str | None,
        step_error: dict[str, Any] | None,
        run_error: dict[str, Any],
        *,
        attempt: int = 0,
    ) -> None:
        """Fail the run: the culprit step failed, live steps cancelled, its jobs stopped."""
        key = {"p_workflow_id": run.workflow_id}
        if culprit is not None:
            text = dumps(step_error, what="error")
            params = dict(key, p_step=culprit, p_error=text, p_attempt=attempt)
            self._c.execute(self._f.fail_step, params)
        self._c.execute(self._f.cancel_steps, key)
        self._c.execute(self._f.cancel_jobs, key)
        for job_id, meta in self._c.execute(self._f.executing_jobs, key).all():
            current = meta if isinstance(meta, dict) else {}
            if current.get("cancel_requested"):
                continue
            flagged = dumps({**current, "cancel_requested": True}, what="meta")
            self._c.execute(self._s.flag_cancel, {"p_id": job_id, "p_meta": flagged})
        self._c.execute(self._f.fail_run, dict(key, p_error=dumps(run_error, what="error")))
        run.state = "failed"
        self._run_finished(run.workflow_id)
