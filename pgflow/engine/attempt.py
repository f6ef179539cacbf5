"""One attempt of a run: the steps from a checkpoint on, inline or under a deadline.

Without any timeout the steps run inline in the caller's thread (pure function calls).
With one, they run on a runner thread while the caller supervises: at the deadline the
caller flips `abandoned` (under `lock`) and returns. The runner checks that flag, under the
same lock, before starting a step and before recording or keeping a result, so an abandoned
attempt never runs a further step and nothing it produces afterwards is used or stored.
Supervised steps are therefore recorded from the runner thread: a RunStore must be usable
from several threads (the built-in backends are).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
import traceback
from collections.abc import Awaitable
from datetime import datetime
from types import CoroutineType
from typing import TYPE_CHECKING, Any

from pgflow.abandoned import ABANDONED
from pgflow.engine.loop import LOOP, LoopReentryError, refuse_reentry
from pgflow.engine.runners import POOL, wait_for
from pgflow.errors import SerializationError, WorkflowError
from pgflow.records import StepOutcome, StepRecord
from pgflow.stored_errors import clean_error
from pgflow.telemetry import hooks

if TYPE_CHECKING:
    from pgflow.definition import Step
    from pgflow.engine.run import Run

_monotonic = time.monotonic
_perf = time.perf_counter
_new_lock = threading.Lock


def describe(exc: BaseException) -> str:
    """str(exc), or a stand-in when the exception's own __str__ fails."""
    try:
        return str(exc)
    except Exception:
        return f"<unprintable {type(exc).__name__}>"


def error_dict(exc: BaseException) -> dict[str, Any]:
    """How a failure is stored: its kind, message and formatted traceback (JSON-safe)."""
    try:
        formatted = "".join(traceback.format_exception(exc))
    except Exception:
        formatted = ""
    return clean_error(
        {"kind": type(exc).__name__, "message": describe(exc), "traceback": formatted}
    )


async def _await(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


class Attempt:
    """Runs steps `index..` of `run` with `value` as the first input, as attempt `number`.

    After it ends, exactly one of these describes the outcome: `fatal` (an error that is not
    a step failure, re-raised as is), `failure` (the exception a step raised), `timed_out`
    (the timeout, in seconds, that expired), or none of them (every step completed). In
    every case `index` and `value` are the checkpoint: the first step not completed, and
    its input, which is where a retry resumes.
    """

    __slots__ = (
        "_done",
        "abandoned",
        "counted",
        "failure",
        "fatal",
        "finished",
        "future",
        "index",
        "lock",
        "number",
        "run",
        "running",
        "started_at",
        "started_mono",
        "started_perf",
        "timed_out",
        "value",
    )

    def __init__(self, run: Run, number: int, index: int, value: Any) -> None:
        self.run = run
        self.number = number
        self.index = index
        self.value = value
        self.lock = _new_lock()
        self.abandoned = False
        self.counted = False  # abandoned while its runner still ran: in ABANDONED.steps
        self.finished = False
        self.running = False
        self.failure: BaseException | None = None
        self.fatal: BaseException | None = None
        self.timed_out: float | None = None
        self.future: concurrent.futures.Future[Any] | None = None
        self.started_at: datetime | None = None
        self.started_mono = 0.0
        self.started_perf = 0.0
        self._done: Any = None

    # -- running the steps (caller's thread inline, or a runner thread) ---------------------

    def run_inline(self) -> None:
        """Run every remaining step in this thread; the outcome lands in the attributes."""
        try:
            self._steps()
        except BaseException as exc:
            self.fatal = exc

    def _run_on_runner(self) -> None:
        try:
            self._steps()
        except BaseException as exc:
            with self.lock:
                if not self.abandoned:
                    self.fatal = exc
        finally:
            with self.lock:
                self.finished = True
                counted = self.counted
            if counted:
                ABANDONED.end_step()
            self._done.release()

    def _steps(self) -> None:
        run = self.run
        steps = run.workflow.steps
        store = run.store
        log = run.log
        lock = self.lock
        number = self.number
        count = len(steps)
        index = self.index
        value = self.value
        while index < count:
            step = steps[index]
            with lock:
                if self.abandoned:
                    return
                self.running = True
                self.started_mono = _monotonic()
                if store is not None:
                    self.started_at = run.clock.now()
                started = self.started_perf = _perf()
            log.step_started(step.name, number)
            try:
                observer = hooks.OBSERVER
                if observer is None:
                    output = step.fn(value)
                    if step.is_async or type(output) is CoroutineType:
                        output = self._wait_async(output)
                else:
                    output = self._traced(observer, step, value)
            except BaseException as exc:
                if not isinstance(exc, (Exception, asyncio.CancelledError)) or isinstance(
                    exc, LoopReentryError
                ):
                    raise  # KeyboardInterrupt, SystemExit, misuse: not a step failure
                self._failed(index, exc, _perf() - started)
                return
            duration = _perf() - started
            with lock:
                if self.abandoned:
                    return  # finished after its deadline: the result is dropped
                self.running = False
                if store is not None:
                    self._record(index, StepOutcome.COMPLETED, duration, output=output)
                index += 1
                self.index = index
                self.value = value = output
            log.step_completed(step.name, number, duration)

    def _traced(self, observer: hooks.Observer, step: Step, value: Any) -> Any:
        """A step call inside its span (tracing on), under the run's caller's context."""
        run = self.run
        name = run.workflow.name
        with observer.step(run.trace_parent, name, run.workflow_id, step.name, self.number):
            output = step.fn(value)
            if step.is_async or type(output) is CoroutineType:
                output = self._wait_async(output)
            return output

    def _wait_async(self, awaitable: Any) -> Any:
        """Run a step's coroutine on the shared loop and wait for it (cancellable)."""
        if not isinstance(awaitable, CoroutineType):
            if not hasattr(awaitable, "__await__"):
                return awaitable  # declared async but returned a plain value: keep it
            awaitable = _await(awaitable)
        if self.run.inside_loop:
            refuse_reentry(awaitable)
        future = LOOP.submit(awaitable)
        with self.lock:
            if self.abandoned:
                future.cancel()
            self.future = future
        try:
            return future.result()
        except BaseException:
            future.cancel()  # e.g. KeyboardInterrupt while waiting: do not leave it running
            raise
        finally:
            self.future = None

    def _failed(self, index: int, exc: BaseException, duration: float) -> None:
        with self.lock:
            if self.abandoned:
                return
            self.running = False
            self.failure = exc
            if self.run.store is not None:
                self._record(index, StepOutcome.FAILED, duration, error=error_dict(exc))

    def _record(
        self,
        index: int,
        outcome: StepOutcome,
        duration: float,
        *,
        output: Any = None,
        error: dict[str, Any] | None = None,
    ) -> None:
        """Store one step result (caller holds `lock`); a fenced-out write stops the run."""
        run = self.run
        assert run.store is not None
        step = run.workflow.steps[index].name
        record = StepRecord(
            workflow_id=run.workflow_id,
            step=step,
            index=index,
            attempt=self.number,
            outcome=outcome,
            started_at=self.started_at or run.clock.now(),
            duration=duration,
            output=output,
            error=error,
        )
        try:
            stored = run.store.record_step(record)
        except SerializationError as exc:
            raise SerializationError(
                f"workflow {run.workflow.name!r} step {step!r}: output is not JSON and cannot "
                f"be recorded: {exc}",
                path=exc.path,
            ) from exc
        if stored is False:
            raise WorkflowError(
                f"workflow {run.workflow.name!r} run {run.workflow_id} moved past attempt "
                f"{self.number} (another executor took it over); this attempt stops",
                workflow_id=run.workflow_id,
            )

    # -- supervising (always the caller's thread) --------------------------------------------

    def supervise(self, deadline: float | None) -> None:
        """Run on a runner thread; return when it ends or when a deadline passes.

        `deadline` (monotonic) bounds the whole attempt; per-step timeouts come from
        `run.timeouts`. On expiry the attempt is abandoned, an async step's task is
        cancelled, and a timed-out step record is written from this thread.
        """
        ABANDONED.check_room(self._describe)
        done = self._done = _new_lock()
        done.acquire()
        POOL.run(self._run_on_runner)
        try:
            self._watch(deadline)
        except BaseException:
            # E.g. KeyboardInterrupt while waiting: the attempt must not go on unsupervised.
            self._abandon()
            raise

    def _watch(self, deadline: float | None) -> None:
        done = self._done
        run = self.run
        timeouts = run.timeouts
        soonest_ahead = run.soonest_timeout_from
        while True:
            with self.lock:
                if self.finished:
                    return
                index, running, started = self.index, self.running, self.started_mono
            now = _monotonic()
            wake = deadline
            if timeouts is not None:
                if running and timeouts[index] is not None:
                    step_deadline = started + timeouts[index]  # type: ignore[operator]
                    wake = step_deadline if wake is None else min(wake, step_deadline)
                # A step not started yet cannot expire before now + its timeout.
                ahead = soonest_ahead[index + 1 if running else index]
                if ahead is not None:
                    wake = now + ahead if wake is None else min(wake, now + ahead)
            if wait_for(done, float("inf") if wake is None else max(wake - now, 0.0)):
                return
            if self._expire(deadline):
                return

    def _step_name(self) -> str:
        steps = self.run.workflow.steps
        return steps[min(self.index, len(steps) - 1)].name

    def _describe(self) -> str:
        run = self.run
        return f"workflow {run.workflow.name!r} run {run.workflow_id} step {self._step_name()!r}"

    def _mark_abandoned(self) -> None:
        """Abandon the attempt (caller holds `lock`); a runner still running is counted
        (and logged) in ABANDONED until it returns."""
        self.abandoned = True
        if not self.finished and not self.counted:
            self.counted = True
            run = self.run
            fields = {
                "workflow_id": run.workflow_id,
                "workflow": run.workflow.name,
                "step": self._step_name(),
                "attempt": self.number,
            }
            ABANDONED.add_step(self._describe(), fields)

    def _abandon(self) -> None:
        with self.lock:
            self._mark_abandoned()
            future = self.future
        if future is not None:
            future.cancel()

    def _expire(self, deadline: float | None) -> bool:
        """Abandon the attempt if a deadline has passed; True if it was abandoned."""
        run = self.run
        with self.lock:
            if self.finished:
                return True
            now = _monotonic()
            index = self.index
            if index >= len(run.workflow.steps):
                return False  # every step completed; the runner is about to finish
            step_timeout = run.timeouts[index] if run.timeouts is not None else None
            expired: float | None = None
            if (
                self.running
                and step_timeout is not None
                and now >= self.started_mono + step_timeout
            ):
                expired = step_timeout
            if expired is None and deadline is not None and now >= deadline:
                expired = run.timeout
            if expired is None:
                return False
            self._mark_abandoned()
            self.timed_out = expired
            future, running = self.future, self.running
            duration = _perf() - self.started_perf if running else 0.0
            if not running:
                self.started_at = None
        if future is not None:
            future.cancel()  # cancels the step's task on the loop: CancelledError inside it
        if run.store is not None:
            with self.lock:
                self._record(index, StepOutcome.TIMED_OUT, duration, error=self.timeout_error())
        return True

    def timeout_error(self) -> dict[str, Any]:
        step = self.run.workflow.steps[self.index].name
        return {
            "kind": "StepTimedOut",
            "message": f"step {step!r} timed out after {self.timed_out:g}s",
            "traceback": "",
        }
