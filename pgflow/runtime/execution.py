"""Running one job: the semantics shared by the app's producers and by `pgflow.testing`.

Running is split from recording so that user code never holds a database connection: the
producer runs jobs in its pool, then writes their outcomes in batches; `run_job` does both in
the caller's thread for inline and test use. Every write passes the claimed attempt, so a late
write from a job that was rescued meanwhile changes nothing.
"""

from __future__ import annotations

import asyncio
import contextvars
import enum
import inspect
import logging
import math
import threading
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import attrs

from pgflow.abandoned import ABANDONED
from pgflow.cancellation import CancelFlag
from pgflow.clock import SYSTEM_CLOCK, Clock
from pgflow.errors import (
    Discard,
    PgflowError,
    RateLimited,
    SerializationError,
    Snooze,
    StepFailed,
)
from pgflow.queue_config import partition_of
from pgflow.records import Job, JobError, JobRef, JobState, SuccessorClaim, TaskCompletion
from pgflow.runtime.worker_lookup import DEFAULT_LOOKUP, WorkerLookup
from pgflow.serialization import DEFAULT_MAX_PAYLOAD_BYTES, dumps
from pgflow.stored_errors import clean_error, exception_text, traceback_text
from pgflow.telemetry import hooks
from pgflow.worker import (
    CURRENT_BACKEND,
    UnknownWorker,
    Worker,
    backoff_delay,
    registered_worker,
)

if TYPE_CHECKING:
    from pgflow.backend import Backend, JobQueue
    from pgflow.graph.shape import FlowPlan
    from pgflow.queue_config import Queue

__all__ = [
    "JobControl",
    "Outcome",
    "OutcomeKind",
    "execute_job",
    "execute_job_async",
    "failed_outcome",
    "job_log_extra",
    "record_completions",
    "record_outcomes",
    "run_job",
    "unresolved_outcome",
]

logger = logging.getLogger("pgflow.runtime")

T = TypeVar("T")


class OutcomeKind(enum.StrEnum):
    """How one attempt of a job ended, as far as the engine is concerned."""

    COMPLETED = "completed"
    RETRY = "retry"
    DISCARDED = "discarded"
    SNOOZED = "snoozed"
    CANCELLED = "cancelled"


@attrs.frozen
class Outcome:
    """The result of running one attempt; `fenced` is True when the backend refused the write
    because the attempt no longer held the job (it was rescued, cancelled or re-claimed)."""

    job: Job
    kind: OutcomeKind
    value: Any = None
    error: dict[str, Any] | None = None
    exception: BaseException | None = attrs.field(default=None, eq=False)
    retry_in: float | None = None
    snooze: float | None = None
    #: `value` as JSON text, stored as Job.result; None when perform returned None.
    result: str | None = None
    recorded: bool = False
    fenced: bool = False
    #: For a flow task: what `complete_tasks` records, and the plan it settles against.
    completion: TaskCompletion | None = None
    plan: FlowPlan | None = attrs.field(default=None, eq=False, repr=False)
    #: A snooze caused by `pgflow.RateLimited`: recording it also holds the job's queue (or
    #: partition) for these seconds.
    rate_limited: float | None = None

    @property
    def ref(self) -> JobRef:
        return self.job.ref


class JobControl:
    """The handle through which a running job learns that it should stop."""

    def __init__(self) -> None:
        self.cancelled = CancelFlag()
        self.shutdown = False
        self._callbacks: list[Callable[[], None]] = []
        self._lock = threading.Lock()
        # A timed-out sync perform's thread runs on: counted in ABANDONED until it ends.
        self._thread_abandoned = False
        self._thread_ended = False
        self._on_thread_end: list[Callable[[], None]] = []

    def cancel(self, *, shutdown: bool = False) -> None:
        """Set `cancelled` and run the registered callbacks (e.g. cancelling an async task).

        With `shutdown`, the instance is stopping: the job was not cancelled by anyone, so
        its interrupted attempt is retried at once instead of ending cancelled.
        """
        with self._lock:
            if self.cancelled.is_set():
                return
            self.shutdown = shutdown
            self.cancelled.set()
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback()

    def on_cancel(self, callback: Callable[[], None]) -> None:
        """Call `callback` when cancelled (at once if it already is)."""
        with self._lock:
            if not self.cancelled.is_set():
                self._callbacks.append(callback)
                return
        callback()

    def abandon_thread(self, what: str, extra: dict[str, Any] | None = None) -> bool:
        """The attempt's thread outlived its timeout: count it as abandoned until it ends.
        False when it has ended already (its outcome is there to use)."""
        with self._lock:
            if self._thread_ended:
                return False
            self._thread_abandoned = True
            ABANDONED.add_job(what, extra)
        return True

    def thread_ended(self) -> None:
        """Called by the attempt's thread as it exits; releases what it held if abandoned."""
        with self._lock:
            self._thread_ended = True
            abandoned = self._thread_abandoned
            callbacks, self._on_thread_end = self._on_thread_end, []
        if abandoned:
            ABANDONED.end_job()
        for callback in callbacks:
            callback()

    def hold_until_thread_ends(self, callback: Callable[[], None]) -> bool:
        """If the attempt's thread was abandoned and still runs, call `callback` when it
        ends and return True (the caller keeps its slot occupied meanwhile)."""
        if not self._thread_abandoned:  # set before the outcome is returned: no lock needed
            return False
        with self._lock:
            if not self._thread_abandoned or self._thread_ended:
                return False
            self._on_thread_end.append(callback)
        return True


def job_log_extra(job: Job, instance_id: str | None, **more: Any) -> dict[str, Any]:
    """The structured fields every log record about a job carries."""
    return {
        "instance_id": instance_id,
        "job_id": job.id,
        "worker": job.worker,
        "queue": job.queue,
        "attempt": job.attempt,
        "max_attempts": job.max_attempts,
        **more,
    }


def failed_outcome(
    job: Job, exc: BaseException, *, instance_id: str | None, clock: Clock = SYSTEM_CLOCK
) -> Outcome:
    """The outcome of an attempt that failed outside perform (its runner broke): a retry
    under the worker's policy, or discarded when no attempt is left."""
    return _Run(job, instance_id, clock, JobControl()).failed(exc, registered_worker(job.worker))


def unresolved_outcome(
    job: Job,
    exc: BaseException,
    *,
    instance_id: str | None,
    lookup: WorkerLookup,
    clock: Clock = SYSTEM_CLOCK,
) -> Outcome:
    """The outcome of a job whose worker could not be resolved: an unknown worker is snoozed
    (a deploy may bring it) until the lookup's window runs out, then discarded; a worker
    module that failed to import fails the attempt like perform raising would."""
    return _Run(job, instance_id, clock, JobControl()).unresolved(exc, lookup)


def _kind_of(exc: BaseException) -> str:
    cls = type(exc)
    return (
        cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    )


def _error_dict(
    job: Job, instance_id: str | None, clock: Clock, kind: str, message: str, tb: str
) -> dict[str, Any]:
    return clean_error(
        JobError(
            attempt=job.attempt,
            at=clock.now(),
            kind=kind,
            message=message,
            traceback=tb,
            instance_id=instance_id,
        ).to_dict()
    )


def _rate_limited(exc: BaseException) -> RateLimited | None:
    """The RateLimited behind `exc`: itself, or what made a workflow_worker's step snooze
    the job (its retry deferred), when its retry_after is usable."""
    found: BaseException | None = exc
    if isinstance(exc, Snooze):  # its cause: the step's error, caused by what the step raised
        found = exc.__cause__
        for _ in range(3):
            if found is None or isinstance(found, RateLimited):
                break
            reason = getattr(found, "reason", None)  # StepFailed's
            found = reason if isinstance(reason, BaseException) else found.__cause__
    if isinstance(found, RateLimited) and _usable_retry_after(found):
        return found
    return None


def _usable_retry_after(exc: RateLimited) -> bool:
    """RateLimited checks `retry_after` when built; one changed afterwards (or a subclass
    that skipped the check) fails the attempt like any error, its message naming why."""
    value = getattr(exc, "retry_after", None)
    if (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0
    ):
        return True
    exc.add_note(f"pgflow.RateLimited: retry_after must be a number of seconds > 0, got {value!r}")
    return False


def _discard_reason(exc: BaseException) -> Discard | None:
    """A Discard raised by perform, or by a workflow step that perform ran."""
    if isinstance(exc, Discard):
        return exc
    if isinstance(exc, StepFailed) and isinstance(exc.reason, Discard):
        return exc.reason
    return None


class _Run:
    """Turns what perform did (returned, raised, timed out) into an Outcome."""

    def __init__(self, job: Job, instance_id: str | None, clock: Clock, control: JobControl):
        self.job = job
        self.instance_id = instance_id
        self.clock = clock
        self.control = control

    def completed(
        self, value: Any, worker_cls: type[Worker] | None = None, backend: Any = None
    ) -> Outcome:
        """Completed, with what perform returned encoded for `Job.result`; a value that
        is not JSON or is over the backend's size limit fails the attempt instead."""
        if value is None:  # most jobs: nothing to encode or store
            return Outcome(self.job, OutcomeKind.COMPLETED)
        limit = getattr(backend, "max_payload_bytes", DEFAULT_MAX_PAYLOAD_BYTES)
        owner = f"job {self.job.id} ({self.job.worker})"
        try:
            result = dumps(value, what="result", limit=limit, owner=owner)
        except SerializationError as exc:
            return self.failed(exc, worker_cls)
        return Outcome(self.job, OutcomeKind.COMPLETED, value=value, result=result)

    def failed(
        self, exc: BaseException, worker_cls: type[Worker] | None, *, honour_cancel: bool = True
    ) -> Outcome:
        job = self.job
        limited = _rate_limited(exc)
        if limited is not None:
            # A Snooze caused by one: a workflow_worker's step deferring its retry.
            seconds = max(limited.retry_after, exc.seconds if isinstance(exc, Snooze) else 0.0)
            return Outcome(
                job, OutcomeKind.SNOOZED, exception=exc, snooze=seconds, rate_limited=seconds
            )
        if isinstance(exc, Snooze):
            return Outcome(job, OutcomeKind.SNOOZED, exception=exc, snooze=exc.seconds)
        message, tb = exception_text(exc), traceback_text(exc)
        error = _error_dict(job, self.instance_id, self.clock, _kind_of(exc), message, tb)
        if honour_cancel and self.control.cancelled.is_set():
            if not self.control.shutdown:
                return Outcome(job, OutcomeKind.CANCELLED, error=error, exception=exc)
            error = clean_error(
                {
                    **error,
                    "kind": "pgflow.Shutdown",
                    "message": f"interrupted by shutdown: {error['message']}",
                }
            )
            if job.attempt < job.max_attempts:
                return Outcome(job, OutcomeKind.RETRY, error=error, exception=exc, retry_in=0.0)
        if _discard_reason(exc) is not None or job.attempt >= job.max_attempts:
            return Outcome(job, OutcomeKind.DISCARDED, error=error, exception=exc)
        policy = worker_cls.options.backoff if worker_cls is not None else None
        delay = backoff_delay(policy, job.attempt) if policy is not None else 10.0**job.attempt
        return Outcome(job, OutcomeKind.RETRY, error=error, exception=exc, retry_in=delay)

    def unresolved(self, exc: BaseException, lookup: WorkerLookup) -> Outcome:
        job = self.job
        if not isinstance(exc, UnknownWorker):
            return self.failed(exc, None, honour_cancel=False)
        extra = job_log_extra(job, self.instance_id, error=_kind_of(exc))
        seconds = lookup.snooze_for(job)
        if seconds is not None:
            logger.warning(
                "job %s: worker %s is not registered in this process; snoozed %gs (import its "
                "module with imports=/--import, or allow it with worker_modules=)",
                job.id,
                job.worker,
                seconds,
                extra=extra,
            )
            return Outcome(job, OutcomeKind.SNOOZED, exception=exc, snooze=seconds)
        error = _error_dict(
            job, self.instance_id, self.clock, "pgflow.UnknownWorker", exception_text(exc), ""
        )
        return Outcome(job, OutcomeKind.DISCARDED, error=error, exception=exc)

    def timed_out(self, timeout: float, worker_cls: type[Worker]) -> Outcome:
        """A failed attempt like any other; `cancelled` is set so cooperative code stops."""
        exc = TimeoutError(f"job timed out after {timeout:g}s")
        outcome = self.failed(exc, worker_cls, honour_cancel=False)
        self.control.cancel()
        return outcome


def _log_start(job: Job, instance_id: str | None) -> None:
    if logger.isEnabledFor(logging.DEBUG):
        logger.debug("job %s started", job.id, extra=job_log_extra(job, instance_id))


def execute_job(
    job: Job,
    *,
    instance_id: str | None = None,
    backend: Backend | None = None,
    clock: Clock = SYSTEM_CLOCK,
    control: JobControl | None = None,
    worker_cls: type[Worker] | None = None,
    lookup: WorkerLookup = DEFAULT_LOOKUP,
) -> Outcome:
    """Run `job`'s perform in this thread (an async perform on a private event loop) and
    return its outcome, without writing anything. Never raises for user errors.

    `worker_cls` is the worker when the caller already resolved it; otherwise `lookup`
    resolves it, and a failure to do so is the job's outcome.
    """
    observer = hooks.OBSERVER
    if observer is None:
        return _execute_job(job, instance_id, backend, clock, control, worker_cls, lookup)
    scope = observer.job_started(job, instance_id)
    try:
        outcome = _execute_job(job, instance_id, backend, clock, control, worker_cls, lookup)
    except BaseException as exc:
        scope.finish(None, exc)
        raise
    scope.finish(outcome)
    return outcome


def _execute_job(
    job: Job,
    instance_id: str | None,
    backend: Backend | None,
    clock: Clock,
    control: JobControl | None,
    worker_cls: type[Worker] | None,
    lookup: WorkerLookup,
) -> Outcome:
    control = control or JobControl()
    run = _Run(job, instance_id, clock, control)
    if worker_cls is None:
        try:
            worker_cls = lookup.resolve(job.worker)
        except PgflowError as exc:
            return run.unresolved(exc, lookup)
    if worker_cls.perform_is_async:
        resolved = worker_cls
        return _run_coroutine(
            lambda: _execute_job_async(job, instance_id, backend, clock, control, resolved, lookup)
        )
    _log_start(job, instance_id)
    timeout = worker_cls.options.timeout
    if timeout is None:
        return _call_sync(run, worker_cls, backend)
    # A thread cannot be killed: the attempt is abandoned at its deadline (its late result is
    # ignored), `cancelled` is set so cooperative code can stop, and the thread is counted in
    # ABANDONED (a producer keeps its slot occupied) until it really ends.
    box: list[Outcome] = []

    def attempt() -> None:
        try:
            box.append(_call_sync(run, worker_cls, backend))
        finally:
            control.thread_ended()

    # The attempt's thread runs in this context: its trace span, when tracing is on.
    thread = threading.Thread(
        target=contextvars.copy_context().run,
        args=(attempt,),
        name=f"pgflow-job-{job.id}",
        daemon=True,
    )
    thread.start()
    thread.join(timeout)
    if not box and control.abandon_thread(
        f"job {job.id} ({job.worker}) attempt {job.attempt}/{job.max_attempts}",
        job_log_extra(job, instance_id),
    ):
        return run.timed_out(timeout, worker_cls)
    if box:  # it returned just at the deadline
        return box[0]
    return run.timed_out(timeout, worker_cls)


def _call_sync(run: _Run, worker_cls: type[Worker], backend: Backend | None) -> Outcome:
    token = CURRENT_BACKEND.set(backend)
    try:
        worker = worker_cls()
        worker.cancelled = run.control.cancelled
        value = worker.perform(run.job)
        if inspect.isawaitable(value):  # a sync perform that returned a coroutine
            value = _run_coroutine(lambda: _await(value))
    except (Exception, SystemExit) as exc:
        return run.failed(exc, worker_cls)
    finally:
        CURRENT_BACKEND.reset(token)
    return run.completed(value, worker_cls, backend)


def _run_coroutine(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to completion from sync code, even inside a running event loop
    (e.g. `pgflow.testing.drain` called from an async test): then on a helper thread."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make())
    results: list[T] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            results.append(asyncio.run(make()))
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target, name="pgflow-async-job", daemon=True)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return results[0]


async def _await(awaitable: Any) -> Any:
    return await awaitable


def _cancel_soon(loop: asyncio.AbstractEventLoop, task: asyncio.Future[Any]) -> None:
    if not loop.is_closed():
        loop.call_soon_threadsafe(task.cancel)


def execute_job_async(
    job: Job,
    *,
    instance_id: str | None = None,
    backend: Backend | None = None,
    clock: Clock = SYSTEM_CLOCK,
    control: JobControl | None = None,
    worker_cls: type[Worker] | None = None,
    lookup: WorkerLookup = DEFAULT_LOOKUP,
) -> Coroutine[Any, Any, Outcome]:
    """Run an `async def perform` on the running loop; cancellation cancels its task.

    Returns the coroutine to await: without telemetry, the run itself (no extra frame)."""
    observer = hooks.OBSERVER
    run = _execute_job_async(job, instance_id, backend, clock, control, worker_cls, lookup)
    if observer is None:
        return run
    return _observed(observer, job, instance_id, run)


async def _observed(
    observer: hooks.Observer,
    job: Job,
    instance_id: str | None,
    run: Coroutine[Any, Any, Outcome],
) -> Outcome:
    """Await `run` inside the attempt's telemetry (its span current in this task)."""
    scope = observer.job_started(job, instance_id)
    try:
        outcome = await run
    except BaseException as exc:
        scope.finish(None, exc)
        raise
    scope.finish(outcome)
    return outcome


async def _execute_job_async(
    job: Job,
    instance_id: str | None,
    backend: Backend | None,
    clock: Clock,
    control: JobControl | None,
    worker_cls: type[Worker] | None,
    lookup: WorkerLookup,
) -> Outcome:
    control = control or JobControl()
    run = _Run(job, instance_id, clock, control)
    if worker_cls is None:
        try:
            worker_cls = lookup.resolve(job.worker)
        except PgflowError as exc:
            return run.unresolved(exc, lookup)
    _log_start(job, instance_id)
    token = CURRENT_BACKEND.set(backend)
    try:
        worker = worker_cls()
        worker.cancelled = control.cancelled
        task = asyncio.ensure_future(_contained(worker.perform(job)))
    except (Exception, SystemExit, KeyboardInterrupt) as exc:
        return run.failed(exc, worker_cls)
    finally:
        CURRENT_BACKEND.reset(token)
    loop = asyncio.get_running_loop()
    control.on_cancel(lambda: _cancel_soon(loop, task))
    timeout = worker_cls.options.timeout
    try:
        if timeout is None:
            value = await task
        else:
            value = await asyncio.wait_for(task, timeout)
    except TimeoutError as exc:
        if timeout is not None and task.cancelled():  # wait_for's deadline, not user code
            return run.timed_out(timeout, worker_cls)
        return run.failed(exc, worker_cls)
    except asyncio.CancelledError as exc:
        if control.cancelled.is_set() and task.cancelled():
            return run.failed(exc, worker_cls)
        raise  # our caller was cancelled (shutdown), not the job
    except _Exited as exc:
        return run.failed(exc.exited, worker_cls)
    except (Exception, SystemExit) as exc:
        return run.failed(exc, worker_cls)
    return run.completed(value, worker_cls, backend)


class _Exited(Exception):
    """Carries a SystemExit or KeyboardInterrupt raised by an async perform out of its task."""

    def __init__(self, exited: BaseException) -> None:
        super().__init__(type(exited).__name__)
        self.exited = exited


async def _contained(perform: Coroutine[Any, Any, T]) -> T:
    """Await `perform`, turning SystemExit and KeyboardInterrupt into an ordinary exception:
    asyncio re-raises those two out of the event loop, which would end the loop's thread
    and strand every async job running on it."""
    try:
        return await perform
    except (SystemExit, KeyboardInterrupt) as exc:
        raise _Exited(exc) from exc


def record_outcomes(
    backend: JobQueue,
    outcomes: Sequence[Outcome],
    *,
    instance_id: str | None = None,
    queues: Mapping[str, Queue] | None = None,
) -> list[Outcome]:
    """Write outcomes to the backend (completions in one batch), fenced by each attempt.

    Returns them marked `recorded`, with `fenced` set for writes the backend refused and
    the kind corrected to what the backend decided (e.g. cancelled). Database errors
    propagate; every write is fenced, so the caller may simply retry the same outcomes.
    A RateLimited outcome also holds its queue, or its partition when `queues` (the options
    of this instance's queues) says the job's queue is partitioned.
    """
    done: list[Outcome] = []
    completions = [o for o in outcomes if o.kind is OutcomeKind.COMPLETED]
    if completions:
        changed = set(_complete(backend, completions))
        for outcome in completions:
            done.append(attrs.evolve(outcome, recorded=True, fenced=outcome.job.id not in changed))
    for outcome in outcomes:
        if outcome.kind is OutcomeKind.COMPLETED:
            continue
        if outcome.kind is OutcomeKind.SNOOZED:
            ok = backend.snooze_job(outcome.ref, outcome.snooze or 0.0)
            if ok and outcome.rate_limited is not None:
                # Only the attempt that still held the job may stop the queue everywhere; a
                # crash between the two writes loses the hold, and the next RateLimited sets it.
                hold_for_rate_limit(backend, outcome, queues, instance_id)
            done.append(attrs.evolve(outcome, recorded=True, fenced=not ok))
            continue
        state = backend.fail_job(outcome.ref, outcome.error or {}, retry_in=outcome.retry_in)
        if state is None:
            done.append(attrs.evolve(outcome, recorded=True, fenced=True))
            continue
        kind = {
            JobState.CANCELLED: OutcomeKind.CANCELLED,
            JobState.DISCARDED: OutcomeKind.DISCARDED,
        }.get(state, OutcomeKind.RETRY)
        done.append(attrs.evolve(outcome, kind=kind, recorded=True))
    for outcome in done:
        _log_outcome(outcome, instance_id)
    return done


def hold_for_rate_limit(
    backend: JobQueue,
    outcome: Outcome,
    queues: Mapping[str, Queue] | None,
    instance_id: str | None,
) -> str | None:
    """Hold the starts of a rate-limited job's queue (on a partitioned queue: of the job's
    partition) on every instance, for its `retry_after`; return the partition held."""
    job = outcome.job
    seconds = outcome.rate_limited
    assert seconds is not None
    options = None if queues is None else queues.get(job.queue)
    partition = None
    if options is not None and options.partition_by is not None:
        partition = partition_of(job.args, options.partition_by, job.task is not None)
    backend.hold_queue(job.queue, seconds, partition)
    logger.info(
        "job %s rate limited: %s held %gs, the job snoozed as long",
        job.id,
        f"queue {job.queue!r}"
        if partition is None
        else f"partition {partition!r} of {job.queue!r}",
        seconds,
        extra=job_log_extra(job, instance_id, retry_after=seconds, partition=partition),
    )
    return partition


def record_completions(
    backend: JobQueue,
    completions: Sequence[Outcome],
    *,
    instance_id: str | None = None,
    claim: SuccessorClaim | None = None,
) -> int:
    """`record_outcomes` for a batch of completions, when the caller needs no outcomes back
    (the producer): one write, and only fenced ones logged above DEBUG. Returns how many
    were written (not fenced). `claim` rides on the flow tasks' completion (see
    FlowStore.complete_tasks); it is left empty when the batch holds no flow task."""
    changed = set(_complete(backend, completions, claim))
    debug = logger.isEnabledFor(logging.DEBUG)
    for outcome in completions:
        fenced = outcome.job.id not in changed
        if fenced or debug:
            _log_outcome(attrs.evolve(outcome, recorded=True, fenced=fenced), instance_id)
    return len(changed)


def _complete(
    backend: JobQueue, completions: Sequence[Outcome], claim: SuccessorClaim | None = None
) -> list[int]:
    """One batched write; results travel only when some perform returned a value. Flow
    tasks go to `complete_tasks` instead, which settles their steps."""
    tasks = [o for o in completions if o.completion is not None]
    if tasks:
        plans = {o.job.args["fingerprint"]: o.plan for o in tasks if o.plan is not None}
        extra = {} if claim is None else {"claim": claim}
        if hooks.OBSERVER is None:
            done = backend.complete_tasks(  # type: ignore[attr-defined]
                [o.completion for o in tasks], plans, **extra
            )
        else:  # the steps these tasks start carry their runs' trace context
            with hooks.successor_trace([o.job for o in tasks]):
                done = backend.complete_tasks(  # type: ignore[attr-defined]
                    [o.completion for o in tasks], plans, **extra
                )
        rest = [o for o in completions if o.completion is None]
        return list(done) + (_complete(backend, rest) if rest else [])
    refs = [o.job.ref for o in completions]
    for outcome in completions:
        if outcome.result is not None:
            return backend.complete_jobs(refs, [o.result for o in completions])
    return backend.complete_jobs(refs)


def _log_outcome(outcome: Outcome, instance_id: str | None) -> None:
    job = outcome.job
    extra = job_log_extra(job, instance_id, outcome=outcome.kind.value)
    if outcome.fenced and outcome.completion is not None:
        # A task's result that counts nothing is expected after its run was cancelled or
        # failed, or its step settled another way (a signal beat a timeout): not a warning.
        logger.info(
            "job %s: task result of attempt %s counted nothing (its run ended or its step "
            "settled first, or the attempt no longer holds the job)",
            job.id,
            job.attempt,
            extra=extra,
        )
    elif outcome.fenced:
        logger.warning(
            "job %s: result of attempt %s ignored, the attempt no longer holds the job",
            job.id,
            job.attempt,
            extra=extra,
        )
    elif outcome.kind is OutcomeKind.COMPLETED:
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("job %s completed", job.id, extra=extra)
    elif outcome.kind is OutcomeKind.RETRY:
        logger.warning(
            "job %s attempt %s/%s failed (%s), retrying in %.3gs",
            job.id,
            job.attempt,
            job.max_attempts,
            (outcome.error or {}).get("kind"),
            outcome.retry_in or 0.0,
            extra=extra,
        )
    elif outcome.kind is OutcomeKind.DISCARDED:
        logger.error(
            "job %s discarded after attempt %s/%s (%s)",
            job.id,
            job.attempt,
            job.max_attempts,
            (outcome.error or {}).get("kind"),
            extra=extra,
        )
    else:
        logger.info("job %s %s", job.id, outcome.kind.value, extra=extra)


def run_job(
    backend: Backend,
    job: Job,
    instance_id: str | None = None,
    *,
    clock: Clock = SYSTEM_CLOCK,
    control: JobControl | None = None,
    lookup: WorkerLookup = DEFAULT_LOOKUP,
    queues: Mapping[str, Queue] | None = None,
) -> Outcome:
    """Run a claimed job in this thread and record its outcome: the inline form of a producer."""
    outcome = execute_job(
        job, instance_id=instance_id, backend=backend, clock=clock, control=control, lookup=lookup
    )
    return record_outcomes(backend, [outcome], instance_id=instance_id, queues=queues)[0]
