"""`pgflow.Pgflow`: one instance of the distributed runtime, serving queues from a shared store.

The app owns the backend and the instance's threads: one producer per queue, the heartbeat,
the listener that forwards insert notifications, and the leader campaign whose holder stages,
rescues, prunes and runs cron for the whole cluster. Everything goes through the backend
protocol, so the same app runs on PostgreSQL, SQLite or in memory.
"""

from __future__ import annotations

import contextlib
import enum
import importlib
import json
import logging
import math
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, overload

import attrs

from pgflow.backend import Backend, FlowStore
from pgflow.background_loop import BackgroundLoop
from pgflow.clock import SYSTEM_CLOCK, Clock
from pgflow.errors import (
    BackendError,
    DefinitionError,
    RunStateError,
    SchemaError,
    SignalError,
    WorkflowError,
)
from pgflow.graph.ready import check_deadline
from pgflow.identifiers import (
    storable_job_id,
    storable_workflow_id,
    validate_instance_id,
    validate_queue,
)
from pgflow.queue_config import Queue, published, published_options, queue_options
from pgflow.records import (
    Instance,
    InstanceInfo,
    Job,
    JobCount,
    JobState,
    NewJob,
    QueueControl,
    QueueStats,
    RescueReport,
    RunRecord,
    RunState,
)
from pgflow.run_handle import RunHandle, with_steps
from pgflow.runtime.cron import CronScheduler, parse_cron
from pgflow.runtime.deadlines import DEFAULT_DEADLINE_INTERVAL
from pgflow.runtime.heartbeat import Heartbeat
from pgflow.runtime.leader import Leader
from pgflow.runtime.producer import Producer
from pgflow.runtime.reconnect import RetryDelay
from pgflow.runtime.signals import stop_on_signals
from pgflow.runtime.unserved_flows import (
    DEFAULT_UNSERVED_GRACE,
    DEFAULT_UNSERVED_INTERVAL,
    UnservedFlowSweep,
)
from pgflow.runtime.wakeup import Wakeup
from pgflow.runtime.worker_lookup import WorkerLookup
from pgflow.serialization import check_limit, roundtrip
from pgflow.telemetry import hooks
from pgflow.worker import check_worker_modules

if TYPE_CHECKING:
    from pgflow.definition import Workflow
    from pgflow.graph.shape import FlowPlan

__all__ = ["AppStatus", "Pgflow", "QueueFlow", "default_instance_id", "queue_flows"]

logger = logging.getLogger("pgflow.runtime")

DEFAULT_QUEUES: dict[str, int] = {"default": 10}
WEEK = 7 * 24 * 3600.0
SQLITE_POLL_INTERVAL = 0.1


def default_instance_id() -> str:
    """$INSTANCE_ID, else "<hostname>-<pid>"."""
    return os.environ.get("INSTANCE_ID") or f"{socket.gethostname()}-{os.getpid()}"


@attrs.frozen
class QueueFlow:
    """One queue as `pgflow status` shows it: the options the online instances serving it
    published, and its flow now (executing, available, rate window, pause, holds and the
    partitions with the most waiting jobs)."""

    queue: str
    stats: QueueStats
    #: Each distinct `pgflow.Queue` the online instances serving the queue published, with
    #: how many publish it, most first (several only while a deploy changes them).
    options: tuple[tuple[Queue, int], ...] = ()
    #: "paused", "held" (the whole queue, by a RateLimited, until stats.control.hold_until)
    #: or "active".
    state: str = "active"

    @property
    def shape(self) -> Queue | None:
        """The options status reads the queue's rate window and partitions by."""
        return self.options[0][0] if self.options else None


def _queue_state(control: QueueControl, now: datetime) -> str:
    if control.paused:
        return "paused"
    if control.hold_until is not None and control.hold_until > now:
        return "held"
    return "active"


def queue_flows(
    backend: Backend,
    counts: Sequence[JobCount],
    instances: Sequence[Instance],
    local: Mapping[str, Queue] | None = None,
    now: datetime | None = None,
) -> list[QueueFlow]:
    """Every queue known from its jobs, its online instances, its stored control or
    `local` (an app's own queues, used when no online instance publishes the queue), by
    name, with `backend.queue_stats` read through the options it is served with. `now`
    (the store's clock) tells a hold still on from one that ended."""
    now = now or datetime.now(UTC)
    if not hasattr(backend, "queue_stats"):
        return []  # a backend written before flow control (issue 12): nothing to show
    published_by = published_options(instances)
    names = {count.queue for count in counts} | set(published_by) | set(local or {})
    names.update(control.queue for control in backend.queue_controls())
    flows: list[QueueFlow] = []
    for name in sorted(names):
        ranked = list(published_by.get(name, ()))
        if not ranked and local is not None and name in local:
            ranked = [(local[name], 0)]
        shape = ranked[0][0] if ranked else None
        stats = backend.queue_stats(name, shape)
        flows.append(QueueFlow(name, stats, tuple(ranked), _queue_state(stats.control, now)))
    return flows


@attrs.frozen
class AppStatus:
    """What `pgflow status` shows: job counts by queue, state and instance; the instances;
    each queue's flow."""

    jobs: tuple[JobCount, ...]
    instances: tuple[Instance, ...]
    queues: tuple[QueueFlow, ...] = ()

    def queue(self, name: str) -> QueueFlow | None:
        """The flow of queue `name`, or None when status knows no such queue."""
        return next((flow for flow in self.queues if flow.queue == name), None)

    def count(self, *, queue: str | None = None, state: JobState | None = None) -> int:
        return sum(
            row.count
            for row in self.jobs
            if (queue is None or row.queue == queue) and (state is None or row.state == state)
        )


def _seconds(name: str, value: object) -> float:
    """A positive, finite number of seconds, or DefinitionError naming the option."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value <= 0
    ):
        raise DefinitionError(f"Pgflow: {name} must be a positive number of seconds, got {value!r}")
    return float(value)


def _optional_seconds(name: str, value: object) -> float | None:
    return None if value is None else _seconds(name, value)


class _BackendsOwn(enum.Enum):
    """`max_payload_bytes` not given: the backend's own setting (4 MiB unless set there)."""

    LIMIT = "the backend's own"


def _open_backend(target: object, max_payload_bytes: int | _BackendsOwn | None) -> Backend:
    options: dict[str, Any] = {}
    if max_payload_bytes is not _BackendsOwn.LIMIT:
        options["max_payload_bytes"] = check_limit(max_payload_bytes)
    if isinstance(target, Backend):
        own = getattr(target, "max_payload_bytes", None)
        if options and options["max_payload_bytes"] != own:
            raise DefinitionError(
                f"Pgflow: max_payload_bytes={max_payload_bytes!r} differs from the given "
                f"backend's ({own!r}); set it on the backend you built, or pass a URL"
            )
        return target
    from sqlalchemy import Engine

    if isinstance(target, (str, Engine)):
        from pgflow.registry import backend_from_url

        return backend_from_url(target, **options)
    raise DefinitionError(
        "Pgflow needs a database URL, an SQLAlchemy Engine or a backend object, "
        f"got {type(target).__name__}"
    )


def _served_flows() -> list[tuple[str, str]]:
    """The flow definitions this process can run tasks of (imported or started here)."""
    from pgflow.graph.registry import flows

    return flows.served()


def _register_flow(workflow: Workflow) -> None:
    """Register a flow and its sub-flows (recursively) so this process runs their tasks."""
    from pgflow.definition import SUBFLOW, resolve_workflow
    from pgflow.graph.registry import flows

    flows.add_workflow(workflow)
    for step in workflow.steps:
        if step.kind == SUBFLOW:
            _register_flow(resolve_workflow(step.child))


class _KnownPlans(Mapping[str, "FlowPlan"]):
    """The plans of every flow definition known in this process, by fingerprint, looked
    up when the store asks (for a run the app cannot read before the store does)."""

    def _definitions(self) -> dict[str, tuple[str, str]]:
        from pgflow.graph.registry import flows

        return {fingerprint: (name, fingerprint) for name, fingerprint in flows.served()}

    def __getitem__(self, fingerprint: str) -> FlowPlan:
        from pgflow.graph.registry import flows

        workflow = flows.by_fingerprint(fingerprint)
        if workflow is None:
            raise KeyError(fingerprint)
        return workflow.plan

    def __iter__(self) -> Iterator[str]:
        return iter(self._definitions())

    def __len__(self) -> int:
        return len(self._definitions())


def _canonical(value: Any) -> str:
    """JSON with sorted keys: equal inputs compare equal whatever their key order."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _default_poll_interval(backend: Backend) -> float:
    """1 s where inserts wake workers in other processes (PostgreSQL NOTIFY) or where there
    are no other processes (memory); SQLite has no such signal, so it polls every 0.1 s."""
    return SQLITE_POLL_INTERVAL if backend.url.startswith("sqlite") else 1.0


class Pgflow:
    """An instance of the distributed runtime; see API.md section 6.

    ``app = Pgflow("postgresql://localhost/app", queues={"default": 10})``, then
    ``app.insert(MyWorker.new({...}))`` anywhere, and ``app.run()`` in worker processes.
    """

    def __init__(
        self,
        url_or_engine_or_backend: Any,
        *,
        queues: Mapping[str, int | Queue] | None = None,
        instance_id: str | None = None,
        heartbeat_interval: float = 5.0,
        stale_timeout: float = 300.0,
        poll_interval: float | None = None,
        cron: Iterable[Sequence[Any]] = (),
        prune_after: float | None = WEEK,
        prune_interval: float = 60.0,
        stage_interval: float = 0.5,
        rescue_interval: float | None = None,
        unserved_grace: float | None = DEFAULT_UNSERVED_GRACE,
        unserved_interval: float = DEFAULT_UNSERVED_INTERVAL,
        deadline_interval: float = DEFAULT_DEADLINE_INTERVAL,
        shutdown_timeout: float = 30.0,
        imports: Iterable[str] = (),
        worker_modules: Iterable[str] = (),
        clock: Clock | None = None,
        max_payload_bytes: int | _BackendsOwn | None = _BackendsOwn.LIMIT,
    ) -> None:
        for module in imports:
            importlib.import_module(module)
        self.worker_modules = check_worker_modules(worker_modules)
        #: Each queue's full options (`pgflow.Queue`); an int given for a queue is its limit.
        self.queue_options: dict[str, Queue] = queue_options(
            DEFAULT_QUEUES if queues is None else queues
        )
        #: Each queue's limit on this instance (what the app had before pgflow.Queue).
        self.queues: dict[str, int] = {
            name: options.limit for name, options in self.queue_options.items()
        }
        self.instance_id = validate_instance_id(
            default_instance_id() if instance_id is None else instance_id
        )
        self.heartbeat_interval = _seconds("heartbeat_interval", heartbeat_interval)
        self.stale_timeout = _seconds("stale_timeout", stale_timeout)
        if self.stale_timeout <= self.heartbeat_interval:
            raise DefinitionError(
                f"Pgflow: stale_timeout ({stale_timeout}) must be longer than heartbeat_interval "
                f"({heartbeat_interval}), or live instances would be presumed dead"
            )
        poll_interval = _optional_seconds("poll_interval", poll_interval)
        self.prune_after = _optional_seconds("prune_after", prune_after)
        self.prune_interval = _seconds("prune_interval", prune_interval)
        self.stage_interval = _seconds("stage_interval", stage_interval)
        self.rescue_interval = _optional_seconds("rescue_interval", rescue_interval) or max(
            0.5, min(5.0, self.stale_timeout / 4)
        )
        self.unserved_grace = _optional_seconds("unserved_grace", unserved_grace)
        self.unserved_interval = _seconds("unserved_interval", unserved_interval)
        self.deadline_interval = _seconds("deadline_interval", deadline_interval)
        self.shutdown_timeout = _seconds("shutdown_timeout", shutdown_timeout)
        self.cron = parse_cron(cron)
        self.clock = clock or SYSTEM_CLOCK
        self.worker_lookup = WorkerLookup(self.worker_modules, clock=self.clock)
        self._owns_backend = not isinstance(url_or_engine_or_backend, Backend)
        self.backend = _open_backend(url_or_engine_or_backend, max_payload_bytes)
        self.poll_interval = poll_interval or _default_poll_interval(self.backend)
        self._lock = threading.Lock()
        self._producers: dict[str, Producer] = {}
        self._threads: tuple[Heartbeat, Wakeup, Leader] | None = None
        self._async_loop = BackgroundLoop("pgflow-asyncio")
        self._stop_requested = threading.Event()
        self._displaced = threading.Event()
        self._incarnation = ""
        self._extra = {"instance_id": self.instance_id}

    def __repr__(self) -> str:
        return f"Pgflow({self.backend.url!r}, instance_id={self.instance_id!r})"

    # --- using the store -----------------------------------------------------------------

    def migrate(self) -> None:
        """Create or upgrade the schema (idempotent)."""
        self.backend.migrate()

    @overload
    def insert(self, jobs: NewJob, *, connection: Any = None) -> Job: ...

    @overload
    def insert(self, jobs: Sequence[NewJob], *, connection: Any = None) -> list[Job]: ...

    def insert(self, jobs: NewJob | Sequence[NewJob], *, connection: Any = None) -> Job | list[Job]:
        """Insert one job (returns the stored Job) or many at once (returns the list).

        With `connection`, the insert joins the caller's SQLAlchemy transaction.
        """
        single = isinstance(jobs, NewJob)
        batch: list[NewJob] = [jobs] if isinstance(jobs, NewJob) else list(jobs)
        for item in batch:
            if not isinstance(item, NewJob):
                raise DefinitionError(
                    f"insert expects jobs built by Worker.new(...), got {type(item).__name__}"
                )
        observer = hooks.OBSERVER
        if observer is None:
            stored = self.backend.insert_jobs(batch, connection=connection)
        else:  # a producer span; the jobs carry its trace context in their meta
            scope = observer.insert_started(batch)
            try:
                stored = self.backend.insert_jobs(scope.jobs, connection=connection)
            except BaseException as exc:
                scope.finish(None, exc)
                raise
            scope.finish(stored)
        if connection is None:
            self._wake({job.queue for job in stored if job.state is JobState.AVAILABLE})
        return stored[0] if single else stored

    def get_job(self, job_id: int) -> Job | None:
        """The stored job (with `result` once completed), or None."""
        if not storable_job_id(job_id):
            return None
        return self.backend.get_job(job_id)

    def retry(self, job_id: int) -> Job | None:
        """Run a finished (completed, discarded, cancelled) or waiting job again, now.

        Its attempts and errors are kept; an exhausted job gets one more attempt. Raises
        JobStateError for an executing job. Returns the job, or None when there is none.
        """
        if not storable_job_id(job_id):
            return None
        job = self.backend.retry_job(job_id)
        if job is not None and job.state is JobState.AVAILABLE:
            self._wake({job.queue})
        return job

    def cancel(self, job_id: int) -> Job | None:
        """Cancel a waiting job now; ask a running one to stop. Returns the job, or None."""
        if not storable_job_id(job_id):
            return None
        job = self.backend.cancel_job(job_id)
        if job is not None and job.state is JobState.EXECUTING:
            for producer in list(self._producers.values()):
                producer.cancel_local(job_id)
        return job

    def start_run(
        self,
        flow: object,
        input: Any,
        *,
        workflow_id: str | None = None,
        max_attempts: int = 3,
        connection: Any = None,
        deadline: float | None = None,
    ) -> RunHandle:
        """Start a distributed run of `flow` on `input`: each step a task job that any
        instance serving the flow's queues runs. Returns its handle at once.

        With `deadline` (seconds), a run still running that long after its start fails
        (`handle.result()` raises DeadlineExceeded), its sub-flow runs cancelled.
        An existing `workflow_id` returns that run's handle when it was started with the same
        definition and input (so a retried start is harmless), else raises DefinitionError
        (another definition) or WorkflowError (another input or flow).
        """
        from pgflow.definition import resolve_workflow

        store = self._flow_store()
        workflow = resolve_workflow(flow)
        if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1:
            raise DefinitionError(
                f"start_run: max_attempts must be an int >= 1, got {max_attempts!r}"
            )
        if deadline is not None:
            check_deadline("start_run", deadline)
        plan = workflow.plan
        _register_flow(workflow)
        run_id = workflow_id if workflow_id is not None else str(uuid.uuid4())
        observer = hooks.OBSERVER
        # Traced: the first steps' jobs carry this span's context, and pass it on.
        traced = (
            contextlib.nullcontext()
            if observer is None
            else observer.starting_run(workflow.name, run_id)
        )
        with traced:
            run, created = store.start_flow_run(
                plan,
                workflow_id=run_id,
                input=input,
                max_attempts=max_attempts,
                connection=connection,
                deadline=None if deadline is None else float(deadline),
            )
        if not created:
            self._check_same_run(
                run, workflow.name, workflow.fingerprint, workflow.definition, input
            )
        elif connection is None:
            self._wake(set())
        return RunHandle(self.backend, store, run_id)

    @staticmethod
    def _check_same_run(
        run: RunRecord, name: str, fingerprint: str, definition: Any, input: Any
    ) -> None:
        """A start under an existing id must describe the same run, or it is refused."""
        from pgflow.definition import describe_change

        if run.workflow != name:
            raise WorkflowError(
                f"run {run.workflow_id} belongs to flow {run.workflow!r}, not {name!r}",
                workflow_id=run.workflow_id,
            )
        if run.fingerprint != fingerprint:
            raise DefinitionError(
                f"run {run.workflow_id} of flow {name!r} was started with another definition "
                f"({describe_change(run.definition, definition)}); use a new workflow_id"
            )
        if _canonical(run.input) != _canonical(roundtrip(input, what="input")):
            raise WorkflowError(
                f"run {run.workflow_id} of flow {name!r} was started with another input; use a "
                "new workflow_id for a new input",
                workflow_id=run.workflow_id,
            )

    def get_run(self, workflow_id: str) -> RunRecord | None:
        """The run (None when unknown), with `.steps` holding every step's state."""
        run = self._stored_run(workflow_id)
        if run is None:
            return None
        return with_steps(self._flow_store(), run)

    def _stored_run(self, workflow_id: str) -> RunRecord | None:
        """The stored run, None for an unknown id or one no run could have."""
        if not storable_workflow_id(workflow_id):
            return None
        return self.backend.get_run(workflow_id)

    def list_runs(
        self,
        flow: Any = None,
        state: RunState | str | None = None,
        since: datetime | None = None,
        limit: int = 100,
    ) -> list[RunRecord]:
        """Runs, newest first: of `flow` (a Flow or its name), in `state`, started at or
        after `since` (an aware datetime), at most `limit`. Steps are not read (get_run)."""
        name = flow if flow is None or isinstance(flow, str) else getattr(flow, "name", None)
        if flow is not None and not isinstance(name, str):
            raise TypeError(f"flow must be a pgflow.Flow or a name, not {type(flow).__name__}")
        if since is not None and since.tzinfo is None:
            raise ValueError("since must be an aware datetime (e.g. datetime.now(UTC))")
        wanted = None if state is None else RunState(state)
        return self.backend.list_runs(workflow=name, state=wanted, limit=limit, since=since)

    def cancel_run(self, workflow_id: str) -> RunRecord:
        """Cancel a running distributed run: it ends `cancelled`, its queued tasks are
        cancelled and its running ones asked to stop (sync steps see `self.cancelled`, async
        ones are cancelled); a late completion changes nothing. RunStateError, naming the
        run and its state, for an unknown, finished or in-process run."""
        store = self._flow_store()
        run = store.cancel_run(workflow_id) if storable_workflow_id(workflow_id) else None
        if run is None:
            raise RunStateError(f"run {workflow_id!r} is not stored; nothing to cancel")
        return with_steps(store, run)

    def signal(self, workflow_id: str, name: str, payload: Any, connection: Any = None) -> bool:
        """Deliver `payload` to wait_for step `name` of running run `workflow_id`: True when
        the step was waiting (it completes with the payload and the run moves on), False
        when it is not reached yet (the signal is kept for it). SignalError, nothing
        delivered, for an unknown run or step, a step that is no wait, a run no longer
        running, or a wait that already took a signal or timed out. With `connection`,
        the signal joins the caller's SQLAlchemy transaction."""
        store = self._flow_store()
        if not storable_workflow_id(workflow_id):
            raise SignalError(f"signal {name!r}: run {workflow_id!r} is not stored")
        # The store reads the run under its lock (in the caller's transaction too, where the
        # run may be new and SQLite would wait for it) and takes its plan by fingerprint
        # from the definitions this process knows: one transaction, no read before it.
        try:
            delivered = store.signal_run(
                _KnownPlans(), workflow_id, name, payload, connection=connection
            )
        except SignalError as exc:
            if not exc.definition_unknown or connection is not None:
                raise
            run = self._stored_run(workflow_id)
            if run is None:
                raise
            self._known_definition(run, f"signal {name!r}", SignalError)  # says what differs
            raise
        logger.info(
            "signal %r %s run %s",
            name,
            "delivered to" if delivered else "kept for",
            workflow_id,
            extra={**self._extra, "workflow_id": workflow_id, "step": name, "delivered": delivered},
        )
        if delivered and connection is None:
            self._wake(set())
        return delivered

    def resume_run(self, workflow_id: str) -> RunHandle:
        """Continue a failed or cancelled distributed run from where it stopped: completed
        and skipped steps are kept (their functions do not run again), the others run
        anew. Fix the cause first (deploy the fix, then resume). RunStateError for an
        unknown, running or completed run; DefinitionError when this process does not know
        the definition the run was started with (it says how the known one differs)."""
        store = self._flow_store()
        run = self._stored_run(workflow_id)
        if run is None:
            raise RunStateError(f"resume_run: run {workflow_id!r} is not stored")
        if run.state in (RunState.RUNNING, RunState.COMPLETED):
            raise RunStateError(
                f"resume_run: run {workflow_id!r} of flow {run.workflow!r} is "
                f"{run.state.value}; only a failed or cancelled run can be resumed"
            )
        workflow = self._known_definition(run, "resume_run", DefinitionError)
        _register_flow(workflow)
        store.resume_run(workflow.plan, workflow_id)
        logger.info(
            "run %s of flow %r resumed",
            workflow_id,
            run.workflow,
            extra={**self._extra, "workflow": run.workflow, "workflow_id": workflow_id},
        )
        self._wake(set())
        return RunHandle(self.backend, store, workflow_id)

    def restart_run(
        self, workflow_id: str, from_step: str | None = None, input: Any = None
    ) -> RunHandle:
        """Start a new run (`restart_of` = `workflow_id`) of a finished run's definition.
        `from_step` re-runs that step and everything downstream of it, keeping the other
        outputs; a non-None `input` is the new run's input and re-runs the steps that read
        the input (and what follows them); with neither, every step runs again on the old
        input. RunStateError for an unknown or running run; DefinitionError for an unknown
        step, or when this process does not know the run's definition."""
        from pgflow.graph.ready import restart_steps

        store = self._flow_store()
        run = self._stored_run(workflow_id)
        if run is None:
            raise RunStateError(f"restart_run: run {workflow_id!r} is not stored")
        if run.state is RunState.RUNNING:
            raise RunStateError(
                f"restart_run: run {workflow_id!r} of flow {run.workflow!r} is running; "
                "cancel it first, or resume it once it failed"
            )
        workflow = self._known_definition(run, "restart_run", DefinitionError)
        new_input = input is not None
        rerun = restart_steps(workflow.plan, from_step, new_input)
        _register_flow(workflow)
        new_id = str(uuid.uuid4())
        store.restart_run(
            workflow.plan,
            workflow_id,
            new_id=new_id,
            rerun=rerun,
            input=input if new_input else run.input,
        )
        logger.info(
            "run %s of flow %r restarted as %s",
            workflow_id,
            run.workflow,
            new_id,
            extra={
                **self._extra,
                "workflow": run.workflow,
                "workflow_id": new_id,
                "restart_of": workflow_id,
                "from_step": from_step,
                "new_input": new_input,
            },
        )
        self._wake(set())
        return RunHandle(self.backend, store, new_id)

    @staticmethod
    def _known_definition(run: RunRecord, what: str, error: type[Exception]) -> Workflow:
        """The definition `run` was started with, as this process knows it, or `error`
        naming the flow and how the definition(s) known here differ from the run's."""
        from pgflow.graph.difference import describe_difference
        from pgflow.graph.registry import flows
        from pgflow.runtime.unserved_flows import short

        if run.fingerprint is None:
            raise RunStateError(
                f"{what}: run {run.workflow_id!r} of {run.workflow!r} was not started with "
                "start_run; only distributed runs can be steered"
            )
        workflow = flows.find(run.workflow, run.fingerprint)
        if workflow is not None:
            return workflow
        message = (
            f"{what}: run {run.workflow_id!r} of flow {run.workflow!r} was started with "
            f"definition {short(run.fingerprint)}, which is not known in this process"
        )
        known = flows.versions(run.workflow)
        if known:
            changes = "; ".join(
                f"definition {short(other.fingerprint)} differs from it: "
                f"{describe_difference(run.definition, other.definition)}"
                for other in known[:3]
            )
            message += f" ({changes}); run the code that defines the run's version"
        else:
            message += "; import the module that defines it"
        raise error(message)

    def _flow_store(self) -> FlowStore:
        """The backend as a FlowStore, or BackendError naming it: distributed runs need one."""
        if not isinstance(self.backend, FlowStore):
            raise BackendError(
                f"{type(self.backend).__name__} ({self.backend.url}) does not store "
                "distributed flow runs (it is no pgflow.FlowStore); use a bundled backend "
                "(PostgreSQL, SQLite or memory), or pgflow.execute to run the flow in-process"
            )
        return self.backend

    def status(self) -> AppStatus:
        """Job counts by queue, state and instance, the registered instances, and each
        queue's flow (limits, executing, available, rate window, pause and holds)."""
        counts = tuple(self.backend.job_counts())
        instances = tuple(self.backend.list_instances())
        return AppStatus(
            jobs=counts,
            instances=instances,
            queues=tuple(
                queue_flows(
                    self.backend, counts, instances, self.queue_options, now=self.clock.now()
                )
            ),
        )

    # --- flow control --------------------------------------------------------------------

    def pause_queue(self, name: str) -> None:
        """Stop every instance's starts of queue `name` (this one's at once, the others'
        at their next claim): running jobs finish, jobs inserted meanwhile wait."""
        queue = validate_queue(name)
        self.backend.pause_queue(queue)
        logger.info("queue %r paused", queue, extra={**self._extra, "queue": queue})

    def resume_queue(self, name: str) -> None:
        """Let queue `name` start jobs again on every instance (the backend wakes their
        listeners; this instance's producers are woken here too)."""
        queue = validate_queue(name)
        self.backend.resume_queue(queue)
        logger.info("queue %r resumed", queue, extra={**self._extra, "queue": queue})
        self._wake({queue})

    def _published_queues(self) -> dict[str, int | dict[str, Any]]:
        return {name: published(options) for name, options in self.queue_options.items()}

    # --- serving queues ------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._threads is not None

    @property
    def is_leader(self) -> bool:
        return self._threads is not None and self._threads[2].is_leader

    def start(self) -> None:
        """Register this instance and serve its queues from background threads."""
        with self._lock:
            if self._threads is not None:
                raise RuntimeError(f"{self!r} is already running")
            self._stop_requested.clear()
            self._displaced.clear()
            self._incarnation = uuid.uuid4().hex  # every start is a new incarnation
            info = InstanceInfo(
                instance_id=self.instance_id,
                hostname=socket.gethostname(),
                pid=os.getpid(),
                # A plain queue's limit as an int, as ever; a shaped queue's options as an
                # object, so `pgflow status` shows every instance's limits.
                queues=self._published_queues(),
                incarnation=self._incarnation,
                flows=_served_flows(),  # type: ignore[arg-type]  # attrs converter=tuple
            )
            if not self._register(info):
                return  # asked to stop while the database was still unreachable
            self._producers = {
                queue: Producer(
                    backend=self.backend,
                    queue=queue,
                    limit=options.limit,
                    options=options,
                    instance_id=self.instance_id,
                    poll_interval=self.poll_interval,
                    incarnation=self._incarnation,
                    clock=self.clock,
                    async_loop=self._async_loop,
                    lookup=self.worker_lookup,
                )
                for queue, options in self.queue_options.items()
            }
            heartbeat = Heartbeat(
                self.backend, info, self.heartbeat_interval, on_displaced=self._stand_down
            )
            wakeup = Wakeup(self.backend, self._wake, instance_id=self.instance_id)
            leader = Leader(
                backend=self.backend,
                instance_id=self.instance_id,
                clock=self.clock,
                interval=self.stage_interval,
                stale_timeout=self.stale_timeout,
                rescue_interval=self.rescue_interval,
                prune_after=self.prune_after,
                prune_interval=self.prune_interval,
                cron=CronScheduler(self.cron) if self.cron else None,
                on_staged=self._wake,
                unserved=(
                    None
                    if self.unserved_grace is None
                    else UnservedFlowSweep(grace=self.unserved_grace, extra=self._extra)
                ),
                unserved_interval=self.unserved_interval,
                deadline_interval=self.deadline_interval,
            )
            heartbeat.start()
            for producer in self._producers.values():
                producer.start()
            wakeup.start()
            leader.start()
            self._threads = (heartbeat, wakeup, leader)
            if self._displaced.is_set():  # displaced before the threads were recorded
                self._stand_down()
        logger.info(
            "instance %s serving %s",
            self.instance_id,
            ", ".join(f"{q}={options.describe()}" for q, options in self.queue_options.items()),
            extra={**self._extra, "queues": self._published_queues()},
        )

    def _register(self, info: InstanceInfo) -> bool:
        """Register before claiming anything; retry while the database is unreachable.

        Returns False when a stop was requested before registration succeeded. A database
        that answers but lacks the schema raises SchemaError at once: waiting cannot fix it.
        """
        delay = RetryDelay()
        while not self._stop_requested.is_set():
            try:
                self.backend.check_schema()
                report = self.backend.register_instance(info)
                self._log_restart_rescue(report)
                return True
            except SchemaError:
                raise
            except Exception as exc:
                wait = delay.next()
                logger.warning(
                    "registering instance failed (%s: %s); retrying in %.2fs",
                    type(exc).__name__,
                    exc,
                    wait,
                    extra={**self._extra, "error": type(exc).__name__},
                )
                self._stop_requested.wait(wait)
        return False

    def _log_restart_rescue(self, report: RescueReport) -> None:
        """Registering a new incarnation freed what the earlier process under this id held."""
        observer = hooks.OBSERVER
        if observer is not None and report.rescued:
            observer.rescued(len(report.rescued))
        if report.rescued or report.discarded or report.cancelled:
            logger.warning(
                "instance %s restarted: jobs %s of its earlier incarnation made available "
                "again, %s discarded, %s cancelled",
                self.instance_id,
                list(report.rescued),
                list(report.discarded),
                list(report.cancelled),
                extra={
                    **self._extra,
                    "incarnation": self._incarnation,
                    "rescued": list(report.rescued),
                    "discarded": list(report.discarded),
                    "cancelled": list(report.cancelled),
                },
            )

    @property
    def displaced(self) -> bool:
        """True once another process registered under this instance id while this one ran:
        this one then stopped claiming and leading (see docs/distributed.md, "Instances")."""
        return self._displaced.is_set()

    def _stand_down(self) -> None:
        """Displaced (from the heartbeat thread): claim nothing more and give up leader
        duties without releasing the lease, which the id's new process now renews. Jobs
        running here finish; their writes are fenced if they were rescued meanwhile."""
        self._displaced.set()
        threads = self._threads
        if threads is None:
            return
        for producer in list(self._producers.values()):
            producer.begin_stop()
        threads[2].stand_down()

    def stop(self, timeout: float | None = None) -> bool:
        """Stop claiming, let running jobs finish (up to `timeout` s), acknowledge, go offline.

        Returns True when every running job finished in time; jobs still running are left to
        the rescue of another instance (this one is marked offline).
        """
        self._stop_requested.set()  # also ends a start() still waiting for the database
        with self._lock:
            threads, self._threads = self._threads, None
            if threads is None:
                return True
            producers = list(self._producers.values())
        heartbeat, wakeup, leader = threads
        timeout = self.shutdown_timeout if timeout is None else timeout
        deadline = time.monotonic() + max(0.0, timeout)
        logger.info("instance %s stopping", self.instance_id, extra=self._extra)
        for producer in producers:
            producer.begin_stop()
        leader.stop()
        wakeup.stop()
        drained = self._join_producers(producers, deadline)
        if not drained:
            logger.warning(
                "instance %s stopped with jobs still running; they will be rescued",
                self.instance_id,
                extra=self._extra,
            )
        self._async_loop.stop()
        heartbeat.stop()
        self._mark_offline()
        logger.info("instance %s offline", self.instance_id, extra=self._extra)
        return drained

    @staticmethod
    def _join_producers(producers: Sequence[Producer], deadline: float) -> bool:
        """Join every producer at once, so stuck queues are abandoned together and the
        stop takes the timeout plus one abort grace, not one grace per stuck queue."""
        if len(producers) <= 1:
            return all(producer.join(deadline) for producer in producers)
        results: list[bool] = [False] * len(producers)

        def join(index: int) -> None:
            results[index] = producers[index].join(deadline)

        joiners = [
            threading.Thread(target=join, args=(index,), name=f"pgflow-stop-{p.queue}", daemon=True)
            for index, p in enumerate(producers)
        ]
        for joiner in joiners:
            joiner.start()
        for joiner in joiners:
            joiner.join()
        return all(results)

    def _mark_offline(self) -> None:
        delay = RetryDelay(cap=1.0)
        for _ in range(5):
            try:
                # Only this incarnation: a process that displaced it stays online.
                self.backend.mark_offline(self.instance_id, self._incarnation)
                return
            except Exception as exc:
                logger.warning(
                    "marking instance offline failed (%s: %s)",
                    type(exc).__name__,
                    exc,
                    extra={**self._extra, "error": type(exc).__name__},
                )
                time.sleep(delay.next())

    def request_stop(self) -> None:
        """Make `run()` return after a graceful drain (what SIGINT/SIGTERM do)."""
        self._stop_requested.set()

    def run(self) -> None:
        """Serve the queues until SIGINT/SIGTERM (or `request_stop`), then drain and go offline."""

        def on_signal(signum: int) -> None:
            if self._stop_requested.is_set():
                logger.warning("second signal: not waiting for running jobs", extra=self._extra)
                for producer in list(self._producers.values()):
                    producer.abort()
                return
            logger.info("signal %d received: draining", signum, extra=self._extra)
            self._stop_requested.set()

        with stop_on_signals(on_signal):
            self.start()
            try:
                while not self._stop_requested.wait(1.0):
                    pass
            finally:
                self.stop(self.shutdown_timeout)

    def close(self) -> None:
        """Stop if running, then close the backend if this app opened it."""
        self.stop()
        if self._owns_backend:
            self.backend.close()

    def __enter__(self) -> Pgflow:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _wake(self, queues: Iterable[str]) -> None:
        """Hint producers that jobs may be available; no queues named means all of them."""
        names = set(queues)
        for name, producer in list(self._producers.items()):
            if not names or name in names:
                producer.notify()
