"""Cron: enqueue each due slot of each entry exactly once across every instance.

Slots are whole minutes (five-field expressions, UTC) of the database's clock, so instances
whose own clocks disagree still agree on the slot. Each slot is inserted as a unique job
scoped by expression and slot time: two instances inserting the same slot (a leader hand-over,
a paused leader waking up) collide on the unique index and one insert returns the other's
job. A slot missed for its whole minute (no leader) is skipped rather than run late.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import attrs
from croniter import croniter

from pgflow.errors import DefinitionError
from pgflow.records import Job, UniqueSpec
from pgflow.worker import Worker

if TYPE_CHECKING:
    from pgflow.backend import JobQueue

logger = logging.getLogger("pgflow.runtime")


@attrs.frozen
class CronEntry:
    """One `(expression, Worker, args)` entry of `Pgflow(cron=...)`."""

    expression: str
    worker: type[Worker]
    args: dict[str, Any] = attrs.field(factory=dict)

    def matches(self, slot: datetime) -> bool:
        return bool(croniter.match(self.expression, slot))


def parse_cron(entries: Iterable[Sequence[Any]]) -> list[CronEntry]:
    """Validate `(expression, Worker[, args])` tuples; bad entries raise DefinitionError."""
    parsed: list[CronEntry] = []
    for entry in entries:
        if not isinstance(entry, (tuple, list)) or len(entry) not in (2, 3):
            raise DefinitionError(
                f"cron entry {entry!r}: expected (expression, Worker) or (expression, Worker, args)"
            )
        expression, worker = entry[0], entry[1]
        args = entry[2] if len(entry) == 3 else {}
        if not isinstance(expression, str) or len(expression.split()) != 5:
            raise DefinitionError(
                f"cron entry {entry!r}: expression must have five fields "
                "(minute hour day month weekday)"
            )
        if not croniter.is_valid(expression):
            raise DefinitionError(f"cron entry {entry!r}: invalid cron expression {expression!r}")
        if not (isinstance(worker, type) and issubclass(worker, Worker)):
            raise DefinitionError(f"cron entry {entry!r}: {worker!r} is not a pgflow.Worker")
        if not isinstance(args, Mapping):
            raise DefinitionError(f"cron entry {entry!r}: args must be a dict")
        parsed.append(CronEntry(expression, worker, dict(args)))
    return parsed


def slot_of(now: datetime) -> datetime:
    """The minute slot `now` falls in."""
    return now.replace(second=0, microsecond=0)


class CronScheduler:
    """Inserts due slots; remembers what it inserted so each tick costs nothing in between."""

    def __init__(self, entries: Sequence[CronEntry]) -> None:
        self.entries = list(entries)
        self._done: dict[int, datetime] = {}

    def due(self, now: datetime) -> list[tuple[int, CronEntry]]:
        """(index, entry) of entries whose slot is due at `now` and not yet inserted here."""
        slot = slot_of(now)
        return [
            (index, entry)
            for index, entry in enumerate(self.entries)
            if self._done.get(index) != slot and entry.matches(slot)
        ]

    def tick(self, backend: JobQueue, now: datetime) -> list[Job]:
        """Insert every due slot (as unique jobs); return the stored jobs, new or existing."""
        slot = slot_of(now)
        stored: list[Job] = []
        for index, entry in self.due(now):
            new = entry.worker.new(
                entry.args,
                unique=UniqueSpec(scope=f"cron {entry.expression} {slot.isoformat()}"),
                meta={"cron": entry.expression, "cron_slot": slot.isoformat()},
            )
            [job] = backend.insert_jobs([new])
            self._done[index] = slot
            stored.append(job)
            if not job.conflict:
                logger.info(
                    "cron %r: enqueued job %s for slot %s",
                    entry.expression,
                    job.id,
                    slot.isoformat(),
                    extra={"job_id": job.id, "worker": job.worker, "queue": job.queue},
                )
        return stored
