"""One queue's producer: claims jobs up to its free slots, runs them, acknowledges in batches.

Two threads talk to the database for the queue: the claimer (claims, cancellation checks)
and the acker (writes outcomes, completions in batches), so their round trips overlap and
user code, which runs in the daemon pool or on the event loop, never holds a connection.
A finished job wakes both: its slot is refilled at once when the last claim suggested the
queue had more, and its acknowledgement joins whatever else finished meanwhile.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any

import attrs

from pgflow.clock import Clock
from pgflow.records import Job, JobError, SuccessorClaim
from pgflow.runtime.execution import (
    JobControl,
    Outcome,
    OutcomeKind,
    execute_job,
    execute_job_async,
    failed_outcome,
    job_log_extra,
    record_completions,
    record_outcomes,
    unresolved_outcome,
)
from pgflow.runtime.flow_tasks import execute_task
from pgflow.runtime.pool import DaemonPool
from pgflow.runtime.reconnect import Guard, is_transient, keep_running
from pgflow.runtime.worker_lookup import DEFAULT_LOOKUP, WorkerLookup
from pgflow.stored_errors import minimal_error

if TYPE_CHECKING:
    from pgflow.backend import Backend
    from pgflow.background_loop import BackgroundLoop
    from pgflow.queue_config import Queue

logger = logging.getLogger("pgflow.runtime")

#: While jobs run and fewer than this share of the slots are free, a claim waits up to
#: COALESCE_SECONDS for more to free up: fewer, larger claims when busy (each claim is a round
#: trip); an idle queue claims at once.
BATCH_FLOOR = 0.5
COALESCE_SECONDS = 0.002
#: After an abort, how long interrupted jobs may take to report before being left to rescue.
ABORT_ACK_SECONDS = 1.0
#: A shaped queue (global, rate or partition limits) whose claim came up short may have more
#: jobs than its limits let start now: it claims again after this long (a rate limit's
#: interval between starts when shorter, not below SHAPED_RETRY_MIN), the wait doubling while
#: claims find nothing, up to the poll interval (paused or empty queues: as plain ones).
SHAPED_RETRY_FIRST = 0.05
SHAPED_RETRY_MIN = 0.005
RATE_RETRIES_PER_WINDOW = 40


def _first_retry(shape: Queue | None, poll_interval: float) -> float:
    """How soon a shaped queue claims again after a short claim (see SHAPED_RETRY_FIRST)."""
    first = SHAPED_RETRY_FIRST
    if shape is not None:
        for rate in (shape.rate_limit, shape.partition_rate_limit):
            if rate is not None:
                allowed, period = rate
                first = min(first, period / allowed)
    return min(max(first, SHAPED_RETRY_MIN), poll_interval)


def _shortest_period(shape: Queue | None) -> float | None:
    """The shortest rate window of a shaped queue (None without a rate limit)."""
    if shape is None:
        return None
    periods = [rate[1] for rate in (shape.rate_limit, shape.partition_rate_limit) if rate]
    return min(periods) if periods else None


@attrs.define
class _Running:
    job: Job
    control: JobControl


def _held_connection(backend: Backend) -> contextlib.AbstractContextManager[None]:
    """The backend's `hold_connection()` where it has one (an optional capability: SQL
    backends keep one pooled connection for a busy thread instead of one per statement)."""
    hold = getattr(backend, "hold_connection", None)
    return hold() if hold is not None else contextlib.nullcontext()


class Producer:
    """Serves one queue with at most `limit` jobs at a time for this instance."""

    def __init__(
        self,
        *,
        backend: Backend,
        queue: str,
        limit: int,
        instance_id: str,
        poll_interval: float,
        incarnation: str = "",
        clock: Clock,
        async_loop: BackgroundLoop,
        lookup: WorkerLookup = DEFAULT_LOOKUP,
        options: Queue | None = None,
    ) -> None:
        self.backend = backend
        #: What every claim passes as `shape=`: the options when they shape the flow.
        self.shape = options if options is not None and options.shapes_flow else None
        self._retry_first = _first_retry(self.shape, poll_interval)
        self._rate_period = _shortest_period(self.shape)
        self._last_claimed = float("-inf")  # monotonic time of the last claim that got jobs
        self._retry_delay = self._retry_first
        self._retry_at: float | None = None  # a shaped queue's next claim after a short one
        # Our acknowledgements free room under a global or per-partition limit.
        self._acks_free_room = self.shape is not None and (
            self.shape.global_limit is not None or self.shape.partition_limit is not None
        )
        self.lookup = lookup
        self.queue = queue
        self.limit = limit
        self.instance_id = instance_id
        # Every claim is fenced by it: once another incarnation registered under the id, this
        # producer claims nothing, even before the heartbeat tells the app it was displaced.
        self.incarnation = incarnation
        self.poll_interval = poll_interval
        self.clock = clock
        self._async_loop = async_loop
        self._lock = threading.Lock()
        self._running: dict[int, _Running] = {}
        self._abandoned = 0  # slots held by timed-out performs whose threads still run
        # Slots held by a claim in flight (the claimer's, or the acker's successor claim):
        # each computes its free slots net of the other's, so together they never exceed
        # the limit.
        self._reserved = 0
        self._finished: deque[Outcome] = deque()
        self._wake = threading.Event()
        self._stop = threading.Event()  # stop claiming, drain
        self._abort = threading.Event()  # stop now, even with jobs running
        self._hints = 0  # bumped by every external hint that jobs may be available
        self._maybe_more = True
        # A claim reply or an outcome was lost: jobs may be executing here without a runner.
        self._release_needed = False
        self._batch_floor = max(1, int(limit * BATCH_FLOOR))
        self._hold_until: float | None = None
        self._pool = DaemonPool(limit, f"pgflow-{queue}")
        self._thread = threading.Thread(
            target=self._main, name=f"pgflow-producer-{queue}", daemon=True
        )
        # Acknowledgements have their own thread, so a batch of completions is written while
        # the producer claims the next jobs: two round trips overlap instead of alternating.
        self._ack_wake = threading.Event()
        self._claimer_done = threading.Event()
        self._acker = threading.Thread(
            target=self._ack_main, name=f"pgflow-acks-{queue}", daemon=True
        )
        self._extra = {"instance_id": instance_id, "queue": queue}
        #: The queue's full options, for recording outcomes (a RateLimited holds the job's
        #: partition when the queue is partitioned).
        self._options = {} if options is None else {queue: options}
        self.completed = 0  # jobs this producer ran to an acknowledged end, for status

    # --- control, from other threads ----------------------------------------------------

    def start(self) -> None:
        self._thread.start()
        self._acker.start()

    def notify(self) -> None:
        """A hint that jobs may be available (insert notification, staging, poll)."""
        with self._lock:
            self._hints += 1
            self._maybe_more = True
            self._retry_at = None
        self._wake.set()

    def begin_stop(self) -> None:
        """Stop claiming; running jobs finish and are acknowledged."""
        self._stop.set()
        self._wake.set()

    def join(self, deadline: float) -> bool:
        """Wait until drained or `deadline` (monotonic); then abandon what still runs.

        Returns True when every running job finished and was acknowledged.
        """
        self._thread.join(max(0.0, deadline - time.monotonic()))
        self._acker.join(max(0.0, deadline - time.monotonic()))
        drained = not self._thread.is_alive() and not self._acker.is_alive()
        if not drained:
            self.abort()
            self._thread.join(2.0)
            self._acker.join(2.0)
        self._pool.shutdown()
        return drained

    def abort(self) -> None:
        """Stop now: cancel running jobs (async ones for real) and leave them to the rescue."""
        self._stop.set()
        self._abort.set()
        self._wake.set()
        self._ack_wake.set()
        with self._lock:
            left = list(self._running.values())
        for item in left:
            item.control.cancel(shutdown=True)

    def running_ids(self) -> list[int]:
        with self._lock:
            return list(self._running)

    def cancel_local(self, job_id: int) -> bool:
        """Ask a job running here to stop (its outcome is still recorded by this producer)."""
        with self._lock:
            item = self._running.get(job_id)
        if item is None:
            return False
        item.control.cancel()
        return True

    # --- the producer thread ------------------------------------------------------------

    def _main(self) -> None:
        try:
            keep_running(
                f"queue {self.queue!r} producer", self._claim_main, self._abort, self._extra
            )
        finally:
            self._claimer_done.set()
            self._ack_wake.set()

    def _claim_main(self) -> None:
        with _held_connection(self.backend):
            self._claim_loop()

    def _claim_loop(self) -> None:
        guard = Guard(f"queue {self.queue!r} producer", self._abort, self._extra)
        next_poll = time.monotonic()
        while not self._abort.is_set():
            now = time.monotonic()
            if now >= next_poll:
                next_poll = now + self.poll_interval
                guard.attempt(self._poll_tick)
            if self._stop.is_set():
                self._hold_until = None  # no claim is coming: nothing to wait for
                self._retry_at = None
                with self._lock:
                    if not self._running:
                        return
            elif not self._fill_slots(guard):
                continue
            until = min(t for t in (next_poll, self._hold_until, self._retry_at) if t is not None)
            self._wake.wait(max(0.0, until - time.monotonic()))
            self._wake.clear()

    def _ack_main(self) -> None:
        """Write outcomes as they come; after the claimer stops, until none is left."""
        keep_running(
            f"queue {self.queue!r} acknowledgements", self._ack_serve, self._abort, self._extra
        )

    def _ack_serve(self) -> None:
        with _held_connection(self.backend):
            self._ack_loop()

    def _ack_loop(self) -> None:
        guard = Guard(f"queue {self.queue!r} acknowledgements", self._abort, self._extra)
        while True:
            self._ack_wake.wait(self.poll_interval)
            self._ack_wake.clear()
            guard.attempt(self._flush)
            if self._abort.is_set():
                self._last_acks(guard)
                return
            if self._claimer_done.is_set():
                with self._lock:
                    if not self._finished and not self._running:
                        return

    def _last_acks(self, guard: Guard) -> None:
        """Aborting: for a moment, record jobs interrupted by shutdown (retried at once)."""
        deadline = time.monotonic() + ABORT_ACK_SECONDS
        while time.monotonic() < deadline:
            with self._lock:
                if not self._running and not self._finished:
                    return
            self._ack_wake.wait(0.05)
            self._ack_wake.clear()
            guard.attempt(self._flush)

    def _fill_slots(self, guard: Guard) -> bool:
        """Claim for the free slots (after releasing orphans of a failed claim); False on error."""
        if self._release_needed and not guard.attempt(self._release_orphans):
            return False
        return guard.attempt(self._claim)

    def _poll_tick(self) -> None:
        """The safety net: look for work even without a hint, and for cancellation requests."""
        with self._lock:
            self._maybe_more = True
            running = list(self._running)
        if running:
            for job_id in self.backend.cancel_requested(running):
                if self.cancel_local(job_id):
                    logger.info(
                        "job %s: cancellation requested, stopping it",
                        job_id,
                        extra={**self._extra, "job_id": job_id},
                    )

    def _claim(self) -> None:
        with self._lock:
            free = self.limit - len(self._running) - self._abandoned - self._reserved
            if free <= 0 or not self._maybe_more:
                return
            if self._retry_at is not None:
                if time.monotonic() < self._retry_at:
                    return  # a shaped queue's limits were reached: the loop wakes for it
                self._retry_at = None
            if self._running and free < self._batch_floor:
                # Busy: let a few more slots free up (briefly) so one claim fills many.
                now = time.monotonic()
                if self._hold_until is None:
                    self._hold_until = now + COALESCE_SECONDS
                if now < self._hold_until:
                    return
            self._hold_until = None
            hints = self._hints
            self._reserved += free  # so a successor claim meanwhile cannot take them too
        try:
            if self.shape is None:
                jobs = self.backend.claim_jobs(
                    self.queue, self.instance_id, free, incarnation=self.incarnation
                )
            else:
                jobs = self.backend.claim_jobs(
                    self.queue, self.instance_id, free, self.incarnation, shape=self.shape
                )
        except Exception:
            # The claim may have committed with its reply lost: look for orphans first.
            self._release_needed = True
            with self._lock:
                self._reserved -= free
            raise
        with self._lock:
            self._reserved -= free
            if len(jobs) < free and self._hints == hints:
                if self.shape is None:
                    self._maybe_more = False  # the queue ran dry; wait for a hint or the poll
                else:
                    self._came_up_short(len(jobs))
            elif self.shape is not None:
                self._retry_delay = self._retry_first
                if jobs:
                    self._last_claimed = time.monotonic()
            for job in jobs:
                self._running[job.id] = _Running(job, JobControl())
        for job in jobs:
            self._dispatch(job)

    def _came_up_short(self, claimed: int) -> None:
        """A shaped queue's claim got fewer jobs than it asked for (lock held): its limits,
        not an empty queue, may be the cause, and nothing would announce their easing (a job
        ending elsewhere, the rate window sliding). Claim again soon, less and less often
        while claims find nothing; at the poll interval, wait for a hint or the poll. Within
        a rate period of the last claim that got jobs, a full window is the likely cause:
        the wait stays under 1/RATE_RETRIES_PER_WINDOW of the period, so a window that
        slides on is used within that much of its time."""
        now = time.monotonic()
        if claimed:
            self._last_claimed = now
            self._retry_delay = self._retry_first
            self._retry_at = now + self._retry_first
            return
        cap = self.poll_interval
        if self._rate_period is not None and now - self._last_claimed < self._rate_period:
            cap = min(cap, max(self._retry_first, self._rate_period / RATE_RETRIES_PER_WINDOW))
        delay = min(self._retry_delay, cap)
        if delay >= self.poll_interval:
            self._maybe_more = False
            return
        self._retry_delay = min(delay * 2, cap)
        self._retry_at = now + delay

    def _release_orphans(self) -> None:
        """Fail (for a retry) jobs the database says we run but we do not (or no longer) hold.

        A claim whose reply was lost to a broken connection, or an outcome that could not be
        written at all, leaves its job executing under this instance, which keeps
        heartbeating, so no rescue would ever free it. The listing is fenced by the
        incarnation: displaced, this process must not release what the new one runs (what
        it listed before is rescued by the registration, so its release is fenced out).
        """
        # Known first: whatever leaves `_finished` meanwhile was acknowledged, so it is no
        # longer executing in the listing that follows.
        with self._lock:
            known = set(self._running) | {outcome.job.id for outcome in self._finished}
        executing = self.backend.list_executing(self.queue, self.instance_id, self.incarnation)
        for job in executing:
            if job.id in known:  # the listing holds only this incarnation's jobs
                continue
            error = JobError(
                attempt=job.attempt,
                at=self.clock.now(),
                kind="pgflow.LostClaim",
                message=(
                    "executing here without a runner (a claim reply or an outcome was lost "
                    "to a database error); released"
                ),
                instance_id=self.instance_id,
            ).to_dict()
            state = self.backend.fail_job(job.ref, error, retry_in=0.0)
            logger.warning(
                "job %s: claim reply lost, released as %s",
                job.id,
                state.value if state else "fenced",
                extra=job_log_extra(job, self.instance_id),
            )
        self._release_needed = False

    def _dispatch(self, job: Job) -> None:
        with self._lock:
            item = self._running[job.id]
        if job.task is not None:  # a step of a distributed flow run
            self._dispatch_task(job, item.control)
            return
        try:
            worker_cls = self.lookup.resolve(job.worker)
        except Exception as exc:  # unknown, or its module failed to import: this job's outcome
            outcome = unresolved_outcome(
                job, exc, instance_id=self.instance_id, lookup=self.lookup, clock=self.clock
            )
            self._on_done(job, outcome, None)
            return
        kwargs: dict[str, Any] = {
            "instance_id": self.instance_id,
            "backend": self.backend,
            "clock": self.clock,
            "control": item.control,
            "worker_cls": worker_cls,
        }
        try:
            if worker_cls.perform_is_async:
                future = asyncio.run_coroutine_threadsafe(
                    execute_job_async(job, **kwargs), self._async_loop.loop
                )
                future.add_done_callback(functools.partial(self._on_async_done, job))
            else:
                self._pool.submit(
                    functools.partial(execute_job, job, **kwargs),
                    functools.partial(self._on_done, job),
                )
        except BaseException as exc:  # e.g. the loop or pool is gone: the attempt fails, retried
            self._on_done(job, None, exc)

    def _dispatch_task(self, job: Job, control: JobControl) -> None:
        task = functools.partial(
            execute_task,
            job,
            instance_id=self.instance_id,
            backend=self.backend,
            clock=self.clock,
            control=control,
        )
        try:
            self._pool.submit(task, functools.partial(self._on_done, job))
        except BaseException as exc:  # the pool is gone: the attempt fails, retried
            self._on_done(job, None, exc)

    def _on_async_done(self, job: Job, future: concurrent.futures.Future[Outcome]) -> None:
        try:
            outcome = future.result()
        except BaseException as exc:  # cancelled at shutdown, or a bug in the runtime
            self._on_done(job, None, exc)
        else:
            self._on_done(job, outcome, None)

    def _on_done(self, job: Job, outcome: Outcome | None, error: BaseException | None) -> None:
        """Runs in the pool or loop thread: queue the outcome and wake the producer."""
        if outcome is None:
            # The kind only: the exception's text may hold the job's input.
            logger.error(
                "job %s: runner failed (%s)",
                job.id,
                type(error).__name__,
                extra=job_log_extra(job, self.instance_id, error=type(error).__name__),
            )
            # Still an outcome: a job left executing under a live instance would never
            # be rescued.
            outcome = failed_outcome(
                job,
                error or RuntimeError("runner returned nothing"),
                instance_id=self.instance_id,
                clock=self.clock,
            )
        with self._lock:
            item = self._running.pop(job.id, None)
            # A timed-out perform whose thread runs on keeps its slot until the thread ends.
            if item is not None and item.control.hold_until_thread_ends(self._release_slot):
                self._abandoned += 1
            self._finished.append(outcome)
        # Setting a set Event still takes its Condition; skipping is safe because each loop
        # clears its event before it reads the state changed above.
        if not self._ack_wake.is_set():
            self._ack_wake.set()
        if not self._wake.is_set():
            self._wake.set()

    def _release_slot(self) -> None:
        """An abandoned perform's thread ended: its slot is free again."""
        with self._lock:
            self._abandoned -= 1
        self._wake.set()

    def _flush(self) -> None:
        """Acknowledge finished jobs: completions in one batch, the others one by one.

        Each acknowledged group leaves the buffer only once written, so after a transient
        database error the rest is retried; writes are fenced by attempt, so retrying is safe.
        A write refused for what it holds is never retried as is: see `_write_apart`.
        """
        with self._lock:
            if not self._finished:
                return
            batch = list(self._finished)
        completions = [o for o in batch if o.kind is OutcomeKind.COMPLETED]
        others = [o for o in batch if o.kind is not OutcomeKind.COMPLETED]
        if completions:
            claim = self._reserve_successors(completions)
            written = False
            try:
                record_completions(
                    self.backend, completions, instance_id=self.instance_id, claim=claim
                )
                written = True
            except Exception as exc:
                if claim is not None:  # it may have committed with its reply lost
                    self._release_needed = True
                if is_transient(exc):
                    raise
                for outcome in completions:  # find the one the database refuses
                    self._write_apart(outcome)
            else:
                self._forget(completions)
            finally:
                self._run_successors(claim, written)
        for outcome in others:
            try:
                record_outcomes(
                    self.backend, [outcome], instance_id=self.instance_id, queues=self._options
                )
            except Exception as exc:
                if is_transient(exc):
                    raise
                self._write_apart(outcome, exc)
            else:
                self._forget([outcome])

    def _reserve_successors(self, completions: list[Outcome]) -> SuccessorClaim | None:
        """Hold this queue's free slots for the next tasks of the flow runs these
        completions advance: the settle claims them in its own transaction.

        Only on an idle producer (nothing else running), where a step's latency is a
        wake-up plus a claim: a busy one leaves successors to the claimer, whose claims
        gather many tasks at once (a successor claim per acknowledgement would keep each
        batch as small as the one before it).
        """
        if self.shape is not None or not any(o.completion is not None for o in completions):
            return None  # a shaped queue's claims all go through its limits
        with self._lock:
            free = self.limit - len(self._running) - self._abandoned - self._reserved
            if free <= 0 or self._running or self._stop.is_set():
                return None
            self._reserved += free
        return SuccessorClaim(self.queue, self.instance_id, free, self.incarnation)

    def _run_successors(self, claim: SuccessorClaim | None, written: bool) -> None:
        """Give back the held slots; run what a committed settle claimed, like claimed
        jobs (after a failed write, whatever may have been claimed is released)."""
        if claim is None:
            return
        taken = claim.claimed if written else []
        with self._lock:
            self._reserved -= claim.limit
            for job in taken:
                self._running[job.id] = _Running(job, JobControl())
        for job in taken:
            self._dispatch(job)
        if claim.limit > len(claim.claimed):
            self._wake.set()  # the slots not used are free for the claimer again

    def _write_apart(self, outcome: Outcome, failure: Exception | None = None) -> None:
        """Write one outcome that a batch could not: with a minimal error if its own was
        refused, and if even that fails for a non-transient reason, drop it from the buffer
        (the job is released for a retry) so it never blocks the queue's other outcomes."""
        if failure is None:
            failure = self._refused(outcome)
        if failure is not None and outcome.error is not None:
            error = minimal_error(outcome.error, type(failure).__name__)
            failure = self._refused(attrs.evolve(outcome, error=error))
        if failure is None:
            self._forget([outcome])
            return
        logger.error(
            "job %s: its %s outcome cannot be written (%s); dropped, the job will be released",
            outcome.job.id,
            outcome.kind.value,
            type(failure).__name__,
            extra=job_log_extra(outcome.job, self.instance_id, error=type(failure).__name__),
        )
        self._release_needed = True
        self._forget([outcome], counted=False)

    def _refused(self, outcome: Outcome) -> Exception | None:
        """Write one outcome; the error when the database refuses it (transient ones raise)."""
        try:
            record_outcomes(
                self.backend, [outcome], instance_id=self.instance_id, queues=self._options
            )
        except Exception as exc:
            if is_transient(exc):
                raise
            return exc
        return None

    def _forget(self, outcomes: list[Outcome], *, counted: bool = True) -> None:
        ids = {id(o) for o in outcomes}
        with self._lock:
            kept = [o for o in self._finished if id(o) not in ids]
            self._finished.clear()
            self._finished.extend(kept)
            if counted:
                self.completed += len(outcomes)
            if not self._acks_free_room:
                return
            # Acknowledged: these jobs no longer count against the queue's global or
            # per-partition limit, so a claim that found no room may find some now.
            self._maybe_more = True
            self._retry_at = None
        self._wake.set()
