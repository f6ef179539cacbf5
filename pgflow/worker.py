"""Workers: the classes whose `perform` runs a job, and the registry that finds them by name.

A job row stores only the worker's name; any process that imports the defining module (or can
import it from the dotted name) can run it. Options are class keywords so that a worker's
whole configuration is visible in its `class` line.
"""

from __future__ import annotations

import contextvars
import importlib
import inspect
import math
import threading
from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar

import attrs

from pgflow.backoff_policy import Backoff
from pgflow.cancellation import CancelFlag
from pgflow.errors import DefinitionError
from pgflow.identifiers import validate_queue, validate_worker_name
from pgflow.records import Job, NewJob, UniqueSpec

if TYPE_CHECKING:
    from pgflow.backend import Backend

__all__ = [
    "Worker",
    "WorkerOptions",
    "current_backend",
    "resolve_worker",
    "workflow_worker",
]

#: The backend of the app running the current job; None when the job runs without one.
CURRENT_BACKEND: contextvars.ContextVar[Backend | None] = contextvars.ContextVar(
    "pgflow_current_backend", default=None
)

_REGISTRY: dict[str, type[Worker]] = {}
_REGISTRY_LOCK = threading.Lock()
_UNSET: Any = object()
_OPTION_NAMES = ("queue", "max_attempts", "priority", "timeout", "backoff", "name")


def current_backend() -> Backend | None:
    """The backend of the app running this job, so perform code can insert or execute."""
    return CURRENT_BACKEND.get()


def _check_int(owner: str, option: str, value: object, minimum: int | None = None) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise DefinitionError(f"{owner}: {option} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise DefinitionError(f"{owner}: {option} must be >= {minimum}, got {value!r}")
    return value


def _check_seconds(owner: str, option: str, value: object, *, positive: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise DefinitionError(f"{owner}: {option} must be a number of seconds, got {value!r}")
    if value < 0 or (positive and value == 0):
        bound = "> 0" if positive else ">= 0"
        raise DefinitionError(f"{owner}: {option} must be {bound}, got {value!r}")
    return float(value)


@attrs.frozen
class WorkerOptions:
    """A worker class's options, validated once when the class is defined."""

    name: str
    queue: str = "default"
    max_attempts: int = 3
    priority: int = 0
    timeout: float | None = None
    backoff: Backoff = attrs.field(factory=Backoff)


def backoff_delay(policy: Backoff, retry: int) -> float:
    """Seconds before retry `retry` (1 = before attempt 2) under `policy`."""
    return float(policy.delay(retry))


class Worker:
    """Base class of jobs: subclass it, set options as class keywords, define `perform`.

    ``class Send(pgflow.Worker, queue="mail", max_attempts=5): def perform(self, job): ...``
    A fresh instance runs each job; `self.cancelled` (`is_set()`, `wait(timeout)`, as on a
    `threading.Event`) is set when cancellation is requested.
    """

    options: ClassVar[WorkerOptions]
    #: Whether `perform` is `async def`, worked out once per class (the runtime asks per job).
    perform_is_async: ClassVar[bool] = False

    def __init__(self) -> None:
        self.cancelled = CancelFlag()

    def __init_subclass__(
        cls,
        *,
        queue: str = _UNSET,
        max_attempts: int = _UNSET,
        priority: int = _UNSET,
        timeout: float | None = _UNSET,
        backoff: Any = _UNSET,
        name: str | None = _UNSET,
        **unknown: Any,
    ) -> None:
        super().__init_subclass__()
        owner = f"worker {cls.__module__}.{cls.__qualname__}"
        if unknown:
            names = ", ".join(sorted(unknown))
            raise DefinitionError(
                f"{owner}: unknown option(s) {names}; expected one of {', '.join(_OPTION_NAMES)}"
            )
        parent: WorkerOptions | None = getattr(cls, "options", None)
        if name is _UNSET or name is None:
            name = f"{cls.__module__}.{cls.__qualname__}"
        name = validate_worker_name(name)
        if queue is _UNSET:
            queue = parent.queue if parent else "default"
        try:
            queue = validate_queue(queue)
        except DefinitionError as exc:
            raise DefinitionError(f"{owner}: {exc}") from None
        if max_attempts is _UNSET:
            max_attempts = parent.max_attempts if parent else 3
        max_attempts = _check_int(owner, "max_attempts", max_attempts, minimum=1)
        if priority is _UNSET:
            priority = parent.priority if parent else 0
        priority = _check_int(owner, "priority", priority)
        if timeout is _UNSET:
            timeout = parent.timeout if parent else None
        if timeout is not None:
            timeout = _check_seconds(owner, "timeout", timeout, positive=True)
        if backoff is _UNSET or backoff is None:
            backoff = parent.backoff if parent else Backoff()
        elif not isinstance(backoff, Backoff):
            raise DefinitionError(
                f"{owner}: backoff must be a pgflow.Backoff, got {type(backoff).__name__}"
            )
        cls.options = WorkerOptions(
            name=name,
            queue=queue,
            max_attempts=max_attempts,
            priority=priority,
            timeout=timeout,
            backoff=backoff,
        )
        cls.perform_is_async = inspect.iscoroutinefunction(cls.perform)
        if cls.perform is not Worker.perform:
            with _REGISTRY_LOCK:
                _REGISTRY[name] = cls

    def perform(self, job: Job) -> Any:
        """Do the job's work; override it (plain or `async def`). Raising fails the attempt."""
        raise NotImplementedError(f"{type(self).__qualname__} must define perform(self, job)")

    @classmethod
    def backoff_delay(cls, attempt: int) -> float:
        """Seconds to wait before retrying after attempt number `attempt` failed."""
        return backoff_delay(cls.options.backoff, attempt)

    @classmethod
    def new(
        cls,
        args: Mapping[str, Any] | None = None,
        *,
        queue: str | None = None,
        priority: int | None = None,
        schedule_in: float | None = None,
        scheduled_at: datetime | None = None,
        max_attempts: int | None = None,
        unique: bool | UniqueSpec | Mapping[str, Any] | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> NewJob:
        """A job for this worker, ready for `app.insert`; options default to the class's."""
        opts = cls.options
        owner = f"worker {opts.name}"
        if args is None:
            args = {}
        if not isinstance(args, Mapping):
            raise DefinitionError(f"{owner}: args must be a dict, got {type(args).__name__}")
        if schedule_in is not None and scheduled_at is not None:
            raise DefinitionError(f"{owner}: pass schedule_in or scheduled_at, not both")
        if schedule_in is not None:
            schedule_in = _check_seconds(owner, "schedule_in", schedule_in, positive=False)
        if scheduled_at is not None and (
            not isinstance(scheduled_at, datetime) or scheduled_at.tzinfo is None
        ):
            raise DefinitionError(f"{owner}: scheduled_at must be a timezone-aware datetime")
        if meta is not None and not isinstance(meta, Mapping):
            raise DefinitionError(f"{owner}: meta must be a dict, got {type(meta).__name__}")
        return NewJob(
            worker=opts.name,
            args=dict(args),
            queue=opts.queue if queue is None else validate_queue(queue),
            priority=opts.priority if priority is None else _check_int(owner, "priority", priority),
            max_attempts=(
                opts.max_attempts
                if max_attempts is None
                else _check_int(owner, "max_attempts", max_attempts, minimum=1)
            ),
            scheduled_at=scheduled_at,
            schedule_in=schedule_in,
            unique=_unique_spec(owner, unique),
            meta=dict(meta or {}),
        )


def _unique_spec(owner: str, unique: object) -> UniqueSpec | None:
    if unique is None or unique is False:
        return None
    if unique is True:
        return UniqueSpec()
    if isinstance(unique, UniqueSpec):
        return unique
    if isinstance(unique, Mapping):
        allowed = {field.name for field in attrs.fields(UniqueSpec)}
        extra = set(unique) - allowed
        if extra:
            raise DefinitionError(
                f"{owner}: unknown unique option(s) {', '.join(sorted(map(str, extra)))}; "
                f"expected {', '.join(sorted(allowed))}"
            )
        return UniqueSpec(**unique)
    raise DefinitionError(
        f"{owner}: unique must be True, a pgflow.UniqueSpec or a dict, got {unique!r}"
    )


def _import_candidates(name: str) -> Iterator[tuple[str, list[str]]]:
    """Split `pkg.mod.Class.Inner` (or `pkg.mod:Class.Inner`) into module and attribute path."""
    if ":" in name:
        module, _, attr = name.partition(":")
        yield module, attr.split(".")
        return
    parts = name.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        yield ".".join(parts[:cut]), parts[cut:]


def resolve_worker(name: str) -> type[Worker]:
    """The worker class registered as `name`, importing its module if needed."""
    with _REGISTRY_LOCK:
        found = _REGISTRY.get(name)
    if found is not None:
        return found
    problems: list[str] = []
    for module_name, attrs_path in _import_candidates(name):
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            problems.append(f"{module_name}: {exc}")
            continue
        except Exception as exc:  # the module exists but fails to import: say so
            raise DefinitionError(
                f"worker {name!r}: importing {module_name!r} failed: {type(exc).__name__}: {exc}"
            ) from exc
        with _REGISTRY_LOCK:
            found = _REGISTRY.get(name)
        if found is not None:
            return found
        target: Any = module
        for attr in attrs_path:
            target = getattr(target, attr, None)
        if isinstance(target, type) and issubclass(target, Worker):
            return target
        break
    detail = f" ({'; '.join(problems)})" if problems else ""
    raise DefinitionError(
        f"unknown worker {name!r}: define it in an imported module or pass its module to "
        f"imports=/--import{detail}"
    )


def workflow_worker(
    workflow: Any,
    *,
    queue: str = "default",
    max_attempts: int = 3,
    priority: int = 0,
    timeout: float | None = None,
    backoff: Any = None,
    name: str | None = None,
) -> type[Worker]:
    """A Worker class whose jobs run `workflow` durably with the job's args as input.

    The run's id is f"job-{job.id}", so a retried job resumes after its last completed step.
    """
    workflow_name = _workflow_name(workflow)
    if name is None:
        name = f"pgflow.workflows.{workflow_name.replace(':', '.')}"

    def perform(self: Worker, job: Job) -> Any:
        from pgflow.executor import Executor

        backend = current_backend()
        executor = Executor(backend=backend) if backend is not None else Executor()
        kwargs: dict[str, Any] = {
            "max_attempts": 1,
            "workflow_id": f"job-{job.id}",
            "log_context": {"job_id": job.id, "instance_id": job.reserved_by},
        }
        # One workflow attempt per job attempt: the job's own retries space them out.
        kwargs["timeout"] = type(self).options.timeout
        return executor.execute(workflow, job.args, **kwargs)

    cls_name = workflow_name.rsplit(".", 1)[-1].replace(":", "_") + "Worker"
    namespace = {"perform": perform, "__module__": __name__, "__qualname__": cls_name}
    worker_cls = type(cls_name, (Worker,), namespace, name=name, queue=queue,
                      max_attempts=max_attempts, priority=priority, timeout=timeout,
                      backoff=backoff)  # fmt: skip
    return worker_cls


def _workflow_name(workflow: Any) -> str:
    name = getattr(workflow, "name", None)
    if isinstance(name, str) and name:
        return name
    module = getattr(workflow, "__module__", None) or "workflow"
    qualname = getattr(workflow, "__qualname__", None) or getattr(workflow, "__name__", None)
    if qualname is None:
        raise DefinitionError(f"workflow_worker: cannot name workflow {workflow!r}")
    return f"{module}.{qualname}"
