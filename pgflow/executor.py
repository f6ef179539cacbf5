"""Running workflows in-process: `pgflow.execute` and the `Executor` behind it.

Each step receives the previous step's output; the run returns the last step's output.
Graph flows (a step with `depends_on`, or a map) run on `pgflow.engine.graph_run` instead;
what follows describes chains.
A failed attempt is retried after the backoff delay (waited on the executor's clock) and
resumes at the step that failed, with the output of the step before it: completed steps
are checkpoints and do not run again. `timeout` bounds one attempt (from the step it
resumes at) and `step_timeout` one step; a step that outlives either is abandoned, the
caller gets StepTimedOut at the deadline, and that counts as a failed attempt. There is no
timeout unless one is asked for (as for `Worker` and `workflow_worker`): a sync step cannot
be killed, so a default deadline would silently leave threads running on.

With a backend and a `workflow_id`, a run is durable and fenced: a completed run returns its
stored output without running anything, a failed one resumes after its last completed step,
and one that another caller is executing is waited for (see `pgflow.engine.run`).

Where steps run: with no timeout at all (`timeout=None` and no step timeouts) sync steps
run in the caller's thread, as plain calls. Otherwise they run on reusable daemon runner
threads while the caller waits with a deadline. A sync step cannot be killed, so a timed-out
one keeps its runner until it returns, but never starts another step and its result is
dropped; at most `pgflow.abandoned.ABANDONED.limit` such runners may be left, after which
timed steps are refused (TooManyAbandonedThreads) until some return. Async steps run on
one shared background event loop and are cancelled at their deadline; a blocking call
inside an `async def` step stalls every other async step.
Retries wait on the clock: timeouts are real time, backoff waits are `clock.sleep`.
"""

from __future__ import annotations

import atexit
import importlib
import math
import threading
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, cast

from pgflow.backend import RunStore
from pgflow.backoff_policy import DEFAULT_BACKOFF, Backoff
from pgflow.clock import SYSTEM_CLOCK, Clock
from pgflow.definition import resolve_workflow
from pgflow.engine.graph_run import GraphRun
from pgflow.engine.run import Run
from pgflow.errors import DefinitionError
from pgflow.identifiers import validate_workflow_id
from pgflow.run_log import CONTEXT_KEYS

_NUMBER = (int, float)
_STORE_METHODS = ("start_run", "start_attempt", "record_step", "finish_run", "get_run", "get_steps")


def _check_seconds(name: str, value: object) -> None:
    if value is None:
        return
    if (
        isinstance(value, bool)
        or not isinstance(value, _NUMBER)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise DefinitionError(f"{name} must be None or a number of seconds > 0, got {value!r}")


def _check_options(
    max_attempts: object,
    timeout: object,
    step_timeout: object,
    backoff: object,
    workflow_id: object,
    log_context: Mapping[str, Any] | None,
) -> None:
    if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1:
        raise DefinitionError(f"max_attempts must be an int >= 1, got {max_attempts!r}")
    _check_seconds("timeout", timeout)
    _check_seconds("step_timeout", step_timeout)
    if backoff is not None and not isinstance(backoff, Backoff):
        raise DefinitionError(f"backoff must be a pgflow.Backoff, got {backoff!r}")
    if workflow_id is not None:
        validate_workflow_id(workflow_id)
    if log_context:
        unknown = sorted(set(log_context) - CONTEXT_KEYS)
        if unknown:
            raise DefinitionError(
                f"log_context keys must be among {sorted(CONTEXT_KEYS)}, got {unknown}"
            )


class Executor:
    """Runs workflows in this process, recording them in `backend` (a RunStore, a URL or an
    SQLAlchemy Engine) when one is given, and waiting for retries on `clock` (a FakeClock
    in tests). A URL or Engine is opened with `pgflow.backend_from_url` on first use."""

    __slots__ = ("_backend", "_lock", "_retired", "_store", "_users", "clock")

    def __init__(self, backend: RunStore | str | Any = None, clock: Clock | None = None) -> None:
        opened = backend is None or _to_open(backend)
        # Duck-typed: a runtime Protocol isinstance check is slow on this path.
        if not opened and not all(
            callable(getattr(backend, name, None)) for name in _STORE_METHODS
        ):
            raise DefinitionError(
                "backend must be a RunStore, a URL string or an SQLAlchemy Engine, "
                f"got {type(backend).__name__}"
            )
        self._backend = backend
        self._store: RunStore | None = None if opened else cast(RunStore, backend)
        self._lock = threading.Lock()
        self.clock: Clock = SYSTEM_CLOCK if clock is None else clock
        self._users = 0  # calls of `pgflow.execute` using this cached executor now
        self._retired = False  # evicted from that cache: closed when its last call ends

    @property
    def backend(self) -> RunStore | None:
        """The RunStore runs are recorded in (a URL is opened on first use), or None."""
        store = self._store
        if store is None and self._backend is not None:
            with self._lock:
                if self._store is None:
                    self._store = _open(self._backend)
                store = self._store
        return store

    def execute(
        self,
        workflow: object,
        input: Any,
        *,
        max_attempts: int = 3,
        timeout: float | None = None,
        step_timeout: float | None = None,
        backoff: Backoff | None = None,
        workflow_id: str | None = None,
        log_context: Mapping[str, Any] | None = None,
        max_parallel: int = 10,
    ) -> Any:
        """Run `workflow` on `input` and return its last step's output (see module docstring);
        for a graph flow, a dict of its leaf steps' outputs (a skipped leaf left out), its
        ready steps and map elements run concurrently, at most `max_parallel` at once, each
        retried on its own, and `timeout` bounds the whole run (see `pgflow.engine.graph_run`).

        `workflow` is a Flow, a Workflow, or a class or module with `__workflow_steps__`.
        `max_attempts` bounds attempts (a step's own `max_attempts` wins when that step
        fails); `backoff` spaces them (default: 10 s, 100 s, 1000 s). `timeout` (default
        none) bounds one attempt. `workflow_id` (at most 64 characters) names the run; with a
        backend, a completed run of that id returns its stored output, a failed one resumes
        after its last completed step, and one another caller is executing is waited for
        (up to `timeout`, then taken over). `log_context` may carry `job_id` and
        `instance_id` for log records.

        Raises StepFailed or StepTimedOut when the run fails on its first attempt or a step
        raised Discard, MaxAttemptsExceeded when retries were made and all failed, and
        SerializationError (never retried) when a recorded input or output is not JSON,
        DefinitionError when a stored run's steps differ from `workflow`'s, WorkflowError
        when it was started with another input or failed in the caller it waited for.
        """
        resolved = resolve_workflow(workflow)
        _check_options(max_attempts, timeout, step_timeout, backoff, workflow_id, log_context)
        if isinstance(max_parallel, bool) or not isinstance(max_parallel, int) or max_parallel < 1:
            raise DefinitionError(f"max_parallel must be an int >= 1, got {max_parallel!r}")
        store = self._store if self._store is not None or self._backend is None else self.backend
        # One set of options for both engines: a chain runs its steps in order, a graph
        # runs ready steps concurrently (bounded by max_parallel).
        options: dict[str, Any] = {
            "store": store,
            "clock": self.clock,
            "max_attempts": max_attempts,
            "timeout": None if timeout is None else float(timeout),
            "step_timeout": None if step_timeout is None else float(step_timeout),
            "backoff": DEFAULT_BACKOFF if backoff is None else backoff,
            "workflow_id": workflow_id,
            "log_context": log_context,
        }
        if resolved.is_graph:
            return GraphRun(resolved, input, max_parallel=max_parallel, **options).execute()
        return Run(resolved, input, **options).execute()

    def close(self) -> None:
        """Close the backend this executor opened from a URL or Engine (a RunStore passed
        in is the caller's to close); a later run opens it again."""
        with self._lock:
            store, self._store = self._store, None
        if store is not None and self._backend is not None and _to_open(self._backend):
            store.close()  # type: ignore[attr-defined]

    def __repr__(self) -> str:
        return f"Executor(backend={self._backend!r}, clock={self.clock!r})"


def _to_open(backend: object) -> bool:
    """A URL or an SQLAlchemy Engine (recognised without importing SQLAlchemy)."""
    return isinstance(backend, str) or type(backend).__module__.startswith("sqlalchemy.")


def _open(url_or_engine: object) -> RunStore:
    # Imported late: keeps `import pgflow` light and the registry optional until used.
    registry = importlib.import_module("pgflow.registry")
    store: RunStore = registry.backend_from_url(url_or_engine)
    return store


_DEFAULT_EXECUTOR = Executor()
#: How many URLs or Engines `pgflow.execute` keeps open at once (least recently used go).
MAX_CACHED_EXECUTORS = 16


class _ExecutorCache:
    """One Executor (and so one opened backend) per URL or Engine, reused by later calls.

    Bounded: past `MAX_CACHED_EXECUTORS` the least recently used is evicted and its backend
    closed as soon as no call is still running on it.
    """

    def __init__(self) -> None:
        self._entries: OrderedDict[object, Executor] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def checkout(self, source: object) -> Executor:
        """The executor for `source`, counted as in use until `checkin`."""
        with self._lock:
            executor = self._entries.get(source)
            if executor is None:
                executor = self._entries[source] = Executor(source)
            else:
                self._entries.move_to_end(source)
            executor._users += 1
            idle = self._evict(len(self._entries) - MAX_CACHED_EXECUTORS)
        for old in idle:
            old.close()
        return executor

    def checkin(self, executor: Executor) -> None:
        with self._lock:
            executor._users -= 1
            last = executor._retired and executor._users == 0
        if last:
            executor.close()

    def close_all(self) -> None:
        with self._lock:
            idle = self._evict(len(self._entries))
        for old in idle:
            old.close()

    def _evict(self, count: int) -> list[Executor]:
        """Retire the `count` least recently used (lock held); return those idle now."""
        idle = []
        for _ in range(max(count, 0)):
            _source, old = self._entries.popitem(last=False)
            old._retired = True
            if old._users == 0:
                idle.append(old)
        return idle


_EXECUTORS = _ExecutorCache()


def close_all() -> None:
    """Close the backends `pgflow.execute(..., backend=URL or Engine)` opened (also at exit);
    calls still running finish first, and later calls open them again."""
    _EXECUTORS.close_all()


atexit.register(close_all)


def execute(
    workflow: object,
    input: Any,
    *,
    backend: RunStore | str | Any = None,
    max_attempts: int = 3,
    timeout: float | None = None,
    step_timeout: float | None = None,
    backoff: Backoff | None = None,
    workflow_id: str | None = None,
    log_context: Mapping[str, Any] | None = None,
    max_parallel: int = 10,
) -> Any:
    """Run `workflow` on `input` in this process; see `Executor.execute` for the options.

    `backend` is a RunStore, a URL ("memory://", "sqlite:///runs.db", ...) or an SQLAlchemy
    Engine; a URL or Engine is opened once and reused by later calls (the
    `MAX_CACHED_EXECUTORS` most recently used stay open; `close_all()` closes them). Without
    a backend nothing is stored or serialised.
    """
    cached = backend is not None and _to_open(backend)
    if cached:
        executor = _EXECUTORS.checkout(backend)
    else:
        executor = _DEFAULT_EXECUTOR if backend is None else Executor(backend)
    try:
        return executor.execute(
            workflow,
            input,
            max_attempts=max_attempts,
            timeout=timeout,
            step_timeout=step_timeout,
            backoff=backoff,
            workflow_id=workflow_id,
            log_context=log_context,
            max_parallel=max_parallel,
        )
    finally:
        if cached:
            _EXECUTORS.checkin(executor)
