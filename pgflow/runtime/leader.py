"""Leader election and the cluster-wide duties only the leader runs.

The lease lives in the database (`acquire_leadership`, renewed every tick with a TTL of three
ticks), so at most one instance stages due jobs, rescues jobs of dead instances, prunes old
jobs and inserts cron slots at a time; when it dies, another takes over within one TTL.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from pgflow.clock import Clock
from pgflow.runtime.cron import CronScheduler
from pgflow.runtime.reconnect import Guard
from pgflow.runtime.service import ServiceThread

if TYPE_CHECKING:
    from pgflow.backend import JobQueue

logger = logging.getLogger("pgflow.runtime")


class Leader(ServiceThread):
    """Campaigns for the lease every `interval`; while leader, runs the due duties."""

    def __init__(
        self,
        *,
        backend: JobQueue,
        instance_id: str,
        clock: Clock,
        interval: float,
        stale_timeout: float,
        rescue_interval: float,
        prune_after: float | None,
        prune_interval: float,
        cron: CronScheduler | None,
        on_staged: Callable[[Iterable[str]], None],
    ) -> None:
        self.backend = backend
        self.instance_id = instance_id
        self.clock = clock
        self.interval = interval
        self.stale_timeout = stale_timeout
        self.rescue_interval = rescue_interval
        self.prune_after = prune_after
        self.prune_interval = prune_interval
        self.cron = cron
        self.on_staged = on_staged
        self.is_leader = False
        self._next_rescue = 0.0
        self._next_prune = 0.0
        self._standing_down = False
        super().__init__("pgflow-leader", instance_id)

    def stand_down(self) -> None:
        """Stop campaigning and leading without releasing the lease: another process now
        holds this instance id (see Heartbeat) and renews the lease under it."""
        self._standing_down = True
        self._stop.set()
        self.is_leader = False

    def stop(self, timeout: float = 5.0) -> None:
        super().stop(timeout)
        if self.is_leader and not self._standing_down:
            self.is_leader = False
            try:
                self.backend.release_leadership(self.instance_id)
            except Exception as exc:  # the lease simply expires
                logger.warning(
                    "could not release leadership: %s",
                    exc,
                    extra={**self._extra, "error": str(exc)},
                )

    def _main(self) -> None:
        guard = Guard("leader duties", self._stop, self._extra)
        while not self._stop.is_set():
            if not guard.attempt(self.tick):
                self._lost()
                continue
            self._stop.wait(self.interval)

    def _lost(self) -> None:
        if self.is_leader:
            self.is_leader = False
            logger.info("leadership lost", extra=self._extra)

    def tick(self) -> None:
        """Renew (or take) the lease; if held, run every duty that is due."""
        held = self.backend.acquire_leadership(self.instance_id, 3 * self.interval)
        if not held:
            self._lost()
            return
        if not self.is_leader:
            self.is_leader = True
            self._next_rescue = self._next_prune = 0.0
            logger.info("this instance is now the leader", extra=self._extra)
        staged = self.backend.stage_jobs()
        if staged:
            self.on_staged(staged)
        now = time.monotonic()
        if now >= self._next_rescue:
            self._next_rescue = now + self.rescue_interval
            self.rescue()
        if self.prune_after is not None and now >= self._next_prune:
            self._next_prune = now + self.prune_interval
            pruned = self.backend.prune_jobs(self.prune_after)
            if pruned:
                logger.info("pruned %d finished jobs", pruned, extra=self._extra)
        if self.cron is not None:
            self.cron.tick(self.backend, self.backend.database_time())

    def rescue(self) -> None:
        report = self.backend.rescue_stale(self.stale_timeout)
        if report.instances or report.rescued or report.discarded or report.cancelled:
            logger.warning(
                "rescue: instances %s presumed dead; jobs %s made available, %s discarded, "
                "%s cancelled",
                list(report.instances),
                list(report.rescued),
                list(report.discarded),
                list(report.cancelled),
                extra={
                    **self._extra,
                    "stale_instances": list(report.instances),
                    "rescued": list(report.rescued),
                    "discarded": list(report.discarded),
                    "cancelled": list(report.cancelled),
                },
            )
        if report.rescued:
            self.on_staged(())  # no queues named: wake every local producer
