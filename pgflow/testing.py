"""Helpers for testing code that inserts and runs pgflow jobs, with no database and no sleeping.

Two modes, both on an InMemoryBackend driven by a FakeClock:

- ``inline``: every inserted job runs at once in the caller's thread (and so do the jobs it
  inserts); a failing job's exception is raised from the insert, so a broken job fails the test.
- ``manual``: inserted jobs are only stored. Assert on them with `assert_enqueued` /
  `refute_enqueued`, then run them in the test's thread with `drain`.

    with pgflow.testing.manual() as t:
        signup(t.app, "ada@example.com")           # code under test calls t.app.insert(...)
        t.assert_enqueued(worker=SendWelcome, args={"email": "ada@example.com"})
        assert t.drain().completed == 1

Jobs run through `pgflow.runtime.execution.run_job`, the very function the real workers use,
so retries, discards, snoozes and errors are recorded exactly as in production.

Distributed graph runs work the same way: `t.app.start_run(flow, input)` enqueues the ready
steps as task jobs, and `drain` runs them as a worker would, including the tasks each
completion makes ready; `assert_step` checks a step's state (see pgflow.testing_flows).
`t.signal(run_id, "approval", payload)` delivers a signal; `drain(with_scheduled=True)` lets
time pass on the FakeClock: sleeps end, wait timeouts fire and run deadlines expire, in
the order their times come.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

import attrs

from pgflow.backend import FlowStore
from pgflow.clock import SYSTEM_CLOCK, Clock, FakeClock
from pgflow.errors import Discard, StepFailed
from pgflow.records import (
    WAITING_STATES,
    Job,
    JobState,
    NewJob,
    RunRecord,
    RunState,
    StepState,
    StepStatus,
)
from pgflow.testing_flows import UNSET, describe_run, describe_task, step_matches
from pgflow_backends.memory import InMemoryBackend

if TYPE_CHECKING:
    from pgflow.app import Pgflow
    from pgflow.backend import Backend, RunStart
    from pgflow.graph.shape import FlowPlan
    from pgflow.queue_config import Queue
    from pgflow.run_handle import RunHandle
    from pgflow.runtime.execution import Outcome
    from pgflow.worker import Worker

__all__ = [
    "DrainResult",
    "TestQueue",
    "inline",
    "manual",
    "testing_app",
]

Mode = Literal["inline", "manual"]

#: The instance id that jobs run by pgflow.testing are reserved by.
TESTING_INSTANCE = "pgflow-testing"
#: More jobs than this in one `drain` means a job snoozes or re-inserts itself forever.
DEFAULT_DRAIN_LIMIT = 10_000
#: Inline jobs inserting jobs that insert jobs... deeper than this is taken for a loop.
MAX_INLINE_DEPTH = 50
_ALL = 1_000_000_000
#: How far past a due time `drain(with_scheduled=True)` moves the clock (1 ms).
_TICK = 0.001
_EXPIRE_PAGE = 100


@attrs.frozen
class DrainResult:
    """How the jobs run by one `drain` ended, counted by outcome."""

    completed: int = 0
    retried: int = 0
    discarded: int = 0
    snoozed: int = 0
    cancelled: int = 0

    @property
    def total(self) -> int:
        """Jobs run in all."""
        return self.completed + self.retried + self.discarded + self.snoozed + self.cancelled

    @property
    def failed(self) -> int:
        """Runs that ended in an error (retried or discarded)."""
        return self.retried + self.discarded


@attrs.frozen
class _Ran:
    """One job run by the harness: its outcome and, when it raised, the exception."""

    job: Job
    outcome: str
    error: BaseException | None


class TestQueue:
    """A Pgflow app on an in-memory store, with assertions on its jobs and a way to run them.

    Build one with `manual()`, `inline()` or `testing_app()`; `app` is the `pgflow.Pgflow` to
    hand to the code under test, `clock` the FakeClock its store runs on.
    """

    __test__ = False  # not a pytest test class, despite its name

    def __init__(
        self,
        mode: Mode = "manual",
        *,
        app: Pgflow | None = None,
        clock: Clock | None = None,
        queues: Mapping[str, int | Queue] | None = None,
    ) -> None:
        if mode not in ("inline", "manual"):
            raise ValueError(f"pgflow.testing mode must be 'inline' or 'manual', not {mode!r}")
        self.mode: Mode = mode
        self._owned = app is None
        self._depth = 0  # inline jobs running inside inline jobs, right now
        self._patch: _InsertPatch | None = None
        if app is None:
            self.clock: Clock = clock if clock is not None else FakeClock()
            backend_cls = _InlineMemoryBackend if mode == "inline" else _HarnessMemoryBackend
            self.backend: Backend = backend_cls(clock=self.clock)
            if isinstance(self.backend, _InlineMemoryBackend):
                self.backend.harness = self
            from pgflow.app import Pgflow

            self.app: Pgflow = Pgflow(
                self.backend,
                queues=dict(queues) if queues is not None else None,
                instance_id=TESTING_INSTANCE,
                clock=self.clock,
            )
        else:
            if clock is not None:
                raise ValueError("pass either app= or clock=, not both: the app has its clock")
            self.app = app
            self.backend = app.backend
            # The store's own clock (a FakeClock for an InMemoryBackend built for tests).
            self.clock = getattr(self.backend, "clock", None) or SYSTEM_CLOCK
            if mode == "inline":
                self._patch = _InsertPatch(app, self)
        # The app's rule for which workers run, except that an unknown worker fails at once:
        # no deploy will bring it, and a snooze would hide the mistake from the test.
        from pgflow.runtime.worker_lookup import WorkerLookup

        self._lookup = WorkerLookup(self.app.worker_modules, snooze=None)

    # -- context manager -------------------------------------------------------------------

    def __enter__(self) -> TestQueue:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Undo what the harness set up: close its own store, unpatch a user's app."""
        if self._owned:
            self.backend.close()
        elif self._patch is not None:
            self._patch.undo()
            self._patch = None

    # -- inserting -------------------------------------------------------------------------

    def insert(self, job: NewJob) -> Job:
        """Insert one job through the app (in inline mode it has run when this returns)."""
        return self.app.insert(job)

    # -- assertions ------------------------------------------------------------------------

    def all_enqueued(
        self,
        *,
        worker: type[Worker] | str | None = None,
        args: Mapping[str, Any] | None = None,
        queue: str | None = None,
        priority: int | None = None,
        state: JobState | str | None = None,
    ) -> list[Job]:
        """Waiting jobs (available, scheduled or retryable) that match, in id order.

        `args` matches partially: every given key must be present with an equal value.
        `state` narrows to one state, finished ones included.
        """
        wanted_state = JobState(state) if state is not None else None
        worker_name = _worker_name(worker)
        found = []
        for job in self.backend.list_jobs(queue=queue, limit=_ALL):
            if wanted_state is not None:
                if job.state is not wanted_state:
                    continue
            elif job.state not in WAITING_STATES:
                continue
            if worker_name is not None and job.worker != worker_name:
                continue
            if priority is not None and job.priority != priority:
                continue
            if args is not None and not _args_match(job.args, args):
                continue
            found.append(job)
        return found

    def assert_enqueued(
        self,
        *,
        worker: type[Worker] | str | None = None,
        args: Mapping[str, Any] | None = None,
        queue: str | None = None,
        priority: int | None = None,
        state: JobState | str | None = None,
        count: int | None = None,
    ) -> Job:
        """Assert a matching job waits (exactly `count` of them when given); return the first."""
        found = self.all_enqueued(
            worker=worker, args=args, queue=queue, priority=priority, state=state
        )
        if found and (count is None or len(found) == count):
            return found[0]
        wanted = _describe_filters(worker, args, queue, priority, state)
        how_many = f"{count} job(s)" if count is not None else "a job"
        raise AssertionError(
            f"expected {how_many} enqueued with {wanted}, found {len(found)}.\n"
            f"{self._describe_waiting()}"
        )

    def refute_enqueued(
        self,
        *,
        worker: type[Worker] | str | None = None,
        args: Mapping[str, Any] | None = None,
        queue: str | None = None,
        priority: int | None = None,
        state: JobState | str | None = None,
    ) -> None:
        """Assert that no matching job waits."""
        found = self.all_enqueued(
            worker=worker, args=args, queue=queue, priority=priority, state=state
        )
        if found:
            wanted = _describe_filters(worker, args, queue, priority, state)
            listing = "\n".join(f"  {_describe_job(job)}" for job in found)
            raise AssertionError(
                f"expected no job enqueued with {wanted}, found {len(found)}:\n{listing}"
            )

    def _describe_waiting(self) -> str:
        waiting = [job for job in self.backend.list_jobs(limit=_ALL) if job.state in WAITING_STATES]
        if not waiting:
            return "Nothing is enqueued."
        lines = "\n".join(f"  {_describe_job(job)}" for job in waiting)
        return f"Enqueued jobs:\n{lines}"

    def assert_step(
        self,
        workflow_id: str,
        step: str,
        *,
        state: StepStatus | str | None = None,
        attempts: int | None = None,
        output: Any = UNSET,
        tasks_done: int | None = None,
        kind: str | None = None,
        child_id: str | None = UNSET,
    ) -> StepState:
        """Assert that step `step` of graph run `workflow_id` has the given attributes
        (`output` compared as stored, i.e. as JSON gives it back; `kind` "step", "map",
        "wait", "sleep" or "subflow"; `child_id` a sub-flow's child run); return its state."""
        wanted_state = StepStatus(state) if state is not None else None
        run = self._graph_run(workflow_id)
        found = run.steps.get(step)
        if found is None:
            raise AssertionError(f"run {workflow_id!r} has no step {step!r}.\n{describe_run(run)}")
        if step_matches(
            found, wanted_state, attempts, output, tasks_done, kind=kind, child_id=child_id
        ):
            return found
        wanted = _describe_step_filters(
            wanted_state, attempts, output, tasks_done, kind=kind, child_id=child_id
        )
        raise AssertionError(
            f"expected step {step!r} of run {workflow_id!r} with {wanted}.\n{describe_run(run)}"
        )

    def _graph_run(self, workflow_id: str) -> RunRecord:
        run = self.app.get_run(workflow_id)
        if run is None:
            known = ", ".join(repr(r.workflow_id) for r in self.backend.list_runs(limit=20))
            raise AssertionError(f"no run {workflow_id!r} is stored (runs: {known or 'none'})")
        return run

    def assert_run(
        self,
        workflow_id: str,
        *,
        state: RunState | str | None = None,
        output: Any = UNSET,
        error_kind: str | None = None,
    ) -> RunRecord:
        """Assert that run `workflow_id` is in `state`, with `output` (as stored) and an
        error of kind `error_kind` when given; return it (with its steps)."""
        run = self._graph_run(workflow_id)
        wanted_state = RunState(state) if state is not None else None
        kind = (run.error or {}).get("kind")
        if (
            (wanted_state is None or run.state is wanted_state)
            and (output is UNSET or run.output == output)
            and (error_kind is None or kind == error_kind)
        ):
            return run
        parts = []
        if wanted_state is not None:
            parts.append(f"state={wanted_state.value}")
        if output is not UNSET:
            parts.append(f"output={output!r}")
        if error_kind is not None:
            parts.append(f"error kind={error_kind!r}")
        found = f"output={run.output!r}, error={run.error!r}"
        raise AssertionError(
            f"expected run {workflow_id!r} with {', '.join(parts) or 'any attributes'}; "
            f"it has {found}.\n{describe_run(run)}"
        )

    # -- steering runs ---------------------------------------------------------------------

    def signal(self, workflow_id: str, name: str, payload: Any) -> bool:
        """`app.signal`: True when the wait was waiting (its dependents' tasks are then
        enqueued, and in inline mode run), False when the signal is kept for later."""
        return self.app.signal(workflow_id, name, payload)

    # -- running ---------------------------------------------------------------------------

    def drain(
        self,
        queue: str | None = None,
        *,
        with_scheduled: bool = False,
        with_recursion: bool = True,
        raise_on_failure: bool = True,
        limit: int = DEFAULT_DRAIN_LIMIT,
    ) -> DrainResult:
        """Run the due jobs of `queue` (all queues when None) in this thread; count outcomes.

        With `with_recursion`, jobs inserted by the drained jobs run too, until none is due.
        With `with_scheduled`, once nothing is due the FakeClock moves forward to the next
        scheduled or retryable job's time so it runs as well (retries, sleeps and wait
        timeouts included), and, draining all queues, to the next deadline of a running
        flow run, which then fails (as the leader would expire it); until nothing is left.
        The first job that raises (other than Discard/Snooze) has its exception re-raised
        unless `raise_on_failure` is False. More than `limit` runs raise RuntimeError: a
        job that snoozes or re-inserts itself forever would never end.
        A graph run's tasks are jobs too (see pgflow.testing_flows); a job cancelled after
        this drain claimed it (its run failed meanwhile) ends cancelled without running.
        """
        counts = dict.fromkeys(("completed", "retried", "discarded", "snoozed", "cancelled"), 0)
        runs = 0
        while True:
            self._expire_runs()
            self.backend.stage_jobs()
            batch = self._claim_all(queue)
            if not batch:
                if with_scheduled and self._advance_to_scheduled(queue):
                    continue
                break
            for index, job in enumerate(batch):
                runs += 1
                if runs > limit:
                    self._release(batch[index:])
                    raise RuntimeError(
                        f"pgflow.testing.drain ran more than {limit} jobs; a job may be "
                        "snoozing or inserting itself forever (raise limit= if not)"
                    )
                if self.backend.cancel_requested([job.id]):
                    # Cancelled since the batch was claimed (e.g. its flow run failed): a
                    # worker would not start it, so it ends cancelled without running.
                    self._release([job])
                    counts["cancelled"] += 1
                    continue
                ran = self._run(job)
                counts[ran.outcome] += 1
                if raise_on_failure and ran.error is not None:
                    self._release(batch[index + 1 :])
                    raise ran.error
            if not with_recursion:
                break
        return DrainResult(**counts)

    def _claim_all(self, queue: str | None) -> list[Job]:
        """Claim every available job of the queue(s) now, before any of them runs."""
        if queue is not None:
            queues = [queue]
        else:
            queues = sorted(
                {
                    count.queue
                    for count in self.backend.job_counts()
                    if count.state is JobState.AVAILABLE
                }
            )
        claimed: list[Job] = []
        for name in queues:
            claimed.extend(self.backend.claim_jobs(name, TESTING_INSTANCE, _ALL))
        claimed.sort(key=lambda job: (-job.priority, job.scheduled_at, job.id))
        return claimed

    def _release(self, jobs: Sequence[Job]) -> None:
        """Hand claimed jobs that will not run now back to the queue, attempt not counted."""
        for job in jobs:
            self.backend.snooze_job(job.ref, 0.0)

    def _advance_to_scheduled(self, queue: str | None) -> bool:
        """Move the FakeClock to the earliest time a waiting job of `queue` is scheduled
        for, or (all queues) a running flow run's deadline passes; False when none is left."""
        pending = [
            job.scheduled_at
            for job in self.backend.list_jobs(queue=queue, limit=_ALL)
            if job.state in (JobState.SCHEDULED, JobState.RETRYABLE)
        ]
        deadlines = []
        if queue is None and isinstance(self.backend, FlowStore):
            deadlines = [
                run.deadline_at
                for run in self.backend.list_runs(state=RunState.RUNNING, limit=_ALL)
                if run.deadline_at is not None
            ]
        if not pending and not deadlines:
            return False
        if not isinstance(self.clock, FakeClock):
            raise RuntimeError(
                "drain(with_scheduled=True) moves the test clock forward; it needs the "
                "store to run on a pgflow.FakeClock"
            )
        at = min(pending + deadlines)
        if not pending or min(deadlines, default=at) < min(pending):
            at += timedelta(seconds=_TICK)  # a deadline passes after its instant
        ahead = (at - self.clock.now()).total_seconds()
        if ahead <= 0:  # due already, yet nothing ran: moving time cannot help
            return False
        self.clock.advance(ahead)
        return True

    def _expire_runs(self) -> None:
        """Fail the running flow runs past their deadline, as the leader does."""
        if not isinstance(self.backend, FlowStore):
            return
        while len(self.backend.expire_runs(_EXPIRE_PAGE)) == _EXPIRE_PAGE:
            pass

    def _run(self, job: Job) -> _Ran:
        """Run one claimed job through the workers' own execution path."""
        from pgflow.runtime.execution import run_job

        queues = self.app.queue_options  # a RateLimited holds the partition they say
        if job.task is not None:  # a step of a distributed flow run
            outcome = _run_task(self.backend, job, self.clock, queues)
        else:
            outcome = run_job(
                self.backend,
                job,
                TESTING_INSTANCE,
                clock=self.clock,
                lookup=self._lookup,
                queues=queues,
            )
        error = _failure_of(outcome)
        if error is not None:
            error.add_note(
                f"(raised by pgflow job #{job.id} {job.worker}{describe_task(job)}, attempt "
                f"{job.attempt}/{job.max_attempts}, run by pgflow.testing)"
            )
        return _Ran(job, _OUTCOME_FIELDS[outcome.kind.value], error)

    def _run_flow_inline(self, workflow_id: str) -> None:
        """Inline mode: run the due tasks of run `workflow_id`, and those each completion makes
        ready, raising the first failure. Other jobs found due are handed back (their
        attempt not counted) for `drain`."""
        if self._depth >= MAX_INLINE_DEPTH:
            raise RuntimeError(
                f"pgflow.testing inline runs nested {MAX_INLINE_DEPTH} deep: a step seems to "
                "start runs forever; use manual mode and drain() to test such a chain"
            )
        self._depth += 1
        runs = 0
        try:
            while True:
                self._expire_runs()
                self.backend.stage_jobs()
                claimed = self._claim_all(None)
                family = self._family(self._root(workflow_id), claimed)
                ours = [job for job in claimed if job.task and job.task.workflow_id in family]
                self._release([job for job in claimed if job not in ours])
                if not ours:
                    return
                runs += len(ours)
                if runs > DEFAULT_DRAIN_LIMIT:
                    self._release(ours)
                    raise RuntimeError(
                        f"pgflow.testing ran more than {DEFAULT_DRAIN_LIMIT} tasks of run "
                        f"{workflow_id!r} inline; a step may be snoozing forever"
                    )
                for index, job in enumerate(ours):
                    ran = self._run(job)
                    if ran.error is not None:
                        self._release(ours[index + 1 :])
                        raise ran.error
        finally:
            self._depth -= 1

    def _root(self, workflow_id: str) -> str:
        """The top run of `workflow_id`'s sub-flow tree (a child's end relays to its parent)."""
        seen = {workflow_id}
        run = self.backend.get_run(workflow_id)
        while run is not None and run.parent_id is not None and run.parent_id not in seen:
            seen.add(run.parent_id)
            workflow_id = run.parent_id
            run = self.backend.get_run(workflow_id)
        return workflow_id

    def _family(self, workflow_id: str, jobs: Sequence[Job]) -> set[str]:
        """The runs among `jobs`' that are `workflow_id` or its sub-flow runs (at any depth):
        an inline run runs its children's tasks too."""
        family = {workflow_id}
        outside: set[str] = set()
        for job in jobs:
            if job.task is None:
                continue
            chain: list[str] = []
            current: str | None = job.task.workflow_id
            while current is not None and current not in family and current not in outside:
                chain.append(current)
                run = self.backend.get_run(current)
                current = None if run is None else run.parent_id
            (family if current in family else outside).update(chain)
        return family

    def _run_inserted(self, jobs: Sequence[Job]) -> None:
        """Inline mode: run what an insert just stored, raising the first failure."""
        by_queue: dict[str, int] = {}
        for job in jobs:
            if not job.conflict and job.state is JobState.AVAILABLE:
                by_queue[job.queue] = by_queue.get(job.queue, 0) + 1
        if by_queue and self._depth >= MAX_INLINE_DEPTH:
            raise RuntimeError(
                f"pgflow.testing inline jobs nested {MAX_INLINE_DEPTH} deep: a job seems to "
                "insert itself forever; use manual mode and drain() to test such a chain"
            )
        self._depth += 1
        try:
            for queue, how_many in by_queue.items():
                claimed = self.backend.claim_jobs(queue, TESTING_INSTANCE, how_many)
                for index, job in enumerate(claimed):
                    ran = self._run(job)
                    if ran.error is not None:
                        self._release(claimed[index + 1 :])
                        raise ran.error
        finally:
            self._depth -= 1


class _HarnessMemoryBackend(InMemoryBackend):
    """The store of a harness that built its own: nothing but `drain` runs its tasks, so
    waiting for a run that is still running would wait forever; it raises at once instead."""

    def wait_for_run(self, workflow_id: str, timeout: float | None) -> RunRecord | None:
        run = super().wait_for_run(workflow_id, 0.0)
        if run is not None and run.state is RunState.RUNNING:
            raise TimeoutError(
                f"run {workflow_id!r} is still running, and in pgflow.testing only drain() "
                "runs its tasks: drain first (with_scheduled=True for retries and start_delay)"
            )
        return run


class _InlineMemoryBackend(_HarnessMemoryBackend):
    """The store of an inline harness: runs every job it stores, right after storing it,
    and every due task of a graph run it starts.

    Scheduling of jobs is ignored (a job meant for later runs now), as in other inline test
    modes; a graph run's tasks waiting on a start_delay or a retry wait for `drain`.
    """

    harness: TestQueue

    def insert_jobs(self, jobs: Sequence[NewJob], *, connection: Any = None) -> list[Job]:
        due_now = [attrs.evolve(job, schedule_in=None, scheduled_at=None) for job in jobs]
        stored = super().insert_jobs(due_now, connection=connection)
        self.harness._run_inserted(stored)
        return stored

    def start_flow_run(
        self,
        plan: FlowPlan,
        *,
        workflow_id: str,
        input: Any,
        max_attempts: int,
        connection: Any = None,
        deadline: float | None = None,
    ) -> RunStart:
        started = super().start_flow_run(
            plan,
            workflow_id=workflow_id,
            input=input,
            max_attempts=max_attempts,
            connection=connection,
            deadline=deadline,
        )
        if started.created:
            self.harness._run_flow_inline(workflow_id)
        return started

    def signal_run(
        self,
        plans: Mapping[str, FlowPlan],
        workflow_id: str,
        step: str,
        payload: Any,
        *,
        connection: Any = None,
    ) -> bool:
        delivered = super().signal_run(plans, workflow_id, step, payload, connection=connection)
        if delivered:
            self.harness._run_flow_inline(workflow_id)
        return delivered

    def resume_run(self, plan: FlowPlan, workflow_id: str) -> RunRecord:
        resumed = super().resume_run(plan, workflow_id)
        self.harness._run_flow_inline(workflow_id)
        return resumed

    def restart_run(
        self,
        plan: FlowPlan,
        workflow_id: str,
        *,
        new_id: str,
        rerun: Collection[str],
        input: Any,
    ) -> RunStart:
        started = super().restart_run(plan, workflow_id, new_id=new_id, rerun=rerun, input=input)
        self.harness._run_flow_inline(new_id)
        return started


class _InsertPatch:
    """Inline mode on a user's own app: wrap its `insert` so stored jobs run at once, and
    its `start_run` (`signal`, `resume_run`, `restart_run`) so a run's due tasks do."""

    def __init__(self, app: Pgflow, harness: TestQueue) -> None:
        self._app = app
        original = app.insert
        original_start = app.start_run

        def insert(job_or_jobs: Any, *args: Any, **kwargs: Any) -> Any:
            stored = original(job_or_jobs, *args, **kwargs)
            harness._run_inserted(stored if isinstance(stored, list) else [stored])
            return stored

        def start_run(flow: object, input: Any, **kwargs: Any) -> RunHandle:
            handle = original_start(flow, input, **kwargs)
            harness._run_flow_inline(handle.workflow_id)
            return handle

        def steered(method: Callable[..., Any], new_run: bool) -> Callable[..., Any]:
            def call(workflow_id: str, *args: Any, **kwargs: Any) -> Any:
                result = method(workflow_id, *args, **kwargs)
                harness._run_flow_inline(result.workflow_id if new_run else workflow_id)
                return result

            return call

        app.insert = insert  # type: ignore[method-assign, assignment]
        app.start_run = start_run  # type: ignore[method-assign]
        app.signal = steered(app.signal, False)  # type: ignore[method-assign]
        app.resume_run = steered(app.resume_run, False)  # type: ignore[method-assign]
        app.restart_run = steered(app.restart_run, True)  # type: ignore[method-assign]

    def undo(self) -> None:
        for name in ("insert", "start_run", "signal", "resume_run", "restart_run"):
            with contextlib.suppress(AttributeError):
                delattr(self._app, name)


# -- entry points ----------------------------------------------------------------------------


def testing_app(
    mode: Mode = "manual",
    *,
    app: Pgflow | None = None,
    clock: Clock | None = None,
    queues: Mapping[str, int | Queue] | None = None,
) -> TestQueue:
    """A TestQueue in `mode`; use it as a context manager (or call `close()`)."""
    return TestQueue(mode, app=app, clock=clock, queues=queues)


@contextlib.contextmanager
def manual(
    app: Pgflow | None = None,
    *,
    clock: Clock | None = None,
    queues: Mapping[str, int | Queue] | None = None,
) -> Iterator[TestQueue]:
    """Jobs are stored, never run by themselves: assert on them, then `drain()`.

    Without `app`, a fresh Pgflow on an InMemoryBackend with a FakeClock is built.
    """
    with TestQueue("manual", app=app, clock=clock, queues=queues) as harness:
        yield harness


@contextlib.contextmanager
def inline(
    app: Pgflow | None = None,
    *,
    clock: Clock | None = None,
    queues: Mapping[str, int | Queue] | None = None,
) -> Iterator[TestQueue]:
    """Every inserted job runs at once in the caller's thread; its failure raises there.

    With a user's `app`, its `insert` is wrapped for the duration of the block.
    """
    with TestQueue("inline", app=app, clock=clock, queues=queues) as harness:
        yield harness


# -- helpers ---------------------------------------------------------------------------------


def _run_task(backend: Backend, job: Job, clock: Clock, queues: Mapping[str, Queue]) -> Outcome:
    """`testing_flows.run_task`, recording with the app's queue options, so a step raising
    RateLimited on a partitioned queue holds its partition as a worker's would."""
    from pgflow.runtime.execution import JobControl, OutcomeKind, _Run, record_outcomes
    from pgflow.runtime.flow_tasks import execute_task
    from pgflow.testing_flows import _off_the_loop, _unknown_definition

    unknown = _unknown_definition(job)
    if unknown is not None:
        failed = _Run(job, TESTING_INSTANCE, clock, JobControl()).failed(
            unknown, None, honour_cancel=False
        )
        outcome = attrs.evolve(failed, kind=OutcomeKind.DISCARDED, retry_in=None)
    else:
        outcome = _off_the_loop(
            lambda: execute_task(job, instance_id=TESTING_INSTANCE, backend=backend, clock=clock)
        )
    return record_outcomes(backend, [outcome], instance_id=TESTING_INSTANCE, queues=queues)[0]


def _worker_name(worker: type[Worker] | str | None) -> str | None:
    if worker is None or isinstance(worker, str):
        return worker
    options = getattr(worker, "options", None)
    name = getattr(options, "name", None)
    if not isinstance(name, str):
        raise TypeError(f"worker must be a pgflow.Worker subclass or its name, got {worker!r}")
    return name


def _args_match(actual: Mapping[str, Any], expected: Mapping[str, Any]) -> bool:
    """True when every key of `expected` is in `actual` with an equal value (JSON-wise)."""
    from pgflow.serialization import roundtrip

    wanted = roundtrip(dict(expected), what="args")
    return all(key in actual and actual[key] == value for key, value in wanted.items())


def _describe_filters(
    worker: type[Worker] | str | None,
    args: Mapping[str, Any] | None,
    queue: str | None,
    priority: int | None,
    state: JobState | str | None,
) -> str:
    parts = []
    if worker is not None:
        parts.append(f"worker={_worker_name(worker)}")
    if args is not None:
        parts.append(f"args containing {dict(args)!r}")
    if queue is not None:
        parts.append(f"queue={queue!r}")
    if priority is not None:
        parts.append(f"priority={priority}")
    if state is not None:
        parts.append(f"state={JobState(state).value}")
    return ", ".join(parts) or "any attributes"


def _describe_step_filters(
    state: StepStatus | None,
    attempts: int | None,
    output: Any,
    tasks_done: int | None,
    *,
    kind: str | None = None,
    child_id: str | None = UNSET,
) -> str:
    parts = []
    if kind is not None:
        parts.append(f"kind={kind!r}")
    if child_id is not UNSET:
        parts.append(f"child_id={child_id!r}")
    if state is not None:
        parts.append(f"state={state.value}")
    if attempts is not None:
        parts.append(f"attempts={attempts}")
    if tasks_done is not None:
        parts.append(f"tasks_done={tasks_done}")
    if output is not UNSET:
        parts.append(f"output={output!r}")
    return ", ".join(parts) or "any attributes"


def _describe_job(job: Job) -> str:
    when = f" scheduled_at={_iso(job.scheduled_at)}" if job.state is not JobState.AVAILABLE else ""
    return (
        f"#{job.id} {job.worker}{describe_task(job)} queue={job.queue!r} priority={job.priority} "
        f"state={job.state.value}{when} args={job.args!r}"
    )


def _iso(value: datetime) -> str:
    return value.isoformat(timespec="seconds")


_OUTCOME_FIELDS = {
    "completed": "completed",
    "retry": "retried",
    "discarded": "discarded",
    "snoozed": "snoozed",
    "cancelled": "cancelled",
}


def _failure_of(outcome: Outcome) -> BaseException | None:
    """The exception that made the job fail, or None (Discard, Snooze, cancel are no failures)."""
    exc = outcome.exception
    if exc is None or outcome.kind.value in ("snoozed", "cancelled"):
        return None
    if isinstance(exc, Discard) or (
        isinstance(exc, StepFailed) and isinstance(exc.reason, Discard)
    ):
        return None
    return exc
