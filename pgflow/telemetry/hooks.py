"""The switch the job path reads: `OBSERVER` is None while telemetry is off, so a job pays
one attribute test and nothing here imports OpenTelemetry or prometheus_client.

`instrument` (tracing) and `enable_metrics` install their halves in one `Observer`; every
call into them is guarded, so a broken exporter or collector is logged and never fails a job.
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from pgflow.records import Job, NewJob
    from pgflow.runtime.execution import Outcome

__all__ = [
    "OBSERVER",
    "TRACE_KEYS",
    "InsertScope",
    "JobMetrics",
    "JobScope",
    "Observer",
    "Tracing",
    "set_metrics",
    "set_tracing",
    "successor_trace",
    "task_meta",
]

logger = logging.getLogger("pgflow.telemetry")

#: The keys of a job's meta that carry its trace context (W3C Trace Context).
TRACE_KEYS = ("traceparent", "tracestate")

#: Trace context for the task jobs a completion inserts, by workflow id: set around the
#: producer's write of finished tasks, read when the store builds the next steps' jobs.
_SUCCESSORS: contextvars.ContextVar[Mapping[str, dict[str, str]] | None] = contextvars.ContextVar(
    "pgflow_successor_trace", default=None
)


class Tracing(Protocol):
    """What `pgflow.telemetry.tracing` provides (imported only when instrumented)."""

    def job_started(self, job: Job, instance_id: str | None) -> Any: ...

    def job_finished(
        self, state: Any, outcome: Outcome | None, error: BaseException | None
    ) -> None: ...

    def insert_started(self, jobs: Sequence[NewJob]) -> tuple[list[NewJob], Any]: ...

    def insert_finished(
        self, state: Any, stored: Sequence[Job] | None, error: BaseException | None
    ) -> None: ...

    def run_started(self, workflow: str, workflow_id: str) -> Any: ...

    def run_finished(self, state: Any, error: BaseException | None) -> None: ...

    def current_meta(self) -> dict[str, str]: ...

    def capture(self) -> Any: ...

    def step_started(
        self, parent: Any, workflow: str, workflow_id: str, step: str, attempt: int
    ) -> Any: ...

    def step_finished(self, state: Any, error: BaseException | None) -> None: ...


class JobMetrics(Protocol):
    """What `pgflow.telemetry.metrics` provides (imported only when enabled)."""

    def job_started(self, job: Job) -> None: ...

    def job_finished(self, job: Job, seconds: float, outcome: str) -> None: ...

    def rescued(self, count: int) -> None: ...


_warned: set[str] = set()
_warned_lock = threading.Lock()


def _swallow(where: str, exc: BaseException) -> None:
    """Log a telemetry failure the first time each hook fails; jobs carry on regardless."""
    with _warned_lock:
        first = where not in _warned
        _warned.add(where)
    if first:
        logger.warning(
            "telemetry hook %s failed (%s); further failures of it are logged at DEBUG",
            where,
            type(exc).__name__,
            exc_info=exc,
            extra={"hook": where, "error": type(exc).__name__},
        )
    else:
        logger.debug("telemetry hook %s failed", where, exc_info=exc, extra={"hook": where})


class JobScope:
    """One attempt being observed: started by `Observer.job_started`, ended by `finish`."""

    __slots__ = ("_job", "_metrics", "_span", "_started", "_tracing")

    def __init__(self, observer: Observer, job: Job, instance_id: str | None) -> None:
        self._job = job
        self._tracing = observer.tracing
        self._metrics = observer.metrics
        self._span: Any = None
        self._started = 0.0
        if self._tracing is not None:
            try:
                self._span = self._tracing.job_started(job, instance_id)
            except Exception as exc:
                _swallow("job_started", exc)
        if self._metrics is not None:
            self._started = time.perf_counter()
            try:
                self._metrics.job_started(job)
            except Exception as exc:
                _swallow("metrics.job_started", exc)

    def finish(self, outcome: Outcome | None, error: BaseException | None = None) -> None:
        """End the attempt's span and count it; `error` when the runner itself raised."""
        if self._tracing is not None and self._span is not None:
            try:
                self._tracing.job_finished(self._span, outcome, error)
            except Exception as exc:
                _swallow("job_finished", exc)
        if self._metrics is not None:
            kind = "error" if outcome is None else outcome.kind.value
            try:
                self._metrics.job_finished(self._job, time.perf_counter() - self._started, kind)
            except Exception as exc:
                _swallow("metrics.job_finished", exc)


class Observer:
    """The installed halves of telemetry; hooks call it only when it is installed."""

    __slots__ = ("metrics", "tracing")

    def __init__(self, tracing: Tracing | None, metrics: JobMetrics | None) -> None:
        self.tracing = tracing
        self.metrics = metrics

    def job_started(self, job: Job, instance_id: str | None) -> JobScope:
        return JobScope(self, job, instance_id)

    def insert_started(self, jobs: list[NewJob]) -> InsertScope:
        """Begin an insert: its producer span, and the jobs to store given its context."""
        return InsertScope(self.tracing, jobs)

    @contextmanager
    def starting_run(self, workflow: str, workflow_id: str) -> Iterator[None]:
        """Wrap `start_run`: its span is current, so the first steps' jobs carry it."""
        tracing = self.tracing
        state: Any = None
        if tracing is not None:
            try:
                state = tracing.run_started(workflow, workflow_id)
            except Exception as exc:
                _swallow("run_started", exc)
        try:
            yield
        except BaseException as error:
            self._run_finished(state, error)
            raise
        self._run_finished(state, None)

    def _run_finished(self, state: Any, error: BaseException | None) -> None:
        if self.tracing is not None and state is not None:
            try:
                self.tracing.run_finished(state, error)
            except Exception as exc:
                _swallow("run_finished", exc)

    def capture(self) -> Any:
        """The current trace context, for steps that will run on other threads."""
        if self.tracing is None:
            return None
        try:
            return self.tracing.capture()
        except Exception as exc:
            _swallow("capture", exc)
            return None

    @contextmanager
    def step(
        self, parent: Any, workflow: str, workflow_id: str, step: str, attempt: int
    ) -> Iterator[None]:
        """A span around one in-process step call (pgflow.execute), under `parent`."""
        tracing = self.tracing
        state: Any = None
        if tracing is not None:
            try:
                state = tracing.step_started(parent, workflow, workflow_id, step, attempt)
            except Exception as exc:
                _swallow("step_started", exc)
        error: BaseException | None = None
        try:
            yield
        except BaseException as exc:
            error = exc
            raise
        finally:
            if tracing is not None and state is not None:
                try:
                    tracing.step_finished(state, error)
                except Exception as exc:
                    _swallow("step_finished", exc)

    def rescued(self, count: int) -> None:
        if self.metrics is not None and count:
            try:
                self.metrics.rescued(count)
            except Exception as exc:
                _swallow("metrics.rescued", exc)


class InsertScope:
    """An insert being observed: `jobs` are what to store (with trace context when tracing
    is on); `finish` ends its span with what was stored, or the error."""

    __slots__ = ("_state", "_tracing", "jobs")

    def __init__(self, tracing: Tracing | None, jobs: list[NewJob]) -> None:
        self._tracing = tracing
        self._state: Any = None
        self.jobs = jobs
        if tracing is not None:
            try:
                self.jobs, self._state = tracing.insert_started(jobs)
            except Exception as exc:
                _swallow("insert_started", exc)

    def finish(self, stored: Sequence[Job] | None, error: BaseException | None = None) -> None:
        if self._tracing is not None and self._state is not None:
            try:
                self._tracing.insert_finished(self._state, stored, error)
            except Exception as exc:
                _swallow("insert_finished", exc)


#: None while telemetry is off: the only thing the job path looks at.
OBSERVER: Observer | None = None
_install_lock = threading.Lock()


def set_tracing(tracing: Tracing | None) -> None:
    """Install (or with None remove) the tracing half, keeping the metrics half."""
    global OBSERVER
    with _install_lock:
        metrics = OBSERVER.metrics if OBSERVER is not None else None
        OBSERVER = None if tracing is None and metrics is None else Observer(tracing, metrics)


def set_metrics(metrics: JobMetrics | None) -> None:
    """Install (or with None remove) the metrics half, keeping the tracing half."""
    global OBSERVER
    with _install_lock:
        tracing = OBSERVER.tracing if OBSERVER is not None else None
        OBSERVER = None if tracing is None and metrics is None else Observer(tracing, metrics)


def task_meta(workflow_id: str) -> dict[str, str]:
    """The trace context a flow run's new task job carries in its meta: the finished task's
    (when a completion inserts it), else the current span's (start_run, resume, signals)."""
    observer = OBSERVER
    if observer is None or observer.tracing is None:
        return {}
    successors = _SUCCESSORS.get()
    if successors is not None:
        found = successors.get(workflow_id)
        if found is not None:
            return dict(found)
    try:
        return observer.tracing.current_meta()
    except Exception as exc:
        _swallow("task_meta", exc)
        return {}


@contextmanager
def successor_trace(jobs: Sequence[Job]) -> Iterator[None]:
    """While finished tasks are written, the steps they start inherit each run's context."""
    carried: dict[str, dict[str, str]] = {}
    for job in jobs:
        if job.task is not None and "traceparent" in job.meta:
            carried[job.task.workflow_id] = {
                key: str(job.meta[key]) for key in TRACE_KEYS if key in job.meta
            }
    token = _SUCCESSORS.set(carried)
    try:
        yield
    finally:
        _SUCCESSORS.reset(token)
