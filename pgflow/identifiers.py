"""Validation of the names users hand to pgflow: queues, workers and instance ids.

Every backend calls these before storing a name, so a hostile or mistyped name is refused
with a clear DefinitionError instead of reaching SQL, logs or NOTIFY channels.
"""

from __future__ import annotations

import re

from pgflow.errors import DefinitionError

# A letter, digit or underscore first, then up to 62 more including ".", ":" and "-":
# short enough for an index key and a NOTIFY payload, safe in any log line.
_QUEUE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]{0,62}")
# A dotted Python path ("myapp.workers.Email"), optionally "module:qualname"; "<locals>" is
# accepted as a segment so that classes defined inside functions (tests) have a name too.
_IDENT = r"(?:[A-Za-z_][A-Za-z0-9_]*|<locals>)"
_WORKER = re.compile(rf"{_IDENT}(?:\.{_IDENT})*(?::{_IDENT}(?:\.{_IDENT})*)?")
_WORKER_MAX = 255
_INSTANCE_MAX = 128
_INSTANCE_FORBIDDEN = frozenset("'\"`\\")


def validate_queue(name: object) -> str:
    """Return `name` if it is a valid queue name, else raise DefinitionError naming it."""
    if not isinstance(name, str) or _QUEUE.fullmatch(name) is None:
        raise DefinitionError(
            f"invalid queue name {name!r}: use 1 to 63 letters, digits, '_', '.', ':' or '-', "
            "not starting with a punctuation mark"
        )
    return name


def validate_worker_name(name: object) -> str:
    """Return `name` if it is a dotted Python path, else raise DefinitionError naming it."""
    if not isinstance(name, str) or len(name) > _WORKER_MAX or _WORKER.fullmatch(name) is None:
        raise DefinitionError(
            f"invalid worker name {name!r}: expected a dotted Python path such as "
            f"'myapp.workers.SendEmail' (at most {_WORKER_MAX} characters)"
        )
    return name


def validate_instance_id(instance_id: object) -> str:
    """Return `instance_id` if printable, short and free of whitespace and quotes."""
    if (
        not isinstance(instance_id, str)
        or not 0 < len(instance_id) <= _INSTANCE_MAX
        or not instance_id.isprintable()
        or any(char.isspace() or char in _INSTANCE_FORBIDDEN for char in instance_id)
    ):
        raise DefinitionError(
            f"invalid instance id {instance_id!r}: use 1 to {_INSTANCE_MAX} printable "
            "characters without whitespace, quotes or backslashes"
        )
    return instance_id


#: The width of pgflow_runs.workflow_id: a longer id is refused before any backend sees it.
WORKFLOW_ID_MAX = 64


def storable_workflow_id(workflow_id: object) -> bool:
    """Whether a run could be stored under `workflow_id`: a lookup by any other id finds
    nothing, without asking a database that would refuse it (a NUL, an oversized id)."""
    return (
        isinstance(workflow_id, str)
        and 0 < len(workflow_id) <= WORKFLOW_ID_MAX
        and "\x00" not in workflow_id
    )


#: Job ids are BIGINTs: a lookup outside this range finds nothing.
JOB_ID_RANGE = range(1, 2**63)


def storable_job_id(job_id: object) -> bool:
    """Whether a job could have id `job_id` (a positive 64-bit int)."""
    return isinstance(job_id, int) and not isinstance(job_id, bool) and job_id in JOB_ID_RANGE


def validate_workflow_id(workflow_id: object) -> str:
    """Return `workflow_id` if it is a non-empty string that fits the runs table's column
    (and holds no NUL, which PostgreSQL cannot store)."""
    if isinstance(workflow_id, str) and "\x00" in workflow_id:
        raise DefinitionError(
            f"invalid workflow_id {workflow_id[:80]!r}: it holds a NUL character (\\x00)"
        )
    if not isinstance(workflow_id, str) or not 0 < len(workflow_id) <= WORKFLOW_ID_MAX:
        shown = workflow_id if not isinstance(workflow_id, str) else workflow_id[:80]
        length = f" ({len(workflow_id)} characters)" if isinstance(workflow_id, str) else ""
        raise DefinitionError(
            f"invalid workflow_id {shown!r}{length}: use a non-empty string of at most "
            f"{WORKFLOW_ID_MAX} characters"
        )
    return workflow_id


_CRON_NAME_MAX = 255


def validate_cron_name(name: object) -> str:
    """Return `name` if it can key a cron entry's last slot (printable, 1 to 255 chars)."""
    if not isinstance(name, str) or not 0 < len(name) <= _CRON_NAME_MAX or not name.isprintable():
        raise DefinitionError(
            f"invalid cron entry name {name!r}: use 1 to {_CRON_NAME_MAX} printable characters"
        )
    return name
