"""Cron: enqueue each due slot of each entry at most once, ever, across every instance.

Slots are whole minutes (five-field expressions, UTC) of the database's clock, so instances
whose own clocks disagree still agree on the slot. Each entry's newest enqueued slot is kept
in `pgflow_cron`, apart from the jobs: `insert_cron_job` advances it (only forward, a
compare-and-set) and inserts the slot's job in one transaction. Two leaders inserting the
same slot (a hand-over, a paused leader waking up) cannot both succeed, and pruning the
slot's job does not let the slot be enqueued again. A slot missed for its whole minute (no
leader) is skipped rather than run late.

Only the leader runs cron, and only while it holds the lease: the Leader checks the lease
before each duty pass (cron included) and stops them all as soon as it lost it; the slot's
compare-and-set is what keeps even a leader that was paused past its lease harmless.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import attrs
from croniter import croniter

from pgflow.errors import DefinitionError
from pgflow.records import Job
from pgflow.serialization import dumps
from pgflow.worker import Worker

if TYPE_CHECKING:
    from pgflow.backend import JobQueue

logger = logging.getLogger("pgflow.runtime")

#: The longest entry name `pgflow_cron` keys (its column's length).
NAME_MAX = 255


@attrs.frozen
class CronEntry:
    """One `(expression, Worker, args)` entry of `Pgflow(cron=...)`."""

    expression: str
    worker: type[Worker]
    args: dict[str, Any] = attrs.field(factory=dict)

    def matches(self, slot: datetime) -> bool:
        return bool(croniter.match(self.expression, slot))

    @property
    def name(self) -> str:
        """The entry's stable key in `pgflow_cron`: worker and expression, plus a digest
        of the args when there are any (entries differing only by args are distinct)."""
        key = f"{self.worker.options.name} {self.expression}"
        if self.args:
            digest = hashlib.sha256(dumps(self.args, what="cron args").encode()).hexdigest()
            key = f"{key} {digest[:16]}"
        if len(key) > NAME_MAX:
            key = f"{key[: NAME_MAX - 65]} {hashlib.sha256(key.encode()).hexdigest()}"
        return key


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
        """Enqueue every due slot not enqueued before (anywhere); return the jobs inserted."""
        slot = slot_of(now)
        stored: list[Job] = []
        for index, entry in self.due(now):
            new = entry.worker.new(
                entry.args, meta={"cron": entry.expression, "cron_slot": slot.isoformat()}
            )
            job = backend.insert_cron_job(entry.name, slot, new)
            self._done[index] = slot
            if job is None:
                continue  # this slot (or a later one) was enqueued already
            stored.append(job)
            logger.info(
                "cron %r: enqueued job %s for slot %s",
                entry.expression,
                job.id,
                slot.isoformat(),
                extra={"job_id": job.id, "worker": job.worker, "queue": job.queue},
            )
        return stored
