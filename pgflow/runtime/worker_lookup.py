"""Which worker runs a claimed job, and how long a job whose worker this process lacks waits.

Only workers registered in this process run, plus those under the app's `worker_modules`
prefixes (imported lazily). A job naming any other worker is snoozed, since a rolling deploy
may bring an instance that knows it, and discarded once this process has snoozed it for
`window` seconds: never by importing whatever module the row names.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from datetime import datetime

from pgflow.clock import SYSTEM_CLOCK, Clock
from pgflow.records import Job
from pgflow.worker import Worker, check_worker_modules, resolve_worker

__all__ = ["UNKNOWN_WORKER_SNOOZE", "UNKNOWN_WORKER_WINDOW", "WorkerLookup"]

#: Seconds an unknown worker's job waits before it is offered again.
UNKNOWN_WORKER_SNOOZE = 60.0
#: Seconds of such waiting (as seen by one process) after which the job is discarded.
UNKNOWN_WORKER_WINDOW = 600.0
#: Jobs whose first sighting is remembered at once; the oldest are forgotten beyond it.
_MAX_TRACKED = 10_000


class WorkerLookup:
    """Resolves worker names for one app; `snooze=None` fails unknown workers at once (tests)."""

    def __init__(
        self,
        worker_modules: Sequence[str] = (),
        *,
        snooze: float | None = UNKNOWN_WORKER_SNOOZE,
        window: float = UNKNOWN_WORKER_WINDOW,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.worker_modules = check_worker_modules(worker_modules)
        self.snooze = snooze
        self.window = window
        self.clock = clock
        self._first_seen: dict[int, datetime] = {}
        self._lock = threading.Lock()

    def resolve(self, name: str) -> type[Worker]:
        """The worker class for `name`; raises UnknownWorker or WorkerImportError."""
        return resolve_worker(name, worker_modules=self.worker_modules)

    def snooze_for(self, job: Job) -> float | None:
        """Seconds to snooze `job`, whose worker is unknown here; None once its window ran out."""
        if self.snooze is None:
            return None
        now = self.clock.now()
        with self._lock:
            first = self._first_seen.setdefault(job.id, now)
            waited = (now - first).total_seconds()
            if waited >= self.window:
                del self._first_seen[job.id]
                return None
            while len(self._first_seen) > _MAX_TRACKED:
                del self._first_seen[next(iter(self._first_seen))]
        return self.snooze


#: What runs jobs when the caller passes no lookup: registered workers only.
DEFAULT_LOOKUP = WorkerLookup()
