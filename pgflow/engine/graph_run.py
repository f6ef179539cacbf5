"""Running a graph flow in this process: ready steps and map elements at the same time.

The caller's thread is the scheduler: it decides what each ready step becomes
(`pgflow.graph.ready.decide`), starts its tasks (one per map element), and settles steps as
their tasks report back (a deque and a signal lock the scheduler spins on briefly before
blocking). Sync tasks run on the shared runner threads, async ones on the shared event loop;
at most `max_parallel` tasks run at once. Each hand-off to another thread costs tens of
microseconds (more when that thread sits on another, idle CPU), so with no timeout to watch
and no backoff to wait, a sync task runs in the caller's thread instead when nothing could
be held up meanwhile: no task waits for a free slot and the other running steps feed no
step that this one does not (else their dependents would wait for it). That is the last
task started (its siblings go to the runners first, so they run concurrently with it), and
then any handed to a runner that has not woken up yet (`RunnerPool.take_back`). A sibling's
failure or retry is then acted on once the task in the caller's thread returns. A task
that fails is retried by itself (its step's max_attempts and backoff, else the run's), the
backoff waited on the executor's clock before the retry starts. When a task fails for good
the run stops starting work, abandons what still runs (async tasks are cancelled; a sync
call cannot be killed, its result is dropped) and raises.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Mapping
from typing import Any

from pgflow.abandoned import ABANDONED
from pgflow.backend import RunStore
from pgflow.backoff_policy import Backoff
from pgflow.clock import Clock
from pgflow.definition import Step, Workflow
from pgflow.engine.attempt import error_dict
from pgflow.engine.loop import LOOP, LoopReentryError
from pgflow.engine.run import _canonical
from pgflow.engine.runners import POOL, Runner, wait_for
from pgflow.errors import (
    DefinitionError,
    Discard,
    MaxAttemptsExceeded,
    SerializationError,
    StepFailed,
    StepTimedOut,
    WorkflowError,
)
from pgflow.graph.ready import Complete, Fail, Settled, Skip, Start, decide, run_output
from pgflow.graph.shape import StepPlan
from pgflow.records import RunRecord, RunState, StepOutcome, StepRecord, StepStatus
from pgflow.run_log import RunLog, logger
from pgflow.serialization import roundtrip
from pgflow.telemetry import hooks

_monotonic = time.monotonic
_allocate_lock = threading.Lock
_FOREVER = float("inf")
#: How often the scheduler looks again at tasks that may have started their call since.
_RECHECK = 0.05
_ID_LOCK = threading.Lock()


class _Task:
    """One call of a step (a map element, or the whole step), across its attempts."""

    __slots__ = (
        "abandoned",
        "attempt",
        "counted",
        "element",
        "envelope",
        "finished",
        "future",
        "plan",
        "runner",
        "started_at",
        "started_mono",
        "step",
    )

    def __init__(
        self, step: Step, plan: StepPlan, element: int | None, envelope: dict[str, Any]
    ) -> None:
        self.step = step
        self.plan = plan
        self.element = element
        self.envelope = envelope
        self.attempt = 0
        self.abandoned = False
        self.counted = False  # abandoned mid-call: in ABANDONED.steps until the call returns
        self.finished = False
        self.future: concurrent.futures.Future[Any] | None = None
        # The runner it was handed to, while the scheduler may still take it back.
        self.runner: Runner | None = None
        self.started_mono: float | None = None  # set once the call (not its backoff) began
        self.started_at: Any = None


class GraphRun:
    """One in-process run of a graph workflow (see module docstring)."""

    def __init__(
        self,
        workflow: Workflow,
        input: Any,
        *,
        store: RunStore | None,
        clock: Clock,
        max_attempts: int,
        timeout: float | None,
        step_timeout: float | None,
        backoff: Backoff,
        workflow_id: str | None,
        log_context: Mapping[str, Any] | None,
        max_parallel: int,
    ) -> None:
        self.workflow = workflow
        self.plan = workflow.plan
        handlerless = [step for step in self.plan.steps if step.handlerless]
        if handlerless:
            step = handlerless[0]
            raise DefinitionError(
                f"workflow {workflow.name!r} step {step.name!r} is a {step.kind} step, which "
                "needs a distributed run (app.start_run, or pgflow.testing in tests): it "
                "waits without holding a thread, which pgflow.execute cannot do"
            )
        self.input = input
        self.store = store
        self.clock = clock
        self.max_attempts = max_attempts
        self.timeout = timeout
        self.step_timeout = step_timeout
        self.backoff = backoff
        self._workflow_id = workflow_id
        self.max_parallel = max_parallel
        self.log = RunLog(workflow.name, self._get_workflow_id, max_attempts, log_context)
        self._steps = {step.name: step for step in workflow.steps}
        self._lock = _allocate_lock()
        # Tasks report here; `_signal` is released (once) when a report may be waiting.
        self._events: deque[tuple[_Task, bool, Any]] = deque()
        self._signal = _allocate_lock()
        self._signal.acquire()
        self._signalled = False
        # A step with no timeout to watch may run in this thread when nothing else runs: the
        # scheduler would only wait for it. Not on the shared loop, where a sync step's
        # coroutine could not be awaited.
        self._dependents: dict[str, frozenset[str]] = {}
        self._in_loop = LOOP.is_current()
        self._inline = timeout is None and step_timeout is None and not self._in_loop
        self._waiting: deque[tuple[_Task, float]] = deque()  # (task, backoff delay)
        self._running: set[_Task] = set()
        self._busy: dict[str, int] = {}  # running tasks per step
        self._handed: deque[_Task] = deque()  # handed to runners, maybe to take back
        self._settled: dict[str, Settled] = {}
        self._left: dict[str, int] = {}  # unfinished tasks per started step
        self._outputs: dict[str, list[Any]] = {}
        self.attempt = 1  # the stored run's attempt: fences this caller's writes
        # With tracing on: the caller's trace context, the parent of every step's span.
        observer = hooks.OBSERVER
        self._trace_parent = None if observer is None else observer.capture()

    @property
    def workflow_id(self) -> str:
        """The run's id: the caller's, else a uuid made on first use (most runs never ask)."""
        if self._workflow_id is None:
            made = str(uuid.uuid4())
            with _ID_LOCK:  # a runner logging may ask at the same time: one id wins
                if self._workflow_id is None:
                    self._workflow_id = made
        return self._workflow_id

    def _get_workflow_id(self) -> str:
        return self.workflow_id

    # -- the scheduler (caller's thread) -----------------------------------------------------

    def execute(self) -> Any:
        if self._in_loop and any(step.is_async for step in self.workflow.steps):
            raise LoopReentryError(
                f"pgflow.execute() of flow {self.workflow.name!r} was called from inside an "
                "async step and the flow has async steps: the shared loop would wait for "
                "itself. Run the nested flow from a sync step, or in a thread "
                "(asyncio.to_thread)"
            )
        if self.store is not None:
            stored = self._open()
            if stored is not None:
                return stored.output
        deadline = None if self.timeout is None else _monotonic() + self.timeout
        try:
            for plan in self.plan.roots:
                self._ready(plan)
            total = len(self.plan.steps)
            while len(self._settled) < total:
                self._launch()
                if len(self._settled) < total and not self._take_back_one():
                    self._wait_one(deadline)
        except WorkflowError as error:
            self._stop()
            self._fail(error)
        except SerializationError as exc:
            self._stop()
            if self.store is not None:
                with contextlib.suppress(Exception):  # best effort: this error is the one to report
                    failure = {"kind": "SerializationError", "message": str(exc), "traceback": ""}
                    self.store.finish_run(
                        self.workflow_id, self.attempt, RunState.FAILED, error=failure
                    )
            raise
        except BaseException:
            self._stop()
            raise
        output = run_output(self.plan, self._settled)
        if self.store is not None:
            self.store.finish_run(self.workflow_id, self.attempt, RunState.COMPLETED, output=output)
        self.log.run_completed(self.attempt)
        return output

    def _ready(self, plan: StepPlan) -> None:
        """Decide what a step whose dependencies all settled becomes, and act on it."""
        # `decide` reads only this step's dependencies, which have all settled.
        decision = decide(self.plan, plan, self._settled, self.input)
        step = self._steps[plan.name]
        if (
            isinstance(decision, Start)
            and step.when is not None
            and not self._when(step, decision.arguments[0])
        ):
            decision = Skip("when returned false")
        if isinstance(decision, Start):
            self._left[plan.name] = len(decision.arguments)
            self._outputs[plan.name] = [None] * len(decision.arguments)
            delay = float(step.start_delay or 0.0)  # waited on the clock, like a backoff
            for index, envelope in enumerate(decision.arguments):
                task = _Task(step, plan, index if plan.is_map else None, envelope)
                self._waiting.append((task, delay))
        elif isinstance(decision, Complete):
            self._settle(plan, Settled(StepStatus.COMPLETED, decision.output))
        elif isinstance(decision, Skip):
            self._log_skipped(plan.name, decision.reason)
            if self.store is not None:
                skipped = _Task(step, plan, None, {})
                reason = {"kind": "Skipped", "message": decision.reason, "traceback": ""}
                self._record(skipped, StepOutcome.SKIPPED, error=reason)
            self._settle(plan, Settled(StepStatus.SKIPPED))
        elif isinstance(decision, Fail):
            raise StepFailed(
                workflow_id=self.workflow_id,
                workflow=self.workflow.name,
                step=plan.name,
                reason=TypeError(decision.error["message"]),
                attempt=1,
            )

    def _when(self, step: Step, envelope: dict[str, Any]) -> bool:
        """Call the step's `when`; an error in it fails the step (no retry)."""
        try:
            return self._call_when(step, envelope)
        except Exception as exc:
            raise StepFailed(
                workflow_id=self.workflow_id,
                workflow=self.workflow.name,
                step=step.name,
                reason=exc,
                attempt=1,
            ) from exc

    def _call_when(self, step: Step, envelope: dict[str, Any]) -> bool:
        """Call `when` with the arguments it declares (for a map, its first element's)."""
        assert step.when is not None
        available = dict(envelope["kwargs"])
        first = step.signature.first
        if envelope["args"] and first is not None:
            available[first] = envelope["args"][0]
        signature = step.when_signature
        if signature is None or not signature.known:
            return bool(step.when(*envelope["args"], **envelope["kwargs"]))
        if signature.var_keyword:
            return bool(step.when(**available))
        return bool(step.when(**{k: v for k, v in available.items() if k in signature.names}))

    def _settle(self, plan: StepPlan, settled: Settled) -> None:
        self._settled[plan.name] = settled
        for name in plan.dependents:
            dependent = self.plan.step(name)
            if all(dep in self._settled for dep in dependent.deps):
                self._ready(dependent)

    def _launch(self) -> None:
        while self._waiting and len(self._running) < self.max_parallel:
            task, delay = self._waiting.popleft()
            task.attempt += 1
            here = (
                self._inline and delay <= 0 and not task.step.is_async and task.step.timeout is None
            )
            if here and not self._waiting and self._may_run_here(task):
                # The last task to start: calling it here saves a thread hand-off, while
                # the others (started first) run on the runners.
                self._add_running(task)
                self._call_inline(task)
                continue
            self._add_running(task)
            if not task.step.is_async and (self.timeout or self._timeout_of(task.step)):
                # A sync call that times out cannot be killed: bound how many are left behind.
                ABANDONED.check_room(functools.partial(self._describe, task))
            if task.step.is_async:
                task.future = LOOP.submit(self._call_async(task, delay))
                task.future.add_done_callback(functools.partial(self._async_done, task))
            else:
                runner = POOL.run(functools.partial(self._call_sync, task, delay))
                if here:
                    task.runner = runner
                    self._handed.append(task)

    def _add_running(self, task: _Task) -> None:
        self._running.add(task)
        name = task.plan.name
        self._busy[name] = self._busy.get(name, 0) + 1

    def _discard_running(self, task: _Task) -> None:
        if task in self._running:
            self._running.remove(task)
            name = task.plan.name
            left = self._busy[name] - 1
            if left:
                self._busy[name] = left
            else:
                del self._busy[name]

    def _may_run_here(self, task: _Task) -> bool:
        """Whether `task` may run in this thread: no other running task could make work
        ready before it ends (their steps' dependents are all dependents of its step), so
        the scheduler, busy meanwhile, would hold nothing up but a retry or a failure."""
        name = task.plan.name
        mine = self._dependents_of(name)
        return all(other == name or self._dependents_of(other) <= mine for other in self._busy)

    def _dependents_of(self, name: str) -> frozenset[str]:
        found = self._dependents.get(name)
        if found is None:
            found = self._dependents[name] = frozenset(self.plan.step(name).dependents)
        return found

    def _take_back_one(self) -> bool:
        """Run here a task handed to a runner that has not woken up yet (when it may run
        here, see `_may_run_here`), instead of waiting for that runner; True if one ran."""
        if self._events or self._waiting:
            return False  # reports to act on first, or tasks waiting for a free slot
        handed = self._handed
        while handed:
            task = handed[-1]  # the latest handed: its runner is the least likely awake
            runner = task.runner
            if runner is None or task not in self._running:
                handed.pop()
                continue
            if not self._may_run_here(task):
                return False
            handed.pop()
            task.runner = None
            if POOL.take_back(runner):
                self._call_inline(task)
                return True
        return False

    def _wait_one(self, deadline: float | None) -> None:
        """Wait for one task to report, or for a deadline; act on what happened."""
        now = _monotonic()
        wake = deadline
        for task in self._running:
            limit = self._timeout_of(task.step)
            if limit is not None:
                # Not started yet (backoff, or a runner still waking): look again soon.
                due = now + limit if task.started_mono is None else task.started_mono + limit
                wake = due if wake is None else min(wake, due)
        # Re-check at least every 50 ms when a timeout applies: a task may start its call
        # after we looked.
        event = self._next_event(_FOREVER if wake is None else min(max(wake - now, 0.0), _RECHECK))
        if event is None:
            self._expire(deadline)
            return
        self._handle(*event)

    def _next_event(self, timeout: float) -> tuple[_Task, bool, Any] | None:
        """The next task report, waiting up to `timeout` seconds for one (spinning briefly
        first: a blocked thread takes tens of microseconds to wake); None if none came."""
        events = self._events
        until = _monotonic() + timeout
        while not events:
            if not wait_for(self._signal, max(until - _monotonic(), 0.0)):
                return None
            with self._lock:
                self._signalled = False
        return events.popleft()

    def _report(self, task: _Task, ok: bool, value: Any) -> None:
        """Hand a task's outcome to the scheduler (any thread)."""
        self._events.append((task, ok, value))
        with self._lock:
            if not self._signalled:
                self._signalled = True
                self._signal.release()

    def _handle(self, task: _Task, ok: bool, value: Any) -> None:
        if task.abandoned or task not in self._running:
            return
        self._discard_running(task)
        if ok:
            self._task_completed(task, value)
        else:
            self._task_failed(task, value, timed_out=None)

    def _call_inline(self, task: _Task) -> None:
        """Run a sync task in the scheduler's thread (nothing else runs, no timeout applies)."""
        # Nothing can abandon it meanwhile: no lock needed to mark its start.
        task.started_mono = _monotonic()
        if self.store is not None:
            task.started_at = self.clock.now()
        self._log_started(task)
        envelope = task.envelope
        observer = hooks.OBSERVER
        try:
            if observer is None:
                output = task.step.fn(*envelope["args"], **envelope["kwargs"])
                if asyncio.iscoroutine(output):
                    output = LOOP.submit(output).result()
            else:
                output = self._traced_call(observer, task)
        except BaseException as exc:
            task.finished = True
            self._handle(task, False, exc)
            return
        task.finished = True
        self._handle(task, True, output)

    def _expire(self, deadline: float | None) -> None:
        now = _monotonic()
        for task in list(self._running):
            limit = self._timeout_of(task.step)
            started = task.started_mono
            if limit is not None and started is not None and now >= started + limit:
                self._abandon(task)
                self._task_failed(task, None, timed_out=limit)
                return
        if deadline is not None and now >= deadline and self._running:
            task = next(iter(self._running))
            self._abandon(task)
            assert self.timeout is not None
            self._task_failed(task, None, timed_out=self.timeout, final=True)

    def _timeout_of(self, step: Step) -> float | None:
        return step.timeout if step.timeout is not None else self.step_timeout

    def _abandon(self, task: _Task) -> None:
        with self._lock:
            task.abandoned = True
            if not task.step.is_async and task.started_mono is not None and not task.finished:
                task.counted = True
                ABANDONED.add_step(self._describe(task), self._fields(task))
        self._discard_running(task)
        if task.future is not None:
            task.future.cancel()

    def _task_completed(self, task: _Task, output: Any) -> None:
        plan = task.plan
        started = task.started_mono
        self.log.step_completed(
            plan.name, task.attempt, 0.0 if started is None else _monotonic() - started
        )
        if self.store is not None:
            self._record(task, StepOutcome.COMPLETED, output=output)
        index = task.element or 0
        self._outputs[plan.name][index] = output
        self._left[plan.name] -= 1
        if self._left[plan.name] == 0:
            outputs = self._outputs.pop(plan.name)
            self._settle(
                plan, Settled(StepStatus.COMPLETED, outputs if plan.is_map else outputs[0])
            )

    def _task_failed(
        self,
        task: _Task,
        exc: BaseException | None,
        *,
        timed_out: float | None,
        final: bool = False,
    ) -> None:
        """Retry the task if it has attempts left, else fail the run."""
        step = task.step
        error: StepFailed | StepTimedOut
        if timed_out is not None:
            error = StepTimedOut(
                workflow_id=self.workflow_id,
                workflow=self.workflow.name,
                step=step.name,
                timeout=timed_out,
                attempt=task.attempt,
            )
            stored = {
                "kind": "StepTimedOut",
                "message": f"step {step.name!r} timed out after {timed_out:g}s",
                "traceback": "",
            }
            outcome = StepOutcome.TIMED_OUT
        else:
            assert exc is not None
            if not isinstance(exc, Exception) or isinstance(exc, LoopReentryError):
                raise exc
            error = StepFailed(
                workflow_id=self.workflow_id,
                workflow=self.workflow.name,
                step=step.name,
                reason=exc,
                attempt=task.attempt,
            )
            stored = error_dict(exc)
            outcome = StepOutcome.FAILED
        if self.store is not None:
            self._record(task, outcome, error=stored)
        allowed = step.max_attempts or self.max_attempts
        reason = exc if exc is not None else error
        if final or isinstance(exc, Discard) or task.attempt >= allowed:
            if task.attempt > 1 and not isinstance(exc, Discard):
                raise MaxAttemptsExceeded(
                    workflow_id=self.workflow_id,
                    workflow=self.workflow.name,
                    attempts=task.attempt,
                    reason=error,
                ) from error
            raise error
        delay = (step.backoff or self.backoff).delay(task.attempt)
        self.log.attempt_failed(step.name, task.attempt, reason, delay)
        retry = _Task(step, task.plan, task.element, task.envelope)
        retry.attempt = task.attempt
        self._waiting.append((retry, delay))

    def _stop(self) -> None:
        """Start nothing more and abandon what still runs."""
        self._waiting.clear()
        for task in list(self._running):
            self._abandon(task)

    def _fail(self, error: WorkflowError) -> Any:
        inner = error.reason if isinstance(error, MaxAttemptsExceeded) else error
        step = getattr(inner, "step", "")
        attempt = getattr(inner, "attempt", 1)
        cause = inner.reason if isinstance(inner, StepFailed) else inner
        if self.store is not None:
            self.store.finish_run(
                self.workflow_id,
                self.attempt,
                RunState.FAILED,
                error={
                    "kind": type(error).__name__,
                    "message": str(error),
                    "step": step,
                    "attempt": attempt,
                    "traceback": "",
                },
            )
        self.log.run_failed(step, attempt, cause)
        if isinstance(error, StepFailed):
            raise error from error.reason
        raise error

    # -- the tasks (runner threads, the event loop) ------------------------------------------

    def _begin(self, task: _Task) -> bool:
        with self._lock:
            if task.abandoned:
                return False
            task.started_mono = _monotonic()
            if self.store is not None:
                task.started_at = self.clock.now()
        self._log_started(task)
        return True

    def _call_sync(self, task: _Task, delay: float) -> None:
        if delay > 0:
            self.clock.sleep(delay)
        if not self._begin(task):
            return
        envelope = task.envelope
        observer = hooks.OBSERVER
        try:
            if observer is None:
                output = task.step.fn(*envelope["args"], **envelope["kwargs"])
                if asyncio.iscoroutine(output):
                    output = LOOP.submit(output).result()
            else:
                output = self._traced_call(observer, task)
        except BaseException as exc:
            self._report(task, False, exc)
            return
        finally:
            with self._lock:
                task.finished = True
                counted = task.counted
            if counted:
                ABANDONED.end_step()
        self._report(task, True, output)

    async def _call_async(self, task: _Task, delay: float) -> Any:
        if delay > 0:
            await asyncio.to_thread(self.clock.sleep, delay)
        if not self._begin(task):
            return None
        envelope = task.envelope
        observer = hooks.OBSERVER
        if observer is None:
            return await task.step.fn(*envelope["args"], **envelope["kwargs"])
        with observer.step(*self._span_of(task)):
            return await task.step.fn(*envelope["args"], **envelope["kwargs"])

    def _traced_call(self, observer: hooks.Observer, task: _Task) -> Any:
        """Call a sync step (a coroutine it returns runs on the shared loop) in its span."""
        envelope = task.envelope
        with observer.step(*self._span_of(task)):
            output = task.step.fn(*envelope["args"], **envelope["kwargs"])
            if asyncio.iscoroutine(output):
                output = LOOP.submit(output).result()
            return output

    def _span_of(self, task: _Task) -> tuple[Any, str, str, str, int]:
        """What a step's span is made of: parent context, flow, run, step and attempt."""
        return (
            self._trace_parent,
            self.workflow.name,
            self.workflow_id,
            task.step.name,
            task.attempt,
        )

    def _async_done(self, task: _Task, future: concurrent.futures.Future[Any]) -> None:
        if future.cancelled():
            return
        exc = future.exception()
        if exc is not None:
            self._report(task, False, exc)
        else:
            self._report(task, True, future.result())

    def _describe(self, task: _Task) -> str:
        where = "" if task.element is None else f" element {task.element}"
        return (
            f"workflow {self.workflow.name!r} run {self.workflow_id} step {task.step.name!r}{where}"
        )

    def _fields(self, task: _Task) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "workflow_id": self.workflow_id,
            "workflow": self.workflow.name,
            "step": task.step.name,
            "attempt": task.attempt,
        }
        if task.element is not None:
            fields["element"] = task.element
        return fields

    def _log_started(self, task: _Task) -> None:
        if task.element is None:
            self.log.step_started(task.step.name, task.attempt)
        elif logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "element %d of step %s of workflow %s started (attempt %d)",
                task.element,
                task.step.name,
                self.workflow.name,
                task.attempt,
                extra=self._fields(task),
            )

    # -- recording ---------------------------------------------------------------------------

    def _open(self) -> RunRecord | None:
        """Create the run; or return it when it already completed; or start its next attempt
        (from the first step: graph runs do not resume from checkpoints in-process yet)."""
        store = self.store
        assert store is not None
        try:
            existing, created = store.start_run(
                workflow_id=self.workflow_id,
                workflow=self.workflow.name,
                input=self.input,
                max_attempts=self.max_attempts,
                fingerprint=self.workflow.fingerprint,
                definition=self.workflow.definition,
            )
        except SerializationError as exc:
            raise SerializationError(
                f"workflow {self.workflow.name!r}: input is not JSON and cannot be recorded: {exc}",
                path=exc.path,
            ) from exc
        if created:
            return None
        name, workflow_id = self.workflow.name, self.workflow_id
        if existing.workflow != name:
            raise WorkflowError(
                f"run {workflow_id} belongs to workflow {existing.workflow!r}, not {name!r}",
                workflow_id=workflow_id,
            )
        if _canonical(existing.input) != _canonical(roundtrip(self.input, what="input")):
            raise WorkflowError(
                f"run {workflow_id} of flow {name!r} was started with another input; use a "
                "new workflow_id for a new input",
                workflow_id=workflow_id,
            )
        if existing.state is RunState.COMPLETED:
            self.log.run_completed(existing.attempt)
            return existing
        if existing.fingerprint is not None and existing.fingerprint != self.workflow.fingerprint:
            raise DefinitionError(
                f"run {workflow_id} of flow {name!r} cannot run again: its definition changed "
                "since the run started; start a new run under a new workflow_id"
            )
        if existing.state is RunState.RUNNING or not store.start_attempt(
            workflow_id, existing.attempt + 1
        ):
            raise WorkflowError(
                f"run {workflow_id} of flow {name!r} is being executed by another caller",
                workflow_id=workflow_id,
            )
        self.attempt = existing.attempt + 1
        return None

    def _record(
        self,
        task: _Task,
        outcome: StepOutcome,
        *,
        output: Any = None,
        error: dict[str, Any] | None = None,
    ) -> None:
        assert self.store is not None
        plan = task.plan
        record = StepRecord(
            workflow_id=self.workflow_id,
            step=plan.name,
            index=plan.index,
            # The run's attempt (which fences writes); a step's retries are further records.
            attempt=self.attempt,
            outcome=outcome,
            started_at=task.started_at or self.clock.now(),
            duration=0.0 if task.started_mono is None else _monotonic() - task.started_mono,
            output=output,
            error=error,
            element=task.element,
        )
        try:
            self.store.record_step(record)
        except SerializationError as exc:
            raise SerializationError(
                f"workflow {self.workflow.name!r} step {plan.name!r}: output is not JSON and "
                f"cannot be recorded: {exc}",
                path=exc.path,
            ) from exc

    def _log_skipped(self, step: str, reason: str) -> None:
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "step %s of workflow %s skipped: %s",
                step,
                self.workflow.name,
                reason,
                extra={
                    "workflow_id": self.workflow_id,
                    "workflow": self.workflow.name,
                    "step": step,
                },
            )
