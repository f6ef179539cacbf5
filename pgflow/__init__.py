"""pgflow: durable workflows and background jobs on PostgreSQL, SQLite or memory.

Errors and records are imported eagerly; everything else loads on first attribute access,
so `import pgflow` stays cheap and never imports a database driver it does not need.
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Any

from pgflow.backend import Backend, FlowStore, JobQueue, RunStore
from pgflow.clock import Clock, FakeClock, SystemClock
from pgflow.errors import (
    BackendError,
    DeadlineExceeded,
    DefinitionError,
    Discard,
    JobStateError,
    MaxAttemptsExceeded,
    PgflowError,
    RateLimited,
    RunCancelled,
    RunStateError,
    SchemaError,
    SerializationError,
    SignalError,
    Snooze,
    StepFailed,
    StepTimedOut,
    WorkflowError,
)
from pgflow.queue_config import Queue
from pgflow.records import (
    Job,
    JobState,
    NewJob,
    RunRecord,
    RunState,
    StepOutcome,
    StepRecord,
    StepState,
    StepStatus,
    UniqueSpec,
)

if TYPE_CHECKING:
    from pgflow import schema, testing
    from pgflow.app import Pgflow
    from pgflow.backoff_policy import Backoff
    from pgflow.definition import Flow, Step, Workflow
    from pgflow.executor import Executor, execute
    from pgflow.registry import backend_from_url, register_backend
    from pgflow.worker import Worker, workflow_worker

__version__ = "0.1.0"

# A library's logger: silent unless the application configures logging (no last-resort
# handler printing pgflow's records to stderr).
logging.getLogger("pgflow").addHandler(logging.NullHandler())

# name -> module that defines it; loaded on first attribute access (PEP 562).
_LAZY = {
    "Backoff": "pgflow.backoff_policy",
    "Flow": "pgflow.definition",
    "Step": "pgflow.definition",
    "Workflow": "pgflow.definition",
    "Executor": "pgflow.executor",
    "execute": "pgflow.executor",
    "Pgflow": "pgflow.app",
    "Worker": "pgflow.worker",
    "workflow_worker": "pgflow.worker",
    "backend_from_url": "pgflow.registry",
    "register_backend": "pgflow.registry",
    "schema": "pgflow.schema",
    "testing": "pgflow.testing",
}


def __getattr__(name: str) -> Any:
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'pgflow' has no attribute {name!r}")
    module = importlib.import_module(module_name)
    value = module if module_name == f"pgflow.{name}" else getattr(module, name)
    globals()[name] = value
    return value


__all__ = [
    "Backend",
    "BackendError",
    "Backoff",
    "Clock",
    "DeadlineExceeded",
    "DefinitionError",
    "Discard",
    "Executor",
    "FakeClock",
    "Flow",
    "FlowStore",
    "Job",
    "JobQueue",
    "JobState",
    "JobStateError",
    "MaxAttemptsExceeded",
    "NewJob",
    "Pgflow",
    "PgflowError",
    "Queue",
    "RateLimited",
    "RunCancelled",
    "RunRecord",
    "RunState",
    "RunStateError",
    "RunStore",
    "SchemaError",
    "SerializationError",
    "SignalError",
    "Snooze",
    "Step",
    "StepFailed",
    "StepOutcome",
    "StepRecord",
    "StepState",
    "StepStatus",
    "StepTimedOut",
    "SystemClock",
    "UniqueSpec",
    "Worker",
    "Workflow",
    "WorkflowError",
    "backend_from_url",
    "execute",
    "register_backend",
    "schema",
    "testing",
    "workflow_worker",
]
