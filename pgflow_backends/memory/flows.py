"""The in-memory flow store: step states, task outputs, and the settling of distributed runs.

Not thread-safe on its own: InMemoryBackend holds its one lock around every call, so each
start, completion or failure is settled whole, like the SQL backends' single transaction.
Every decision comes from `pgflow.graph.ready`; this module only stores and sequences them.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import attrs

from pgflow.errors import SerializationError
from pgflow.graph.ready import (
    Complete,
    Decision,
    Fail,
    Settled,
    Skip,
    Start,
    cancelled_error,
    check_cancellable,
    decide,
    plan_fingerprint,
    run_output,
    task_jobs,
    unknown_step_error,
)
from pgflow.graph.shape import FlowPlan, StepPlan
from pgflow.records import JobState, RunState, StepState, StepStatus, TaskCompletion
from pgflow.serialization import dumps, loads
from pgflow_backends.memory.jobs import JobTable
from pgflow_backends.memory.runs import RunTable

#: The attempt every distributed run stays at: retries happen per task, not per run.
FLOW_ATTEMPT = 1


@attrs.define
class _StepRow:
    """One row of step state; output and error kept as JSON text like the SQL column."""

    name: str
    remaining_deps: int
    state: StepStatus = StepStatus.PENDING
    attempts: int = 0
    output: str | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    tasks_total: int | None = None
    tasks_done: int = 0
    skip_reason: str | None = None
    error: str | None = None


@attrs.define
class _Task:
    """A finished task's stored result: output text, or the reason it was skipped."""

    output: str | None
    skipped: str | None


@attrs.define
class _FlowRun:
    plan: FlowPlan
    fingerprint: str
    input: Any
    max_attempts: int
    steps: dict[str, _StepRow]
    remaining_steps: int
    outputs: dict[tuple[str, int], _Task] = attrs.Factory(dict)
    jobs: list[int] = attrs.Factory(list)


class FlowTable:
    """Distributed runs by workflow_id, settled against the job and run tables it is given."""

    def __init__(self, jobs: JobTable, runs: RunTable) -> None:
        self.jobs = jobs
        self.runs = runs
        self._flows: dict[str, _FlowRun] = {}
        #: Queues that gained available task jobs since the caller last took them.
        self.woken: set[str] = set()
        #: Whether a run finished since the caller last looked (to notify waiters).
        self.finished = False
        #: Ids of the task jobs inserted since the caller last took them (successor claims).
        self.inserted: list[int] = []

    # -- writes ----------------------------------------------------------------------------

    def start(
        self, plan: FlowPlan, workflow_id: str, input: Any, max_attempts: int, now: datetime
    ) -> None:
        """Create the step rows of a run just stored and decide its roots, cascading."""
        flow = _FlowRun(
            plan=plan,
            fingerprint=plan_fingerprint(plan),
            input=input,
            max_attempts=max_attempts,
            steps={step.name: _StepRow(step.name, len(step.deps)) for step in plan.steps},
            remaining_steps=len(plan.steps),
        )
        self._flows[workflow_id] = flow
        self._cascade(workflow_id, flow, [step.index for step in plan.roots], now)

    def complete(
        self, completions: Sequence[TaskCompletion], limit: int | None, now: datetime
    ) -> list[int]:
        """Complete the fenced-in task jobs and settle what they finish (see FlowStore)."""
        counted: list[int] = []
        for completion in completions:
            row = self.jobs.holding(completion.ref)
            if row is None or row.task is None or row.task != completion.task:
                continue
            self.jobs.finish_task(row, now)
            key = (completion.task.step, completion.task.index)
            workflow_id = completion.task.workflow_id
            flow = self._flows.get(workflow_id)
            if flow is None or not self._running(workflow_id) or key in flow.outputs:
                continue
            if not flow.plan.has_step(completion.task.step):  # a forged job
                self._fail(
                    workflow_id, flow, None, None, unknown_step_error(flow.plan, completion), now
                )
                continue
            counted.append(row.id)
            flow.outputs[key] = _Task(completion.output, completion.skipped)
            step = flow.steps[completion.task.step]
            step.attempts = max(step.attempts, row.attempt)
            step.tasks_done += 1
            if step.tasks_total is not None and step.tasks_done >= step.tasks_total:
                self._settle_tasks(workflow_id, flow, flow.plan.step(step.name), limit, now)
        return sorted(counted)

    def job_ended(self, job_id: int, now: datetime) -> None:
        """A job ended discarded or cancelled: if it was a live run's task, fail the run."""
        row = self.jobs.rows.get(job_id)
        if row is None or row.task is None:
            return
        if row.state not in (JobState.DISCARDED, JobState.CANCELLED):
            return
        workflow_id = row.task.workflow_id
        flow = self._flows.get(workflow_id)
        if flow is None or not self._running(workflow_id):
            return
        last = loads(row.errors[-1]) if row.errors else None
        if not isinstance(last, dict):
            last = {"kind": "cancelled", "message": f"task job {job_id} was cancelled"}
        step = flow.steps.get(row.task.step)  # a forged job may name no step of the run
        if step is not None:
            step.attempts = max(step.attempts, row.attempt)
        error = {
            "kind": str(last.get("kind", "error")),
            "message": (
                f"step {row.task.step!r} failed (job {job_id} {row.state.value}): "
                f"{last.get('message', '')}"
            ),
            "step": row.task.step,
            "traceback": str(last.get("traceback", "")),
        }
        self._fail(workflow_id, flow, row.task.step, dumps(last, what="error"), error, now)

    def fail_run(self, workflow_id: str, error: dict[str, Any], now: datetime) -> bool:
        """Fail a live run from outside: the sweep without a culprit step."""
        flow = self._flows.get(workflow_id)
        if flow is None or not self._running(workflow_id):
            return False
        self._fail(workflow_id, flow, None, None, error, now)
        return True

    def cancel_run(self, workflow_id: str, now: datetime) -> None:
        """Cancel a live run: the sweep, ending the run cancelled (RunStateError otherwise)."""
        flow = self._flows.get(workflow_id)
        run = self.runs.get(workflow_id)
        if run is None:
            return
        check_cancellable(run, is_flow=flow is not None)
        assert flow is not None
        error = cancelled_error(run)
        self._fail(workflow_id, flow, None, None, error, now, state=RunState.CANCELLED)

    def prune(self) -> None:
        """Forget the step states and outputs of runs the run table no longer holds."""
        for workflow_id in [w for w in self._flows if self.runs.get(w) is None]:
            del self._flows[workflow_id]

    # -- reads -----------------------------------------------------------------------------

    def is_flow(self, workflow_id: str) -> bool:
        return workflow_id in self._flows

    def step_states(self, workflow_id: str) -> dict[str, StepState]:
        flow = self._flows.get(workflow_id)
        if flow is None:
            return {}
        running: dict[str, int] = {}
        for job_id in flow.jobs:
            row = self.jobs.rows.get(job_id)
            if row is not None and row.task is not None:
                running[row.task.step] = max(running.get(row.task.step, 0), row.attempt)
        return {
            step.name: _to_state(flow.steps[step.name], running.get(step.name, 0))
            for step in flow.plan.steps
        }

    def running(self) -> list[tuple[str, str, int]]:
        tally = Counter(
            (flow.plan.flow, flow.fingerprint)
            for workflow_id, flow in self._flows.items()
            if self._running(workflow_id)
        )
        return [(name, fingerprint, count) for (name, fingerprint), count in sorted(tally.items())]

    def running_ids(self, flow: str, fingerprint: str, limit: int) -> list[str]:
        """Running runs of one definition, oldest first (runs are kept in start order)."""
        found = [
            workflow_id
            for workflow_id, run in self._flows.items()
            if run.plan.flow == flow
            and run.fingerprint == fingerprint
            and self._running(workflow_id)
        ]
        return found[: max(limit, 0)]

    # -- settling --------------------------------------------------------------------------

    def _running(self, workflow_id: str) -> bool:
        run = self.runs.get(workflow_id)
        return run is not None and run.state is RunState.RUNNING

    def _settle_tasks(
        self, workflow_id: str, flow: _FlowRun, step: StepPlan, limit: int | None, now: datetime
    ) -> None:
        """Every task of `step` is done: complete or skip it from their stored results."""
        row = flow.steps[step.name]
        total = row.tasks_total or 0
        tasks = [flow.outputs[(step.name, index)] for index in range(total)]
        if not step.is_map and tasks[0].skipped is not None:
            self._skip(row, tasks[0].skipped, now)
        else:
            if step.is_map:
                value: Any = [loads(task.output) for task in tasks]
                text: str | None
                try:
                    text = dumps(value, what="output", limit=limit, owner=f"map step {step.name!r}")
                except SerializationError as exc:
                    error = {
                        "kind": "SerializationError",
                        "message": str(exc),
                        "step": step.name,
                        "traceback": "",
                    }
                    self._fail(workflow_id, flow, step.name, dumps(error, what="error"), error, now)
                    return
            else:
                text = tasks[0].output
            self._complete(row, text, now)
        self._after_settle(workflow_id, flow, step, now)

    def _after_settle(
        self, workflow_id: str, flow: _FlowRun, step: StepPlan, now: datetime
    ) -> None:
        """A step settled: its dependents may become ready; the run may be done."""
        ready = [flow.plan.step(name).index for name in _release(flow, step)]
        flow.remaining_steps -= 1
        if flow.remaining_steps == 0:
            self._finish_run(workflow_id, flow, now)
            return
        self._cascade(workflow_id, flow, ready, now)

    def _cascade(self, workflow_id: str, flow: _FlowRun, ready: list[int], now: datetime) -> None:
        """Decide ready steps in topological order until nothing more settles at once."""
        heap = list(ready)
        heapq.heapify(heap)
        while heap and self._running(workflow_id):
            step = flow.plan.steps[heapq.heappop(heap)]
            deps = {name: _settled(flow.steps[name]) for name in step.deps}
            decision = decide(flow.plan, step, deps, flow.input)
            for name in self._apply(workflow_id, flow, step, decision, now):
                heapq.heappush(heap, flow.plan.step(name).index)
            if flow.remaining_steps == 0:
                self._finish_run(workflow_id, flow, now)
                return

    def _apply(
        self, workflow_id: str, flow: _FlowRun, step: StepPlan, decision: Decision, now: datetime
    ) -> list[str]:
        """Carry out one decision; return the dependents it made ready."""
        row = flow.steps[step.name]
        if isinstance(decision, Start):
            new = task_jobs(
                flow.plan, step, workflow_id, decision.arguments, max_attempts=flow.max_attempts
            )
            stored, woken = self.jobs.insert(new, now, None)
            flow.jobs.extend(job.id for job in stored)
            self.inserted.extend(job.id for job in stored)
            self.woken |= woken
            row.state = StepStatus.STARTED
            row.started_at = now
            row.tasks_total = len(decision.arguments)
            return []
        if isinstance(decision, Fail):
            text = dumps(decision.error, what="error")
            self._fail(workflow_id, flow, step.name, text, decision.error, now)
            return []
        if isinstance(decision, Complete):
            row.tasks_total = 0
            self._complete(row, dumps(decision.output, what="output"), now)
        elif isinstance(decision, Skip):
            self._skip(row, decision.reason, now)
        ready = _release(flow, step)
        flow.remaining_steps -= 1
        return ready

    @staticmethod
    def _complete(row: _StepRow, text: str | None, now: datetime) -> None:
        row.state = StepStatus.COMPLETED
        row.output = text
        row.started_at = row.started_at or now
        row.completed_at = now

    @staticmethod
    def _skip(row: _StepRow, reason: str, now: datetime) -> None:
        row.state = StepStatus.SKIPPED
        row.skip_reason = reason
        row.completed_at = now

    def _finish_run(self, workflow_id: str, flow: _FlowRun, now: datetime) -> None:
        settled = {name: _settled(row) for name, row in flow.steps.items()}
        output = dumps(run_output(flow.plan, settled), what="output")
        self.runs.finish(workflow_id, FLOW_ATTEMPT, RunState.COMPLETED, output, None, now)
        self.finished = True

    def _fail(
        self,
        workflow_id: str,
        flow: _FlowRun,
        culprit: str | None,
        step_error: str | None,
        run_error: dict[str, Any],
        now: datetime,
        *,
        state: RunState = RunState.FAILED,
    ) -> None:
        """End the run `state` (failed; cancelled by cancel_run): the culprit step failed,
        live steps cancelled, other jobs stopped."""
        for name, row in flow.steps.items():
            if name == culprit:
                row.state = StepStatus.FAILED
                row.error = step_error
                row.completed_at = now
            elif not row.state.finished:
                row.state = StepStatus.CANCELLED
                row.completed_at = now
        for job_id in flow.jobs:
            self.jobs.stop(job_id, now)
        text = dumps(run_error, what="error")
        self.runs.finish(workflow_id, FLOW_ATTEMPT, state, None, text, now)
        self.finished = True


def _release(flow: _FlowRun, step: StepPlan) -> list[str]:
    """`step` settled: count it off its dependents; return those now ready."""
    ready: list[str] = []
    for name in step.dependents:
        dependent = flow.steps[name]
        dependent.remaining_deps -= 1
        if dependent.remaining_deps == 0:
            ready.append(name)
    return ready


def _settled(row: _StepRow) -> Settled:
    return Settled(row.state, loads(row.output))


def _to_state(row: _StepRow, attempts: int) -> StepState:
    return StepState(
        step=row.name,
        state=row.state,
        attempts=max(row.attempts, attempts),
        output=loads(row.output),
        started_at=row.started_at,
        completed_at=row.completed_at,
        tasks_total=row.tasks_total,
        tasks_done=row.tasks_done,
        skip_reason=row.skip_reason,
        error=loads(row.error),
    )
