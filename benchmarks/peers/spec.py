"""What every measured system provides, and what the run records about it.

A peer is driven from the parent process (schema, inserts, counting completions) and
serves jobs in worker processes through its module-level `serve` function.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

#: Queue limit (concurrent jobs per worker process) given to every system alike.
CONCURRENCY = 10
#: Slots per worker process in the "wide" drains: as many jobs in flight per process as the
#: floor's batched drain claims per statement, so that comparison is like for like.
WIDE_CONCURRENCY = 100
#: Queue names: one per measurement, so an earlier measurement's jobs never count.
NOOP_QUEUES = {1: "drain_one", 2: "drain_two"}
WIDE_QUEUES = {1: "wide_one", 2: "wide_two"}
STAMP_QUEUE = "latency"
FLOW_QUEUE = "flows"
#: The no-op workflow's input.
STATE: dict[str, Any] = {"data": "bench", "n": 1}


class NotInstalled(Exception):
    """The peer's package is not importable here; its row says so."""


class Unsupported(Exception):
    """The system has no such feature (a queue without workflows); the cell says so."""


def require_modules(*modules: str) -> None:
    """Raise NotInstalled naming the first missing module."""
    for module in modules:
        if importlib.util.find_spec(module) is None:
            raise NotInstalled(f"not installed ({module}; pip install -e '.[bench]')")


class Peer:
    """Base class: one system under test, bound to its fresh database once `setup` ran."""

    #: Shown in the table.
    name = ""
    #: The module workers import (`benchmarks.peers.<module>`), holding `serve`.
    module = ""
    #: How the system was configured (documented defaults plus the shared concurrency).
    config = ""
    #: How "insert in bulk" is done by this system.
    bulk_note = ""
    #: Why the wide drains (WIDE_CONCURRENCY slots per process) are not measured; "" = they are.
    wide_drain_skip = ""

    def check(self) -> None:
        """Raise NotInstalled when the system cannot be imported."""

    def setup(self, url: str) -> None:
        """Create the schema in the fresh database `url` and open the inserting client."""

    def close(self) -> None:
        """Release connections and clients opened by `setup`."""

    def insert_one(self, i: int) -> None:
        raise NotImplementedError

    def insert_bulk(self, start: int, count: int) -> None:
        """Insert `count` no-op jobs with the system's bulk API (one call)."""
        raise NotImplementedError

    def insert_noops(self, queue: str, count: int) -> None:
        """Insert `count` no-op jobs on `queue` for a drain, as fast as the system allows."""
        raise NotImplementedError

    def completed(self, queue: str) -> int:
        """How many jobs of `queue` the system recorded as completed."""
        raise NotImplementedError

    def insert_stamp(self, seq: int, sent_ns: int) -> None:
        """Insert one job that reports its start to the sink (latency)."""
        raise NotImplementedError

    def workflow_inprocess(self) -> Callable[[], object]:
        """A call that runs the 3-step no-op workflow durably in this process."""
        raise Unsupported("no workflows")

    def insert_flows(self, queue: str, count: int) -> None:
        """Enqueue `count` 3-step workflows for worker processes."""
        raise Unsupported("no workflows")

    def flows_completed(self, queue: str) -> int:
        raise Unsupported("no workflows")

    def counts_by_sink(self) -> bool:
        """True when completions are counted by the tasks' "done" reports, not a table."""
        return False


@dataclass
class Outcome:
    """Figures of one system; a missing figure has its reason in `notes`."""

    system: str
    config: str = ""
    status: str = "ok"
    metrics: dict[str, float] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "system": self.system,
            "config": self.config,
            "status": self.status,
            "metrics": self.metrics,
            "notes": self.notes,
        }


def load(module: str) -> Any:
    return importlib.import_module(f"benchmarks.peers.{module}")


class SqlCounter:
    """One autocommit psycopg connection for counting a peer's finished rows while it runs."""

    def __init__(self, url: str) -> None:
        import psycopg

        self._url = url
        self._conn = psycopg.connect(url, autocommit=True)

    def scalar(self, query: str, params: tuple[object, ...] = ()) -> int:
        """One integer; reconnects once if the server closed the connection meanwhile."""
        import psycopg

        try:
            row = self._conn.execute(query, params).fetchone()
        except psycopg.OperationalError:
            self._conn.close()
            self._conn = psycopg.connect(self._url, autocommit=True)
            row = self._conn.execute(query, params).fetchone()
        return int(row[0]) if row and row[0] is not None else 0

    def close(self) -> None:
        self._conn.close()
