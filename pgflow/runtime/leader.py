"""Leader election and the cluster-wide duties only the leader runs.

The lease lives in the database (`acquire_leadership`, renewed every tick with a TTL of three
ticks), so at most one instance stages due jobs, rescues jobs of dead instances, prunes old
jobs, inserts cron slots, fails flow runs no instance serves (unserved_flows) and flow runs
past their deadline (deadlines) at a time;
when it dies, another takes over within one TTL.

The duties are fenced by the lease: before each one, the leader checks that the lease it
last renewed is still good (counted on the local monotonic clock from *before* the renewal
was sent, so never longer than the database's); when in doubt it renews, and a leader that
lost the lease stops every duty until it wins the lease again. A duty already running when
the lease runs out finishes; each is safe to overlap (staging and rescue lock their rows,
cron's slots are a compare-and-set).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from pgflow.clock import Clock
from pgflow.runtime.cron import CronScheduler
from pgflow.runtime.deadlines import DEFAULT_DEADLINE_INTERVAL, expire_due_runs
from pgflow.runtime.reconnect import Guard
from pgflow.runtime.service import ServiceThread
from pgflow.runtime.unserved_flows import (
    DEFAULT_UNSERVED_INTERVAL,
    SweptStore,
    UnservedFlowSweep,
)
from pgflow.telemetry import hooks

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
        unserved: UnservedFlowSweep | None = None,
        unserved_interval: float = DEFAULT_UNSERVED_INTERVAL,
        deadline_interval: float = DEFAULT_DEADLINE_INTERVAL,
        monotonic: Callable[[], float] = time.monotonic,
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
        # Only a store that keeps distributed runs has any to sweep.
        self._swept: SweptStore | None = backend if isinstance(backend, SweptStore) else None
        self.unserved = unserved if self._swept is not None else None
        self.unserved_interval = unserved_interval
        self.deadline_interval = deadline_interval
        self.monotonic = monotonic
        self.is_leader = False
        self._lease_until = 0.0  # monotonic time until which the lease surely holds
        self._next_rescue = 0.0
        self._next_prune = 0.0
        self._next_unserved = 0.0
        self._next_deadline = 0.0
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

    @property
    def ttl(self) -> float:
        return 3 * self.interval

    def _renew(self) -> bool:
        """Renew (or take) the lease; on success it surely holds for one TTL from now."""
        sent = self.monotonic()
        if not self.backend.acquire_leadership(self.instance_id, self.ttl):
            self._lease_until = 0.0
            self._lost()
            return False
        self._lease_until = sent + self.ttl
        return True

    def holds_lease(self) -> bool:
        """Checked before each duty: True while the last renewal surely still holds; past
        half its TTL the lease is renewed first. False (duties stop) once it is lost."""
        if self._stop.is_set() or not self.is_leader:
            return False
        if self.monotonic() < self._lease_until - self.ttl / 2:
            return True
        return self._renew()

    def tick(self) -> None:
        """Renew (or take) the lease; while it holds, run every duty that is due."""
        if not self._renew():
            return
        if not self.is_leader:
            self.is_leader = True
            self._next_rescue = self._next_prune = self._next_unserved = 0.0
            self._next_deadline = 0.0
            if self.unserved is not None:
                self.unserved.forget()  # another leader may have watched meanwhile
            logger.info("this instance is now the leader", extra=self._extra)
        if not self.holds_lease():
            return
        staged = self.backend.stage_jobs()
        if staged:
            self.on_staged(staged)
        now = self.monotonic()
        if now >= self._next_rescue:
            if not self.holds_lease():
                return
            self._next_rescue = now + self.rescue_interval
            self.rescue()
        if self.prune_after is not None and now >= self._next_prune:
            if not self.holds_lease():
                return
            self._next_prune = now + self.prune_interval
            pruned = self.backend.prune_jobs(self.prune_after)
            if pruned:
                logger.info("pruned %d finished jobs", pruned, extra=self._extra)
        if self.unserved is not None and now >= self._next_unserved:
            if not self.holds_lease():
                return
            self._next_unserved = now + self.unserved_interval
            assert self._swept is not None  # unserved is set only with a SweptStore
            self.unserved.run(self._swept, self.holds_lease)
        if self._swept is not None and now >= self._next_deadline:
            if not self.holds_lease():
                return
            self._next_deadline = now + self.deadline_interval
            if expire_due_runs(self._swept, self.holds_lease, self._extra):
                self.on_staged(())  # an expired child's relay task may wait: wake everyone
        if self.cron is not None:
            if not self.holds_lease():
                return
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
            observer = hooks.OBSERVER
            if observer is not None:
                observer.rescued(len(report.rescued))
            self.on_staged(())  # no queues named: wake every local producer
