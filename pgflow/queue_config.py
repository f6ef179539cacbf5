"""`pgflow.Queue`: how one queue's jobs may flow, per instance and across the cluster.

A frozen value, validated when built, so a bad limit fails at the line that configures it
(with the field's name) rather than in a worker thread. `queue_options` turns what
`queues=` accepts (an int, or a Queue) into Queues; `parse_queue_spec` reads the CLI form.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attrs

from pgflow.errors import DefinitionError
from pgflow.identifiers import validate_queue

if TYPE_CHECKING:
    from pgflow.records import Instance

__all__ = [
    "DEFAULT_PARTITION",
    "Queue",
    "RateLimit",
    "parse_queue_spec",
    "partition_of",
    "published",
    "queue_options",
    "read_published",
]

#: (allowed starts, window in seconds)
RateLimit = tuple[int, float]
#: What a job's args key may be called when a queue is partitioned by it.
_ARGS_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]{0,62}$")
#: The partition of a job whose args lack the partition key (or hold null there).
DEFAULT_PARTITION = ""


def _positive_int(field: str, value: object) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DefinitionError(f"{field} must be an integer >= 1, got {value!r}")


def _rate(field: str, value: object) -> RateLimit | None:
    """A rate as (allowed, period): allowed an int >= 1, period a finite number > 0."""
    if value is None:
        return None
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise DefinitionError(
            f"{field} must be (allowed, period_seconds), e.g. (60, 60.0), got {value!r}"
        )
    allowed, period = value
    _positive_int(f"{field}'s allowed count", allowed)
    if isinstance(period, bool) or not isinstance(period, (int, float)):
        raise DefinitionError(f"{field}'s period must be a number of seconds, got {period!r}")
    if not math.isfinite(period) or period <= 0:
        raise DefinitionError(f"{field}'s period must be > 0 seconds, got {period!r}")
    return (int(allowed), float(period))


@attrs.frozen
class Queue:
    """One queue's limits.

    `limit`: jobs this instance runs at once. `global_limit`: jobs executing at once across
    every instance. `rate_limit=(allowed, period)`: at most `allowed` starts in any window of
    `period` seconds, cluster-wide. `partition_by`: a key of the jobs' args; its values are
    served in turn, and `partition_limit` / `partition_rate_limit` apply to each value.
    """

    limit: int = 10
    global_limit: int | None = None
    rate_limit: RateLimit | None = None
    partition_by: str | None = None
    partition_limit: int | None = None
    partition_rate_limit: RateLimit | None = None

    def __attrs_post_init__(self) -> None:
        _positive_int("limit", self.limit)
        _positive_int("global_limit", self.global_limit)
        _positive_int("partition_limit", self.partition_limit)
        object.__setattr__(self, "rate_limit", _rate("rate_limit", self.rate_limit))
        object.__setattr__(
            self, "partition_rate_limit", _rate("partition_rate_limit", self.partition_rate_limit)
        )
        if self.partition_by is not None and (
            not isinstance(self.partition_by, str) or not _ARGS_KEY.match(self.partition_by)
        ):
            raise DefinitionError(
                "partition_by must name a key of the jobs' args (letters, digits, _ . -, "
                f"at most 63 characters, not starting with a digit), got {self.partition_by!r}"
            )
        for field in ("partition_limit", "partition_rate_limit"):
            if getattr(self, field) is not None and self.partition_by is None:
                raise DefinitionError(f"{field} needs partition_by (the args key to split on)")

    @property
    def shapes_flow(self) -> bool:
        """True when something beyond this instance's own limit applies to the queue."""
        return any(
            value is not None
            for value in (
                self.global_limit,
                self.rate_limit,
                self.partition_by,
            )
        )

    def describe(self) -> str:
        """The CLI form of this queue's options (without the name), e.g. "20:global=8"."""
        parts = [str(self.limit)]
        if self.global_limit is not None:
            parts.append(f"global={self.global_limit}")
        if self.rate_limit is not None:
            parts.append(f"rate={_rate_text(self.rate_limit)}")
        if self.partition_by is not None:
            parts.append(f"partition={self.partition_by}")
        if self.partition_limit is not None:
            parts.append(f"per_partition={self.partition_limit}")
        if self.partition_rate_limit is not None:
            parts.append(f"prate={_rate_text(self.partition_rate_limit)}")
        return ":".join(parts)


def _rate_text(rate: RateLimit) -> str:
    allowed, period = rate
    return f"{allowed}/{period:g}s"


def queue_options(queues: Mapping[str, Any]) -> dict[str, Queue]:
    """Validate what `queues=` was given (name -> int or Queue) into name -> Queue; the
    error names the queue at fault."""
    if not isinstance(queues, Mapping) or not queues:
        raise DefinitionError(f"Pgflow: queues must be a non-empty dict, got {queues!r}")
    checked: dict[str, Queue] = {}
    for name, value in queues.items():
        validate_queue(name)
        if isinstance(value, Queue):
            checked[name] = value
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise DefinitionError(
                f"Pgflow: queue {name!r} limit must be a positive integer or a pgflow.Queue, "
                f"got {value!r}"
            )
        checked[name] = Queue(limit=value)
    return checked


_RATE = re.compile(r"^(?P<allowed>\d+)/(?P<period>\d+(?:\.\d+)?)(?P<unit>ms|s|m|h)?$")
_UNITS = {None: 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_KEYS = {
    "global": "global_limit",
    "rate": "rate_limit",
    "partition": "partition_by",
    "per_partition": "partition_limit",
    "prate": "partition_rate_limit",
}


def parse_queue_spec(name: str, spec: str) -> Queue:
    """Read the CLI form of one queue's options: "20", or "20:global=8:rate=60/60s:
    partition=tenant_id:per_partition=2:prate=10/1s" (any of the keyed parts, any order).
    ValueError, naming the queue and the part, for anything else."""
    parts = spec.split(":")
    options: dict[str, Any] = {}
    head = parts[0].strip()
    if head:
        if not head.isdigit():
            raise ValueError(f"queue {name!r}: the limit must be a positive integer, got {head!r}")
        options["limit"] = int(head)
    for part in parts[1:]:
        key, sep, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or key not in _KEYS or not value:
            known = ", ".join(f"{k}=..." for k in _KEYS)
            raise ValueError(f"queue {name!r}: {part!r} is not one of {known}")
        field = _KEYS[key]
        if field in options:
            raise ValueError(f"queue {name!r}: {key}= is given twice")
        if field in ("rate_limit", "partition_rate_limit"):
            match = _RATE.match(value)
            if match is None:
                raise ValueError(
                    f"queue {name!r}: {key}={value!r} is not ALLOWED/PERIOD, e.g. 60/60s or 10/1s"
                )
            period = float(match.group("period")) * _UNITS[match.group("unit")]
            options[field] = (int(match.group("allowed")), period)
        elif field == "partition_by":
            options[field] = value
        else:
            if not value.isdigit():
                raise ValueError(f"queue {name!r}: {key} must be a positive integer, got {value!r}")
            options[field] = int(value)
    try:
        return Queue(**options)
    except DefinitionError as exc:
        raise ValueError(f"queue {name!r}: {exc}") from None


def partition_of(job_args: Any, key: str, is_task: bool) -> str:
    """A job's partition under `partition_by=key`, by the rule every backend's claim uses:
    its args' `key` as text; for a flow task job (`is_task`: args are an envelope) the key
    of the task's positional value (args["args"][0]), else of its `input` keyword
    (args["kwargs"]["input"]). Missing or null: DEFAULT_PARTITION (""). Strings are taken as
    they are, other JSON values in JSON spelling (as PostgreSQL's ->> gives them); cut at
    PARTITION_MAX characters, as the SQL backends cut them."""
    value: Any = None
    if isinstance(job_args, Mapping):
        if not is_task:
            value = job_args.get(key)
        else:
            positional = job_args.get("args")
            if isinstance(positional, list) and positional and isinstance(positional[0], Mapping):
                value = positional[0].get(key)
            if value is None:
                keywords = job_args.get("kwargs")
                given = keywords.get("input") if isinstance(keywords, Mapping) else None
                if isinstance(given, Mapping):
                    value = given.get(key)
    if value is None:
        return DEFAULT_PARTITION
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return text[:PARTITION_MAX]


#: Partition keys are stored (holds, rate windows) in 255 characters; longer keys are cut.
PARTITION_MAX = 255


_FIELDS = (
    "limit",
    "global_limit",
    "rate_limit",
    "partition_by",
    "partition_limit",
    "partition_rate_limit",
)


def published(queue: Queue) -> int | dict[str, Any]:
    """What an instance publishes of one queue (`InstanceInfo.queues`, stored as JSON): the
    bare limit for a queue with no other option, as before issue 12, so readers of plain
    queues see what they always saw; else an object of the options set, "limit" included."""
    if queue == Queue(limit=queue.limit):
        return queue.limit
    fields: dict[str, Any] = {}
    for field in _FIELDS:
        value = getattr(queue, field)
        if value is not None:
            fields[field] = list(value) if isinstance(value, tuple) else value
    return fields


def read_published(value: object) -> Queue | None:
    """The Queue an instance published (see `published`); None for a value this version
    cannot read (another version's format, a hand-edited row): shown as unknown, not fatal."""
    try:
        if isinstance(value, bool):
            return None
        if isinstance(value, int):
            return Queue(limit=value)
        if isinstance(value, Mapping):
            return Queue(**{field: value[field] for field in _FIELDS if field in value})
    except (DefinitionError, TypeError):
        return None
    return None


def published_options(instances: Sequence[Instance]) -> dict[str, tuple[tuple[Queue, int], ...]]:
    """Per queue, each distinct option set online instances publish, with how many do."""
    by_queue: dict[str, Counter[Queue]] = {}
    for instance in instances:
        if instance.status != "online":
            continue
        for name, value in instance.queues.items():
            options = read_published(value)
            if options is not None:
                by_queue.setdefault(name, Counter())[options] += 1
    return {
        name: tuple(sorted(counter.items(), key=lambda item: (-item[1], item[0].describe())))
        for name, counter in by_queue.items()
    }
