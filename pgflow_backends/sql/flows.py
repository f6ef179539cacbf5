"""Settling distributed flow runs inside one SQL transaction (the SQL half of FlowStore).

A `FlowSettler` lives for one transaction. Every decision comes from `pgflow.graph.ready`;
the rows are read and written through a `FlowRows`, a whole batch per operation, in waves:
the steps settled by the completions, then the steps they made ready, decided together,
and so on until nothing more settles at once. A batch of completions of many runs costs a
fixed number of statements, not a number per completion.

Locking: a run's row is locked (FOR NO KEY UPDATE, ascending workflow_id) before any of its
step or job rows by every transaction that writes about the run's steps: completions,
failures, cancels, rescues and sweeps. They serialize per run and never deadlock. Sub-flows
keep one more order: a parent locks its children (a failure sweep, a resume), a child never
locks its parent (its end only reads the parent's row and inserts the relay task), and a
deadline sweep takes one run per transaction. SQLite serializes writers anyway, so the
locks are no-ops there.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any

import attrs
from sqlalchemy import Connection

from pgflow.backend import RunStart
from pgflow.errors import (
    BackendError,
    DefinitionError,
    RunStateError,
    SerializationError,
    SignalError,
)
from pgflow.graph.ready import (
    Complete,
    Decision,
    Fail,
    Settled,
    Skip,
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
from pgflow.graph.shape import SUBFLOW, FlowPlan, StepPlan
from pgflow.records import (
    Job,
    JobState,
    NewJob,
    RunRecord,
    StepStatus,
    SuccessorClaim,
    TaskCompletion,
)
from pgflow.serialization import dumps, loads
from pgflow_backends.sql.flow_rows import FlowRows, StepKey, TaskResult
from pgflow_backends.sql.flow_statements import FlowStatements
from pgflow_backends.sql.rows import decode_errors, job_from_row, run_from_row
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
    #: A sub-flow's child run: its parent (whose step its end relays to).
    parent_id: str | None = None
    #: The flow's name (for messages).
    workflow: str = ""
    plan: FlowPlan | None = None
    #: Steps settled in this transaction, counted off `remaining_steps` once, at the end.
    settled: int = 0

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
        rows: FlowRows,
        *,
        insert_jobs: Callable[[list[NewJob]], list[Job]],
        announce: Callable[[set[str]], None],
        run_finished: Callable[[str], None],
        limit: int | None,
        token: Callable[[Any], Any],
    ) -> None:
        self._c = connection
        self._f = flow_sql
        self._s = job_sql
        self._rows = rows
        self._insert_jobs = insert_jobs
        self._announce = announce
        self._run_finished = run_finished
        self._limit = limit
        self._token = token
        self._runs: dict[str, LockedRun] = {}
        self._inputs: dict[str, Any] = {}
        #: Task jobs this transaction inserted, for a successor claim.
        self._inserted: list[Job] = []
        #: Of those, the ones no successor claim takes: child runs' tasks (the completing
        #: instance may not serve their flow).
        self._foreign: set[int] = set()
        #: A resume: the map elements already stored, by step (only those run again).
        self._kept_elements: dict[StepKey, set[int]] = {}
        #: A resume: sub-flow steps whose failed or cancelled child is resumed, not replaced
        #: (None: the child still runs; the step only waits for its relay).
        self._old_children: dict[StepKey, tuple[str, str]] = {}
        #: Steps this transaction settled, as (state, output JSON text): a dependent decided
        #: in the same transaction reads them from here instead of from the table.
        self._known: dict[StepKey, tuple[StepStatus, str | None]] = {}
        #: The signals stored for the waits decided in the current wave.
        self._signals: dict[StepKey, Any] = {}

    # -- locks -----------------------------------------------------------------------------

    def lock(self, workflow_ids: Iterable[str]) -> dict[str, LockedRun]:
        """Lock these runs' rows (ascending id), once per transaction; unknown ids skipped."""
        wanted = sorted({w for w in workflow_ids if w not in self._runs})
        if wanted:
            rows = self._c.execute(self._f.lock_runs, {"p_ids": wanted}).all()
            for row in rows:
                self._found(row)
        return self._runs

    def _found(self, row: Sequence[Any]) -> LockedRun:
        """Record a run row (lock_runs' columns) as its lock found it."""
        workflow_id, state, fingerprint, remaining, max_attempts, parent_id, workflow = row[:7]
        known = self._runs.get(workflow_id)
        if known is not None:
            known.state = state
            return known
        run = LockedRun(
            workflow_id,
            state,
            fingerprint,
            max_attempts,
            remaining is not None,
            parent_id,
            workflow,
        )
        self._runs[workflow_id] = run
        return run

    def lock_task_runs(self, job_ids: Sequence[int]) -> bool:
        """Before touching these jobs' rows: lock the runs they are tasks of. False when
        none is a task (then no job_ended call is needed for them)."""
        if not job_ids:
            return False
        found = list(self._c.execute(self._f.task_run_of, {"p_job_ids": list(job_ids)}).scalars())
        self.lock(found)
        return bool(found)

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
        deadline: float | None = None,
        parent_id: str | None = None,
        parent_step: str | None = None,
        parent_queue: str | None = None,
        restart_of: str | None = None,
        kept: Collection[str] = (),
    ) -> RunStart:
        """Store the run and its step rows, then decide its roots (cascading). A restart
        copies the `kept` steps of run `restart_of`; the others start pending."""
        params = {
            "p_workflow_id": workflow_id,
            "p_workflow": plan.flow,
            "p_max_attempts": max_attempts,
            "p_input": encoded_input,
            "p_fingerprint": plan_fingerprint(plan),
            "p_definition": definition,
            "p_steps": len(plan.steps),
            "p_deadline": deadline,
            "p_parent_id": parent_id,
            "p_parent_step": parent_step,
            "p_parent_queue": parent_queue,
            "p_restart_of": restart_of,
        }
        row = self._c.execute(self._f.insert_run, params).first()
        if row is None:
            existing = self._c.execute(self._f.run, params).one()
            return RunStart(run_from_row(existing), False)
        pending = [
            {
                "p_workflow_id": workflow_id,
                "p_step": step.name,
                "p_index": step.index,
                "p_kind": step.kind,
                "p_deps": sum(1 for dep in step.deps if dep not in kept),
            }
            for step in plan.steps
            if step.name not in kept
        ]
        if pending:
            self._c.execute(self._f.insert_steps, pending)
        if kept:
            copy = {"p_workflow_id": workflow_id, "p_old_id": restart_of, "p_steps": list(kept)}
            self._c.execute(self._f.copy_steps, copy)
        run = LockedRun(
            workflow_id,
            "running",
            plan_fingerprint(plan),
            max_attempts,
            True,
            parent_id,
            plan.flow,
            plan,
        )
        # Kept steps are counted off like steps settled now (a run with all kept completes).
        run.settled = len(kept)
        self._runs[workflow_id] = run
        self._inputs[workflow_id] = input
        self._settle(_ready_steps(run, plan, kept), [])
        if run.state == "running":  # as inserted; re-read only a run that ended at once
            return RunStart(run_from_row(row), True)
        stored = self._c.execute(self._f.run, params).one()
        return RunStart(run_from_row(stored), True)

    # -- completing ------------------------------------------------------------------------

    def complete(
        self, completions: Sequence[TaskCompletion], plans: Mapping[str, FlowPlan]
    ) -> list[int]:
        """Complete the fenced-in task jobs and settle what they finish (see FlowStore)."""
        runs = self.lock(c.task.workflow_id for c in completions)
        for run in runs.values():
            if run.live and run.plan is None:
                run.plan = self._plan_of(run, plans)
        tokens = [self._token(c.ref) for c in completions]
        results = self._rows.complete_jobs(completions, tokens)
        singles: list[TaskResult] = []
        elements: list[TaskResult] = []
        for result in results:
            owner = runs.get(result.completion.task.workflow_id)
            if owner is None or not owner.live or owner.plan is None:
                continue  # the job completed; a finished run counts nothing more
            if not owner.plan.has_step(result.completion.task.step):  # a forged job
                self._fail(owner, None, None, unknown_step_error(owner.plan, result.completion))
                continue
            step = owner.plan.step(result.completion.task.step)
            (elements if step.is_map else singles).append(result)
        settled_singles = self._rows.settle_singles(singles)
        for result in singles:
            if result.key in settled_singles:
                completion = result.completion
                if completion.skipped is None:
                    self._known[result.key] = (StepStatus.COMPLETED, completion.output)
                else:
                    self._known[result.key] = (StepStatus.SKIPPED, None)
        counted = [r.completion.ref.id for r in singles if r.key in settled_singles]
        settled: list[tuple[LockedRun, StepPlan]] = [
            (runs[w], self._step(runs[w], s)) for w, s in sorted(settled_singles)
        ]
        stored = self._rows.store_outputs(elements)
        counted += [r.completion.ref.id for r in stored]
        tally: dict[StepKey, tuple[int, int]] = {}
        for result in stored:
            count, attempt = tally.get(result.key, (0, 0))
            tally[result.key] = (count + 1, max(attempt, result.attempt))
        finished_maps = sorted(key for key, done in self._rows.count_tasks(tally).items() if done)
        settled += self._settle_maps([(runs[w], self._step(runs[w], s)) for w, s in finished_maps])
        self._settle([], settled)
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

    @staticmethod
    def _step(run: LockedRun, name: str) -> StepPlan:
        assert run.plan is not None  # every live run in a settle has its plan
        return run.plan.step(name)

    def _settle_maps(
        self, finished: list[tuple[LockedRun, StepPlan]]
    ) -> list[tuple[LockedRun, StepPlan]]:
        """Maps whose elements are all done: output = their list in index order (a list
        over the size limit fails the step and the run)."""
        if not finished:
            return []
        outputs = self._rows.map_outputs((run.workflow_id, step.name) for run, step in finished)
        completed: list[tuple[str, str, str]] = []
        settled: list[tuple[LockedRun, StepPlan]] = []
        for run, step in finished:
            try:
                text = dumps(
                    outputs[(run.workflow_id, step.name)],
                    what="output",
                    limit=self._limit,
                    owner=f"map step {step.name!r}",
                )
            except SerializationError as exc:
                self._fail_unstorable(run, step, exc)
                continue
            completed.append((run.workflow_id, step.name, text))
            settled.append((run, step))
            self._known[(run.workflow_id, step.name)] = (StepStatus.COMPLETED, text)
        self._rows.complete_steps(completed)
        return settled

    # -- waves -----------------------------------------------------------------------------

    def _settle(
        self,
        ready: list[tuple[LockedRun, StepPlan]],
        settled: list[tuple[LockedRun, StepPlan]],
    ) -> None:
        """Release what settled, decide what became ready, repeat; then count steps off
        the runs and complete those that reached 0."""
        while ready or settled:
            for run, _ in settled:
                run.settled += 1
            ready += self._release(settled)
            settled = self._decide(ready)
            ready = []
        self._count_off()

    def _release(
        self, settled: list[tuple[LockedRun, StepPlan]]
    ) -> list[tuple[LockedRun, StepPlan]]:
        """Count settled steps off their dependents; return the dependents now ready."""
        counts: dict[StepKey, int] = defaultdict(int)
        for run, step in settled:
            if run.live:
                for dependent in step.dependents:
                    counts[(run.workflow_id, dependent)] += 1
        if not counts:
            return []
        return [
            (self._runs[w], self._step(self._runs[w], s))
            for w, s in sorted(self._rows.release(counts))
        ]

    def _decide(self, ready: list[tuple[LockedRun, StepPlan]]) -> list[tuple[LockedRun, StepPlan]]:
        """Decide every ready step (one wave) and apply the decisions in batches; return
        the steps that settled at once (completed without tasks, or skipped)."""
        ready = sorted(
            ((run, step) for run, step in ready if run.live),
            key=lambda pair: (pair[0].workflow_id, pair[1].index),
        )
        if not ready:
            return []
        outputs = self._settled_of(
            {(run.workflow_id, dep) for run, step in ready for dep in step.deps}
        )
        missing = [
            run.workflow_id
            for run, step in ready
            if run.workflow_id not in self._inputs and _needs_input(step)
        ]
        if missing:
            self._inputs.update(self._rows.inputs(sorted(set(missing))))
        decisions: dict[str, list[tuple[StepPlan, Decision]]] = defaultdict(list)
        for run, step in ready:
            assert run.plan is not None
            deps = {dep: outputs[(run.workflow_id, dep)] for dep in step.deps}
            run_input = self._inputs.get(run.workflow_id) if _needs_input(step) else None
            decisions[run.workflow_id].append((step, decide(run.plan, step, deps, run_input)))
        new_jobs: list[NewJob] = []
        started: list[tuple[str, str, int]] = []
        completed: list[tuple[str, str, str]] = []
        skipped: list[tuple[str, str, str]] = []
        settled: list[tuple[LockedRun, StepPlan]] = []
        waits: list[tuple[LockedRun, StepPlan, Wait]] = []
        children: list[tuple[LockedRun, StepPlan, StartChild]] = []
        resumed_maps: list[tuple[LockedRun, StepPlan, int, int]] = []
        for workflow_id, decided in decisions.items():
            run = self._runs[workflow_id]
            assert run.plan is not None
            failure = next(((step, d) for step, d in decided if isinstance(d, Fail)), None)
            if failure is not None:  # the run ends here: its other decisions are moot
                step, fail = failure
                assert isinstance(fail, Fail)
                self._fail(run, step.name, fail.error, fail.error)
                continue
            for step, decision in decided:
                if isinstance(decision, Start):
                    jobs = task_jobs(
                        run.plan,
                        step,
                        workflow_id,
                        decision.arguments,
                        max_attempts=run.max_attempts,
                        at=decision.at,
                    )
                    stored = self._kept_elements.pop((workflow_id, step.name), None)
                    if stored is not None:  # a resumed map: only the missing elements
                        total = len(jobs)
                        jobs = [job for job in jobs if job.task and job.task.index not in stored]
                        resumed_maps.append((run, step, total, total - len(jobs)))
                        new_jobs += jobs
                        continue
                    new_jobs += jobs
                    started.append((workflow_id, step.name, len(jobs)))
                elif isinstance(decision, Wait):
                    waits.append((run, step, decision))
                    started.append((workflow_id, step.name, 1))
                elif isinstance(decision, StartChild):
                    children.append((run, step, decision))
                    started.append((workflow_id, step.name, 1))
                elif isinstance(decision, Complete):
                    output = dumps(decision.output, what="output")
                    completed.append((workflow_id, step.name, output))
                    settled.append((run, step))
                    self._known[(workflow_id, step.name)] = (StepStatus.COMPLETED, output)
                elif isinstance(decision, Skip):
                    skipped.append((workflow_id, step.name, decision.reason))
                    settled.append((run, step))
                    self._known[(workflow_id, step.name)] = (StepStatus.SKIPPED, None)
        if waits:
            new_jobs += self._timeout_jobs(waits)
        if new_jobs:
            self._inserted += self._insert_jobs(new_jobs)
        self._rows.start_steps(started)
        self._rows.complete_steps(completed)
        self._rows.skip_steps(skipped)
        if resumed_maps:
            settled += self._start_resumed_maps(resumed_maps)
        if waits:
            settled += self._signalled(waits)
        for run, step, child in children:
            self._start_child(run, step, child)
        return settled

    def _timeout_jobs(self, waits: list[tuple[LockedRun, StepPlan, Wait]]) -> list[NewJob]:
        """The timeout tasks of the waits that have no signal stored yet (read in one
        statement); the others are completed by `_signalled`."""
        found = self._c.execute(
            self._f.signals_for,
            {
                "p_ids": sorted({run.workflow_id for run, _, _ in waits}),
                "p_steps": sorted({step.name for _, step, _ in waits}),
            },
        ).all()
        self._signals = {(str(w), str(s)): payload for w, s, payload in found}
        jobs: list[NewJob] = []
        for run, step, wait in waits:
            if (run.workflow_id, step.name) not in self._signals:
                assert run.plan is not None
                jobs += timeout_jobs(run.plan, step, run.workflow_id, wait)
        return jobs

    def _signalled(
        self, waits: list[tuple[LockedRun, StepPlan, Wait]]
    ) -> list[tuple[LockedRun, StepPlan]]:
        """Waits that found their signal stored complete at once with its payload."""
        settled: list[tuple[LockedRun, StepPlan]] = []
        for run, step, _ in waits:
            key = (run.workflow_id, step.name)
            if key in self._signals:
                text = dumps(self._signals[key], what="output")
                if self._complete_wait(run.workflow_id, step.name, text):
                    settled.append((run, step))
        return settled

    def _complete_wait(self, workflow_id: str, step: str, text: str) -> bool:
        """A started wait completes with a signal's payload (tasks_done 1); False when it
        no longer waits."""
        params = {"p_workflow_id": workflow_id, "p_step": step, "p_output": text}
        if self._c.execute(self._f.signal_step, params).first() is None:
            return False
        self._known[(workflow_id, step)] = (StepStatus.COMPLETED, text)
        return True

    def _start_resumed_maps(
        self, maps: list[tuple[LockedRun, StepPlan, int, int]]
    ) -> list[tuple[LockedRun, StepPlan]]:
        """Resumed maps start with their stored elements counted done; one with every
        element stored settles at once (its output from the stored elements)."""
        finished: list[tuple[LockedRun, StepPlan]] = []
        for run, step, total, done in maps:
            params = {
                "p_workflow_id": run.workflow_id,
                "p_step": step.name,
                "p_total": total,
                "p_done": done,
            }
            self._c.execute(self._f.start_step_done, params)
            if done >= total:
                finished.append((run, step))
        return self._settle_maps(finished)

    def _start_child(self, run: LockedRun, step: StepPlan, decision: StartChild) -> None:
        """Start (or, resuming, resume) a sub-flow step's child run in this transaction; its
        tasks and relays are not for a successor claim."""
        assert run.plan is not None and step.child is not None
        if not run.live:
            return  # the run failed in this wave (another child failed at once)
        mark = len(self._inserted)
        old = self._old_children.pop((run.workflow_id, step.name), None)
        if old is not None:
            child_id, child_state = old
            if child_state != "running":
                child = self.lock([child_id]).get(child_id)
                assert child is not None  # a parent's children are pruned with it
                self._resume(child, step.child)
        else:
            try:
                encoded = dumps(
                    decision.input,
                    what="input",
                    limit=self._limit,
                    owner=f"sub-flow step {step.name!r} of run {run.workflow_id!r}",
                )
            except SerializationError as exc:
                self._fail_unstorable(run, step, exc)
                return
            self.start(
                step.child,
                workflow_id=str(uuid.uuid4()),
                encoded_input=encoded,
                input=loads(encoded),
                max_attempts=run.max_attempts,
                definition=dumps(step.child.definition, what="definition"),
                parent_id=run.workflow_id,
                parent_step=step.name,
                parent_queue=step.queue or run.plan.queue,
            )
        self._foreign.update(job.id for job in self._inserted[mark:])

    def _count_off(self) -> None:
        """Subtract each run's settled steps; the runs at 0 complete with their result."""
        counts = {w: run.settled for w, run in self._runs.items() if run.live and run.settled}
        if not counts:
            return
        for run in self._runs.values():
            run.settled = 0
        remaining = self._rows.count_off(counts)
        done = [self._runs[w] for w, left in sorted(remaining.items()) if left <= 0]
        if not done:
            return
        leaves = self._settled_of(
            {(run.workflow_id, leaf) for run in done if run.plan for leaf in run.plan.leaves}
        )
        rows: list[tuple[str, str]] = []
        for run in done:
            assert run.plan is not None
            outputs = {leaf: leaves[(run.workflow_id, leaf)] for leaf in run.plan.leaves}
            rows.append((run.workflow_id, dumps(run_output(run.plan, outputs), what="output")))
            run.state = "completed"
        self._rows.complete_runs(rows)
        for run in done:
            self._run_finished(run.workflow_id)
        self._relay([run for run in done if run.parent_id is not None])

    def _relay(self, ended: list[LockedRun]) -> None:
        """Child runs that just ended: the relay task of each one whose parent still runs
        (its parent's row is read, not locked: a new job row conflicts with nobody)."""
        if not ended:
            return
        ids = sorted(run.workflow_id for run in ended)
        relays: list[NewJob] = []
        for row in self._c.execute(self._f.parents_of, {"p_ids": ids}).all():
            child_id, parent_id, parent_step, parent_queue, flow, fingerprint, state = row
            parent = self._runs.get(parent_id)
            if (parent.state if parent is not None else state) != "running":
                continue
            if parent_step is None or parent_queue is None or fingerprint is None:
                continue  # not a sub-flow's child (written by hand)
            relays.append(
                relay_job(
                    parent_id=parent_id,
                    parent_step=parent_step,
                    parent_flow=flow,
                    parent_fingerprint=fingerprint,
                    parent_queue=parent_queue,
                    child_id=child_id,
                )
            )
        if relays:  # woken now: a failure sweep announces nothing else (no successor claim)
            inserted = self._insert_jobs(relays)
            self._announce({job.queue for job in inserted if job.state is JobState.AVAILABLE})

    def announce_new_tasks(self, claimed: Sequence[Job]) -> None:
        """Wake the queues that gained available tasks in this transaction (at commit),
        leaving out the tasks a successor claim took: nobody else need wake for them."""
        taken = {job.id for job in claimed}
        queues = {
            job.queue
            for job in self._inserted
            if job.state is JobState.AVAILABLE and job.id not in taken
        }
        if queues:
            self._announce(queues)

    def claim_successors(self, claim: SuccessorClaim) -> list[Job]:
        """Claim, for `claim`'s instance, up to its limit of the task jobs this transaction
        made available on its queue (see FlowStore.complete_tasks)."""
        ids = [
            job.id
            for job in self._inserted
            if job.queue == claim.queue
            and job.state is JobState.AVAILABLE
            and job.id not in self._foreign
        ][: max(claim.limit, 0)]
        if not ids:
            return []
        params = {
            "p_ids": ids,
            "p_instance": claim.instance_id,
            "p_incarnation": claim.incarnation,
            "p_queue": claim.queue,
        }
        rows = self._c.execute(self._f.claim_ids, params).all()
        claimed = [job_from_row(row) for row in rows]
        claimed.sort(key=lambda job: (-job.priority, job.scheduled_at, job.id))
        return claimed

    def _settled_of(self, keys: set[StepKey]) -> dict[StepKey, Settled]:
        """Settled steps' outputs: those settled in this transaction from memory, the
        others from the table."""
        found: dict[StepKey, Settled] = {}
        rest: set[StepKey] = set()
        for key in keys:
            known = self._known.get(key)
            if known is None:
                rest.add(key)
            else:
                found[key] = Settled(known[0], loads(known[1]))
        if rest:
            found.update(self._rows.settled(rest))
        return found

    # -- failing ---------------------------------------------------------------------------

    def job_ended(self, job_id: int) -> None:
        """A job just changed state: if it is a task of a live run and ended discarded or
        cancelled, its step fails (with the job's last error) and so does its run. The run
        should have been locked first (lock_task_runs), before the job's row."""
        row = self._c.execute(self._f.ended_task, {"p_id": job_id}).first()
        if row is None:
            return  # not a task
        workflow_id, step_name, job_state, attempt, errors_text, step_state = row
        state = JobState(job_state)
        if state not in (JobState.DISCARDED, JobState.CANCELLED):
            return
        if step_state in ("completed", "skipped"):
            return  # its step settled already (a wait's timeout task that a signal beat)
        run = self.lock([workflow_id]).get(workflow_id)  # normally locked already
        if run is None or not run.live:
            return
        step = str(step_name)
        errors = decode_errors(errors_text)
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
        self._fail(run, step, last, error, attempt=int(attempt))

    def cancel_run(self, workflow_id: str) -> None:
        """Cancel a live run (RunStateError for a finished or in-process one; nothing for an
        unknown one): the sweep, ending the run cancelled."""
        run = self.lock([workflow_id]).get(workflow_id)
        if run is None:
            return
        stored = run_from_row(self._c.execute(self._f.run, {"p_workflow_id": workflow_id}).one())
        check_cancellable(stored, is_flow=run.is_flow)
        self._fail(run, None, None, cancelled_error(stored), state="cancelled")

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
        state: str = "failed",
        relay: bool = True,
    ) -> None:
        """End the run `state` (failed; cancelled by cancel_run): first its running children
        (locked, then swept, ending cancelled), then the culprit step failed, live steps
        cancelled, its jobs stopped; a child run's end relays to its parent (not when its
        parent's own sweep ends it: `relay` False)."""
        key = {"p_workflow_id": run.workflow_id}
        for row in self._c.execute(self._f.lock_children, key).all():
            child = self._found(row)
            if child.live:
                swept = _cancelled_with_parent(child.workflow_id, row[6], run.workflow_id)
                self._fail(child, None, None, swept, state="cancelled", relay=False)
        if culprit is not None:
            text = dumps(step_error, what="error")
            params = dict(key, p_step=culprit, p_error=text, p_attempt=attempt)
            self._c.execute(self._f.fail_step, params)
        self._c.execute(self._f.cancel_steps, key)
        self._c.execute(self._f.cancel_jobs, key)
        self._flag_executing(self._f.executing_jobs, key)
        error = dumps(run_error, what="error")
        self._c.execute(self._f.fail_run, dict(key, p_error=error, p_state=state))
        run.state = state
        self._run_finished(run.workflow_id)
        if relay and run.parent_id is not None:
            self._relay([run])

    def _fail_unstorable(self, run: LockedRun, step: StepPlan, exc: SerializationError) -> None:
        """A value the step produced (a map's list, a child's input) cannot be stored: the
        step fails, and with it the run, naming why."""
        error = {
            "kind": "SerializationError",
            "message": str(exc),
            "step": step.name,
            "traceback": "",
        }
        self._fail(run, step.name, error, error)

    def _flag_executing(self, statement: Any, params: Mapping[str, Any]) -> None:
        """Flag the executing jobs `statement` selects (id, meta) cancel_requested, so their
        instance stops them."""
        batch: list[dict[str, Any]] = []
        for job_id, meta in self._c.execute(statement, params).all():
            current = meta if isinstance(meta, dict) else {}
            if current.get("cancel_requested"):
                continue
            flagged = dumps({**current, "cancel_requested": True}, what="meta")
            batch.append({"p_id": job_id, "p_meta": flagged})
        if batch:  # one executemany (psycopg pipelines it), not one round trip per job
            self._c.execute(self._f.flag_cancel_many, batch)

    # -- signals, resume, restart, deadlines -------------------------------------------------

    def _stored_run(self, workflow_id: str) -> RunRecord:
        return run_from_row(self._c.execute(self._f.run, {"p_workflow_id": workflow_id}).one())

    def signal(
        self, plans: Mapping[str, FlowPlan], workflow_id: str, step: str, payload: str
    ) -> bool:
        """Deliver a signal (see FlowStore.signal_run): True when it completed the waiting
        step, False when stored for a wait not reached yet; SignalError otherwise."""
        run = self.lock([workflow_id]).get(workflow_id)
        plan = None
        if run is not None and run.is_flow:
            plan = plans.get(run.fingerprint or "")
            if plan is None and run.state != "running":
                raise SignalError(
                    f"signal {step!r}: run {workflow_id!r} of flow {run.workflow!r} is "
                    f"{run.state}; only a running run takes signals"
                )
            if plan is None:
                raise SignalError(
                    f"signal {step!r}: run {workflow_id!r} of flow {run.workflow!r} was "
                    f"started with definition {run.fingerprint!r}, which this process does "
                    f"not define; define flow {run.workflow!r} to signal its runs",
                    definition_unknown=True,
                )
        wait = check_signal(
            plan,
            workflow_id,
            step,
            flow=None if run is None else run.workflow,
            state=None if run is None else run.state,
        )
        assert run is not None
        run.plan = plan
        params = {"p_workflow_id": workflow_id, "p_step": step, "p_payload": payload}
        status_text, reason = self._c.execute(self._f.step_state, params).one()
        status = StepStatus(status_text)
        if status not in (StepStatus.PENDING, StepStatus.STARTED):
            raise SignalError(refused_signal(workflow_id, step, status, reason))
        if self._c.execute(self._f.insert_signal, params).first() is None:
            raise SignalError(refused_signal(workflow_id, step, StepStatus.COMPLETED, None))
        if status is StepStatus.PENDING or not self._complete_wait(workflow_id, step, payload):
            return False
        if wait.wait_timeout is not None:  # its timeout task: cancelled, or flagged if running
            self._c.execute(self._f.cancel_step_jobs, params)
            self._flag_executing(self._f.executing_step_jobs, params)
        self._settle([], [(run, wait)])
        return True

    def _check_stopped(self, what: str, workflow_id: str, plan: FlowPlan) -> LockedRun:
        """The locked run `what` (resume_run, restart_run) may act on: a finished
        distributed run of `plan`'s definition; RunStateError or DefinitionError else."""
        run = self.lock([workflow_id]).get(workflow_id)
        if run is None:
            raise RunStateError(f"{what}: run {workflow_id!r} is not stored")
        stored = self._stored_run(workflow_id)
        if not run.is_flow:
            raise RunStateError(
                f"{what}: run {workflow_id!r} of {stored.workflow!r} was not started with "
                "start_run; only distributed runs can be resumed or restarted"
            )
        if run.state == "running" or (what == "resume_run" and run.state == "completed"):
            wanted = "a failed or cancelled" if what == "resume_run" else "a finished"
            raise RunStateError(
                f"{what}: run {workflow_id!r} of flow {stored.workflow!r} is {run.state}; "
                f"only {wanted} run can be {'resumed' if what == 'resume_run' else 'restarted'}"
            )
        if plan_fingerprint(plan) != run.fingerprint:
            raise DefinitionError(
                f"{what}: run {workflow_id!r} of flow {stored.workflow!r} was started with "
                f"definition {run.fingerprint!r}, not the given plan's "
                f"{plan_fingerprint(plan)!r}"
            )
        return run

    def resume(self, plan: FlowPlan, workflow_id: str) -> None:
        """Continue a failed or cancelled run from its frontier (see FlowStore.resume_run)."""
        self._resume(self._check_stopped("resume_run", workflow_id, plan), plan)

    def _resume(self, run: LockedRun, plan: FlowPlan) -> None:
        """Reset the steps not completed or skipped to pending, run the ready ones again
        (maps keep their stored elements, failed children are resumed), cascading."""
        key = {"p_workflow_id": run.workflow_id}
        states = {str(name): str(state) for name, state in self._c.execute(self._f.step_rows, key)}
        kept = {name for name, state in states.items() if state in ("completed", "skipped")}
        again = [step for step in plan.steps if step.name not in kept]
        if again:
            self._c.execute(
                self._f.reset_step,
                [
                    dict(
                        key,
                        p_step=step.name,
                        p_deps=sum(1 for dep in step.deps if dep not in kept),
                    )
                    for step in again
                ],
            )
        # Tasks still executing from before the run ended (flagged then) end now: whatever
        # their instance reports later is fenced out, so they never speak for a resumed step.
        self._c.execute(self._f.end_leftovers, key)
        self._c.execute(self._f.resume_run, dict(key, p_steps=len(plan.steps)))
        run.state, run.plan, run.settled = "running", plan, len(kept)
        maps = [step.name for step in again if step.is_map]
        if maps:
            params = dict(key, p_steps=maps)
            for name, index in self._c.execute(self._f.output_indexes, params):
                self._kept_elements.setdefault((run.workflow_id, str(name)), set()).add(index)
        if any(step.kind == SUBFLOW for step in again):
            latest: dict[str, tuple[str, str, str | None]] = {}
            for name, child_id, state, fingerprint in self._c.execute(self._f.children, key):
                latest[str(name)] = (str(child_id), str(state), fingerprint)  # oldest first
            for step in again:
                found = latest.get(step.name)
                if step.child is None or found is None:
                    continue
                child_id, state, fingerprint = found
                # A failed or cancelled child of the same definition resumes; a running one
                # is waited for; otherwise a new child starts.
                if state == "running" or (
                    state in ("failed", "cancelled") and fingerprint == plan_fingerprint(step.child)
                ):
                    self._old_children[(run.workflow_id, step.name)] = (child_id, state)
        self._settle(_ready_steps(run, plan, kept), [])

    def restart(
        self,
        plan: FlowPlan,
        workflow_id: str,
        *,
        new_id: str,
        rerun: Collection[str],
        encoded_input: str,
        input: Any,
        definition: str,
    ) -> RunStart:
        """Start `new_id` as a restart of finished run `workflow_id` (see
        FlowStore.restart_run): its completed and skipped steps not in `rerun` are copied."""
        old = self._check_stopped("restart_run", workflow_id, plan)
        key = {"p_workflow_id": workflow_id}
        kept = [
            str(name)
            for name, state in self._c.execute(self._f.step_rows, key)
            if state in ("completed", "skipped") and name not in rerun
        ]
        return self.start(
            plan,
            workflow_id=new_id,
            encoded_input=encoded_input,
            input=input,
            max_attempts=old.max_attempts,
            definition=definition,
            restart_of=workflow_id,
            kept=kept,
        )

    def expire(self, workflow_id: str) -> bool:
        """Fail a running run whose deadline passed (children swept first); False when it
        is no longer running."""
        run = self.lock([workflow_id]).get(workflow_id)
        if run is None or not run.live:
            return False
        self._fail(run, None, None, deadline_error(self._stored_run(workflow_id)))
        return True


def _cancelled_with_parent(child_id: str, flow: str, parent_id: str) -> dict[str, Any]:
    """What a child run ended by its parent's failure sweep stores as its error."""
    return {
        "kind": "RunCancelled",
        "message": (
            f"run {child_id!r} of flow {flow!r} was cancelled with its parent run {parent_id!r}"
        ),
        "step": None,
        "traceback": "",
    }


def _ready_steps(
    run: LockedRun, plan: FlowPlan, kept: Collection[str]
) -> list[tuple[LockedRun, StepPlan]]:
    """The steps not kept whose dependencies are all kept (the roots when none is)."""
    if not kept:
        return [(run, step) for step in plan.roots]
    return [
        (run, step)
        for step in plan.steps
        if step.name not in kept and all(dep in kept for dep in step.deps)
    ]


def _needs_input(step: StepPlan) -> bool:
    """Whether deciding `step` needs the run's input (roots, root maps, `input` params)."""
    return (
        not step.deps
        or step.takes_input
        or (step.is_map and step.over is None)
        or step.until is not None  # a sleep's until may ask for `input`
    )
