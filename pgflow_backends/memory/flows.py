"""The in-memory flow store: step states, task outputs, signals, and the settling of
distributed runs (with their sub-flow children, resumes, restarts and deadlines).

Not thread-safe on its own: InMemoryBackend holds its one lock around every call, so each
start, completion, signal or failure is settled whole, like the SQL backends' single
transaction. Every decision comes from `pgflow.graph.ready`; this module only stores and
sequences them.
"""

from __future__ import annotations

import heapq
import uuid
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime
from typing import Any

import attrs

from pgflow.backend import RunStart
from pgflow.errors import DefinitionError, RunStateError, SerializationError, SignalError
from pgflow.graph.ready import (
    Complete,
    Decision,
    Fail,
    Settled,
    Start,
    StartChild,
    Wait,
    cancelled_error,
    check_cancellable,
    check_signal,
    deadline_error,
    decide,
    plan_fingerprint,
    refused_signal,
    relay_job,
    run_output,
    task_jobs,
    timeout_jobs,
    unknown_step_error,
)
from pgflow.graph.shape import FlowPlan, StepPlan
from pgflow.records import (
    JobState,
    NewJob,
    RunRecord,
    RunState,
    StepState,
    StepStatus,
    TaskCompletion,
)
from pgflow.serialization import dumps, loads
from pgflow_backends.memory.jobs import JobTable
from pgflow_backends.memory.runs import RunTable

#: The attempt every distributed run stays at: retries happen per task, not per run.
FLOW_ATTEMPT = 1
#: Steps a resume keeps and a restart may copy: they settled without failing.
KEPT = (StepStatus.COMPLETED, StepStatus.SKIPPED)
#: The states of a child run that its parent's resume resumes instead of starting anew.
RESUMABLE = (RunState.FAILED, RunState.CANCELLED)


@attrs.define
class _StepRow:
    """One row of step state; output and error kept as JSON text like the SQL column."""

    name: str
    kind: str
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
    #: A sub-flow step's latest child run.
    child_id: str | None = None

    def reset(self, remaining_deps: int) -> None:
        """Back to pending for a resume: error, timings and counters cleared (the child
        run is remembered, so a failed child can be resumed)."""
        self.remaining_deps = remaining_deps
        self.state = StepStatus.PENDING
        self.attempts = 0
        self.output = None
        self.started_at = self.completed_at = None
        self.tasks_total = None
        self.tasks_done = 0
        self.skip_reason = self.error = None


@attrs.frozen
class _Parent:
    """Where a child run reports its end: the parent run, its sub-flow step and queue."""

    workflow_id: str
    step: str
    queue: str


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
    parent: _Parent | None = None
    outputs: dict[tuple[str, int], _Task] = attrs.Factory(dict)
    #: The task jobs of the run's current life (since its start or last resume).
    jobs: list[int] = attrs.Factory(list)
    #: Jobs that no longer speak for their step: from before a resume, or a wait's timeout
    #: a signal beat. Their completion or end counts nothing.
    retired: set[int] = attrs.Factory(set)
    #: Every child run started by the run's sub-flow steps, in start order.
    children: list[str] = attrs.Factory(list)


class FlowTable:
    """Distributed runs by workflow_id, settled against the job and run tables it is given."""

    def __init__(self, jobs: JobTable, runs: RunTable, limit: int | None = None) -> None:
        self.jobs = jobs
        self.runs = runs
        #: The payload size limit (bytes of JSON) for values the table builds itself.
        self.limit = limit
        self._flows: dict[str, _FlowRun] = {}
        #: Signals by (run, wait step): the payload's JSON text, kept once per pair.
        self._signals: dict[tuple[str, str], str] = {}
        #: Queues that gained available task jobs since the caller last took them.
        self.woken: set[str] = set()
        #: Whether a run finished since the caller last looked (to notify waiters).
        self.finished = False
        #: Ids of the task jobs inserted since the caller last took them (successor claims).
        self.inserted: list[int] = []

    # -- writes ----------------------------------------------------------------------------

    def start(
        self,
        plan: FlowPlan,
        workflow_id: str,
        input: str,
        max_attempts: int,
        now: datetime,
        *,
        definition: str | None,
        deadline_at: datetime | None = None,
        parent: _Parent | None = None,
    ) -> RunStart:
        """Store a new run (its input already JSON text) and decide its roots, cascading;
        an existing run is returned unchanged (created=False)."""
        started = self.runs.start(
            workflow_id=workflow_id,
            workflow=plan.flow,
            input=input,
            max_attempts=max_attempts,
            job_id=None,
            fingerprint=plan_fingerprint(plan),
            definition=definition,
            now=now,
            parent_id=None if parent is None else parent.workflow_id,
            parent_step=None if parent is None else parent.step,
            deadline_at=deadline_at,
        )
        if not started.created:
            return started
        flow = self._open(plan, workflow_id, loads(input), max_attempts, parent)
        self._cascade(workflow_id, flow, [step.index for step in plan.roots], now)
        return RunStart(self._record(workflow_id), True)

    def complete(self, completions: Sequence[TaskCompletion], now: datetime) -> list[int]:
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
            step = flow.steps[completion.task.step]
            if row.id in flow.retired or step.state is not StepStatus.STARTED:
                continue  # it lost a race (a signal, a resume): the step is settled elsewhere
            counted.append(row.id)
            flow.outputs[key] = _Task(completion.output, completion.skipped)
            step.attempts = max(step.attempts, row.attempt)
            step.tasks_done += 1
            if step.tasks_total is not None and step.tasks_done >= step.tasks_total:
                self._settle_tasks(workflow_id, flow, flow.plan.step(step.name), now)
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
        if flow is None or not self._running(workflow_id) or job_id in flow.retired:
            return
        step = flow.steps.get(row.task.step)  # a forged job may name no step of the run
        if step is not None and step.state in KEPT:
            return  # the step settled already (e.g. a signal beat the timeout)
        last = loads(row.errors[-1]) if row.errors else None
        if not isinstance(last, dict):
            last = {"kind": "cancelled", "message": f"task job {job_id} was cancelled"}
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

    def signal(
        self,
        plans: Mapping[str, FlowPlan],
        workflow_id: str,
        name: str,
        payload: str,
        now: datetime,
    ) -> bool:
        """Deliver or keep a signal for wait step `name` (see FlowStore.signal_run); True
        when it completed the waiting step, False when it was kept for later."""
        run = self.runs.get(workflow_id)
        flow = self._flows.get(workflow_id)
        plan: FlowPlan | None = None
        if run is not None and flow is not None:
            if flow.fingerprint not in plans and run.state is RunState.RUNNING:
                raise SignalError(
                    f"signal {name!r}: run {workflow_id!r} of flow {run.workflow!r} was "
                    f"started with definition {flow.fingerprint[:12]}, which this process "
                    "does not define; define the flow to signal its runs"
                )
            plan = plans.get(flow.fingerprint, flow.plan)
        check_signal(plan, run, workflow_id, name)
        assert flow is not None
        row = flow.steps[name]
        if (workflow_id, name) in self._signals:
            raise SignalError(refused_signal(workflow_id, name, StepStatus.COMPLETED, None))
        if row.state.finished:
            raise SignalError(refused_signal(workflow_id, name, row.state, row.skip_reason))
        self._signals[(workflow_id, name)] = payload
        if row.state is StepStatus.PENDING:
            return False
        for job_id in flow.jobs:  # the timeout task: cancelled, or flagged when running
            job = self.jobs.rows.get(job_id)
            if job is not None and job.task is not None and job.task.step == name:
                self.jobs.stop(job_id, now)
                flow.retired.add(job_id)
        flow.outputs[(name, 0)] = _Task(payload, None)
        row.tasks_done = 1
        self._complete(row, payload, now)
        self._after_settle(workflow_id, flow, flow.plan.step(name), now)
        return True

    def resume(self, plan: FlowPlan, workflow_id: str, now: datetime) -> RunRecord:
        """Continue a failed or cancelled run from its frontier (see FlowStore.resume_run)."""
        run, flow = self._finished_flow("resume_run", workflow_id, plan)
        if run.state is RunState.COMPLETED:
            raise RunStateError(
                f"resume_run: run {workflow_id!r} of flow {run.workflow!r} is completed; "
                "only a failed or cancelled run can be resumed (restart_run runs it again)"
            )
        self._resume(workflow_id, flow, now)
        return self._record(workflow_id)

    def restart(
        self,
        plan: FlowPlan,
        workflow_id: str,
        new_id: str,
        rerun: Collection[str],
        input: str,
        now: datetime,
        *,
        definition: str | None,
    ) -> RunStart:
        """Start `new_id` from finished run `workflow_id`, copying the steps that settled
        and are not re-run (see FlowStore.restart_run)."""
        _, old = self._finished_flow("restart_run", workflow_id, plan)
        started = self.runs.start(
            workflow_id=new_id,
            workflow=plan.flow,
            input=input,
            max_attempts=old.max_attempts,
            job_id=None,
            fingerprint=old.fingerprint,
            definition=definition,
            now=now,
            restart_of=workflow_id,
        )
        if not started.created:
            return started
        flow = self._open(plan, new_id, loads(input), old.max_attempts, None)
        copied = {
            name
            for name, row in old.steps.items()
            if row.state in KEPT and name not in rerun and name in flow.steps
        }
        for name in copied:
            flow.steps[name] = attrs.evolve(old.steps[name])
        for (name, index), task in old.outputs.items():
            if name in copied:
                flow.outputs[(name, index)] = attrs.evolve(task)
        ready: list[int] = []
        for step in plan.steps:
            if step.name in copied:
                continue
            row = flow.steps[step.name]
            row.remaining_deps = sum(1 for dep in step.deps if dep not in copied)
            if row.remaining_deps == 0:
                ready.append(step.index)
        flow.remaining_steps = len(plan.steps) - len(copied)
        if flow.remaining_steps == 0:
            self._finish_run(new_id, flow, now)
        else:
            self._cascade(new_id, flow, ready, now)
        return RunStart(self._record(new_id), True)

    def expire(self, limit: int, now: datetime) -> list[str]:
        """Fail the running runs past their deadline with `deadline_error`, children first."""
        expired: list[str] = []
        for workflow_id in self.runs.expired(now, limit):
            flow = self._flows.get(workflow_id)
            if flow is None or not self._running(workflow_id):
                continue
            error = deadline_error(self._record(workflow_id))
            self._fail(workflow_id, flow, None, None, error, now)
            expired.append(workflow_id)
        return expired

    def prune(self) -> None:
        """Forget the step states, outputs and signals of runs the run table no longer holds."""
        for workflow_id in [w for w in self._flows if self.runs.state(w) is None]:
            del self._flows[workflow_id]
        for key in [k for k in self._signals if k[0] not in self._flows]:
            del self._signals[key]

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
        return self.runs.state(workflow_id) is RunState.RUNNING

    def _record(self, workflow_id: str) -> RunRecord:
        run = self.runs.get(workflow_id)
        assert run is not None  # stored under the same lock
        return run

    def _open(
        self,
        plan: FlowPlan,
        workflow_id: str,
        input: Any,
        max_attempts: int,
        parent: _Parent | None,
    ) -> _FlowRun:
        """The step rows of a run just stored: every step pending, nothing decided yet."""
        flow = _FlowRun(
            plan=plan,
            fingerprint=plan_fingerprint(plan),
            input=input,
            max_attempts=max_attempts,
            steps={
                step.name: _StepRow(step.name, step.kind, len(step.deps)) for step in plan.steps
            },
            remaining_steps=len(plan.steps),
            parent=parent,
        )
        self._flows[workflow_id] = flow
        return flow

    def _finished_flow(
        self, what: str, workflow_id: str, plan: FlowPlan
    ) -> tuple[RunRecord, _FlowRun]:
        """The stored distributed run `workflow_id`, which must have ended and been made
        from `plan`'s definition (RunStateError / DefinitionError naming it otherwise)."""
        run = self.runs.get(workflow_id)
        if run is None:
            raise RunStateError(f"{what}: run {workflow_id!r} is not stored")
        flow = self._flows.get(workflow_id)
        if flow is None:
            raise RunStateError(
                f"{what}: run {workflow_id!r} of {run.workflow!r} was not started with "
                "start_run; only distributed runs can be resumed or restarted"
            )
        if run.state is RunState.RUNNING:
            raise RunStateError(
                f"{what}: run {workflow_id!r} of flow {run.workflow!r} is running; only a "
                "finished run can be resumed or restarted"
            )
        fingerprint = plan_fingerprint(plan)
        if fingerprint != flow.fingerprint:
            raise DefinitionError(
                f"{what}: run {workflow_id!r} of flow {run.workflow!r} was started with "
                f"definition {flow.fingerprint[:12]}, not {fingerprint[:12]} (flow "
                f"{plan.flow!r}) that was given"
            )
        return run, flow

    def _resume(self, workflow_id: str, flow: _FlowRun, now: datetime) -> None:
        """Running again from the frontier: kept steps stay, the others go back to pending
        (a map's stored element outputs kept), and the ready ones are decided."""
        self.runs.reopen(workflow_id)
        flow.retired.update(flow.jobs)
        flow.jobs = []
        ready: list[int] = []
        remaining = 0
        for step in flow.plan.steps:
            row = flow.steps[step.name]
            if row.state in KEPT:
                continue
            remaining += 1
            row.reset(sum(1 for dep in step.deps if flow.steps[dep].state not in KEPT))
            if not step.is_map:
                flow.outputs.pop((step.name, 0), None)
            if row.remaining_deps == 0:
                ready.append(step.index)
        flow.remaining_steps = remaining
        if remaining == 0:
            self._finish_run(workflow_id, flow, now)
        else:
            self._cascade(workflow_id, flow, ready, now)

    def _settle_tasks(
        self, workflow_id: str, flow: _FlowRun, step: StepPlan, now: datetime
    ) -> None:
        """Every task of `step` is done: settle it, then what follows from it."""
        if self._settle_row(workflow_id, flow, step, now):
            self._after_settle(workflow_id, flow, step, now)

    def _settle_row(self, workflow_id: str, flow: _FlowRun, step: StepPlan, now: datetime) -> bool:
        """Complete or skip `step` from its stored task results; False when that failed the
        run instead (a map's list over the size limit)."""
        row = flow.steps[step.name]
        total = row.tasks_total or 0
        tasks = [flow.outputs[(step.name, index)] for index in range(total)]
        if not step.is_map and tasks[0].skipped is not None:
            self._skip(row, tasks[0].skipped, now)
            return True
        text: str | None
        if step.is_map:
            value: Any = [loads(task.output) for task in tasks]
            try:
                text = dumps(
                    value, what="output", limit=self.limit, owner=f"map step {step.name!r}"
                )
            except SerializationError as exc:
                self._fail_step(workflow_id, flow, step, "SerializationError", str(exc), now)
                return False
        else:
            text = tasks[0].output
        self._complete(row, text, now)
        return True

    def _fail_step(
        self,
        workflow_id: str,
        flow: _FlowRun,
        step: StepPlan,
        kind: str,
        message: str,
        now: datetime,
    ) -> None:
        error = {"kind": kind, "message": message, "step": step.name, "traceback": ""}
        self._fail(workflow_id, flow, step.name, dumps(error, what="error"), error, now)

    def _after_settle(
        self, workflow_id: str, flow: _FlowRun, step: StepPlan, now: datetime
    ) -> None:
        """A step settled: its dependents may become ready; the run may be done."""
        ready = [flow.plan.step(name).index for name in _count_off(flow, step)]
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
            return self._start_tasks(workflow_id, flow, step, decision, now)
        if isinstance(decision, Wait):
            return self._wait(workflow_id, flow, step, decision, now)
        if isinstance(decision, StartChild):
            self._start_child(workflow_id, flow, step, decision, now)
            return []
        if isinstance(decision, Fail):
            text = dumps(decision.error, what="error")
            self._fail(workflow_id, flow, step.name, text, decision.error, now)
            return []
        if isinstance(decision, Complete):
            row.tasks_total = 0
            self._complete(row, dumps(decision.output, what="output"), now)
        else:
            self._skip(row, decision.reason, now)
        return _count_off(flow, step)

    def _start_tasks(
        self, workflow_id: str, flow: _FlowRun, step: StepPlan, decision: Start, now: datetime
    ) -> list[str]:
        """Insert a started step's tasks; a resumed map's stored elements get none (all
        stored: it settles at once)."""
        new = task_jobs(
            flow.plan,
            step,
            workflow_id,
            decision.arguments,
            max_attempts=flow.max_attempts,
            at=decision.at,
        )
        kept = {i for i in range(len(new)) if (step.name, i) in flow.outputs}
        self._insert(
            flow, [job for job in new if job.task is None or job.task.index not in kept], now
        )
        row = flow.steps[step.name]
        row.state = StepStatus.STARTED
        row.started_at = now
        row.tasks_total = len(decision.arguments)
        row.tasks_done = len(kept)
        if row.tasks_done < row.tasks_total:
            return []
        if not self._settle_row(workflow_id, flow, step, now):
            return []
        return _count_off(flow, step)

    def _wait(
        self, workflow_id: str, flow: _FlowRun, step: StepPlan, decision: Wait, now: datetime
    ) -> list[str]:
        """A wait became ready: completed by a signal kept for it, else started with its
        timeout task."""
        row = flow.steps[step.name]
        row.state = StepStatus.STARTED
        row.started_at = now
        row.tasks_total = 1
        payload = self._signals.get((workflow_id, step.name))
        if payload is None:
            self._insert(flow, timeout_jobs(flow.plan, step, workflow_id, decision), now)
            return []
        flow.outputs[(step.name, 0)] = _Task(payload, None)
        row.tasks_done = 1
        self._complete(row, payload, now)
        return _count_off(flow, step)

    def _start_child(
        self, workflow_id: str, flow: _FlowRun, step: StepPlan, decision: StartChild, now: datetime
    ) -> None:
        """A sub-flow became ready: it waits (started) for a child run, started here (or, on
        a resume, its failed or cancelled child of the same definition, resumed)."""
        child_plan = step.child
        assert child_plan is not None  # a sub-flow's plan always has its child
        row = flow.steps[step.name]
        previous = None if row.child_id is None else self._flows.get(row.child_id)
        if (
            previous is not None
            and row.child_id is not None
            and previous.fingerprint == plan_fingerprint(child_plan)
            and self.runs.state(row.child_id) in RESUMABLE
        ):
            row.state = StepStatus.STARTED
            row.started_at = now
            row.tasks_total = 1
            self._resume(row.child_id, previous, now)
            return
        owner = f"sub-flow step {step.name!r} of run {workflow_id!r}"
        try:
            text = dumps(decision.input, what="input", limit=self.limit, owner=owner)
        except SerializationError as exc:
            self._fail_step(workflow_id, flow, step, "SerializationError", str(exc), now)
            return
        child_id = str(uuid.uuid4())
        row.state = StepStatus.STARTED
        row.started_at = now
        row.tasks_total = 1
        row.child_id = child_id
        flow.children.append(child_id)
        parent = _Parent(workflow_id, step.name, step.queue or flow.plan.queue)
        self.start(
            child_plan,
            child_id,
            text,
            flow.max_attempts,
            now,
            definition=self.runs.encode_definition(child_plan.definition),
            parent=parent,
        )

    def _insert(self, flow: _FlowRun, new: Sequence[NewJob], now: datetime) -> None:
        """Insert task jobs of `flow` (encoded by the job table; nothing is over the limit
        that the values they carry were not already held to)."""
        if not new:
            return
        stored, woken = self.jobs.insert(new, now, None)
        flow.jobs.extend(job.id for job in stored)
        self.inserted.extend(job.id for job in stored)
        self.woken |= woken

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
        if not self._running(workflow_id):
            return
        settled = {name: _settled(row) for name, row in flow.steps.items()}
        output = dumps(run_output(flow.plan, settled), what="output")
        self.runs.finish(workflow_id, FLOW_ATTEMPT, RunState.COMPLETED, output, None, now)
        self.finished = True
        self._relay(workflow_id, flow, now)

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
        relay: bool = True,
    ) -> None:
        """End the run `state` (failed; cancelled by cancel_run): its running children first
        (cancelled, no relay), then the culprit step failed, live steps cancelled, other
        jobs stopped; a child's end relays to its running parent."""
        if not self._running(workflow_id):
            return
        for child_id in flow.children:
            child = self._flows.get(child_id)
            if child is not None and self._running(child_id):
                error = _cancelled_with_parent(self._record(child_id), workflow_id)
                self._fail(
                    child_id, child, None, None, error, now, state=RunState.CANCELLED, relay=False
                )
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
        if relay:
            self._relay(workflow_id, flow, now)

    def _relay(self, workflow_id: str, flow: _FlowRun, now: datetime) -> None:
        """A child run ended: its running parent gets the relay task that settles the
        sub-flow step from it."""
        if flow.parent is None:
            return
        parent = self._flows.get(flow.parent.workflow_id)
        if parent is None or not self._running(flow.parent.workflow_id):
            return
        job = relay_job(
            parent_id=flow.parent.workflow_id,
            parent_step=flow.parent.step,
            parent_flow=parent.plan.flow,
            parent_fingerprint=parent.fingerprint,
            parent_queue=flow.parent.queue,
            child_id=workflow_id,
        )
        self._insert(parent, [job], now)


def _count_off(flow: _FlowRun, step: StepPlan) -> list[str]:
    """`step` settled: one step fewer to go; return the dependents it made ready."""
    flow.remaining_steps -= 1
    return _release(flow, step)


def _cancelled_with_parent(run: RunRecord, parent_id: str) -> dict[str, Any]:
    """What a child run swept by its parent's end stores as its error."""
    return {
        "kind": "RunCancelled",
        "message": (
            f"run {run.workflow_id!r} of flow {run.workflow!r} was cancelled with its parent "
            f"run {parent_id!r}"
        ),
        "step": None,
        "traceback": "",
    }


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
        kind=row.kind,
        child_id=row.child_id,
    )
