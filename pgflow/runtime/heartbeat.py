"""The heartbeat: its own thread, so a job that blocks or burns the CPU never looks dead.

Each beat carries the process's incarnation. An instance presumed dead is back online with
that beat (its row is registered again only if it vanished; same incarnation: nothing of
its own is rescued). An instance whose id another process has
registered since is *displaced*: it reports that loudly, stands down (no more claims, no
leader duties) and never registers again, so two processes sharing an id cannot keep
rescuing each other's jobs; it stays idle until it is stopped. Until its next beat it may
still try to claim, but every claim is fenced by the incarnation and gets nothing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from pgflow.abandoned import ABANDONED
from pgflow.records import Instance, InstanceInfo, Liveness
from pgflow.runtime.reconnect import Guard
from pgflow.runtime.service import ServiceThread

if TYPE_CHECKING:
    from pgflow.backend import JobQueue

logger = logging.getLogger("pgflow.runtime")

#: A displaced process repeats its ERROR this often (seconds) while it keeps running.
DISPLACED_REPORT_INTERVAL = 60.0


class Heartbeat(ServiceThread):
    """Refreshes the instance's heartbeat every `interval`; re-registers if presumed dead,
    stands down (calling `on_displaced` once) if another process took over the id."""

    def __init__(
        self,
        backend: JobQueue,
        info: InstanceInfo,
        interval: float,
        on_displaced: Callable[[], None] = lambda: None,
    ) -> None:
        self.backend = backend
        self.info = info
        self.interval = interval
        self.on_displaced = on_displaced
        self.displaced = threading.Event()
        self._next_report = 0.0
        super().__init__("pgflow-heartbeat", info.instance_id)

    def _main(self) -> None:
        guard = Guard("heartbeat", self._stop, self._extra)
        while not self._stop.wait(self.interval):
            guard.attempt(self.beat)

    def beat(self) -> None:
        """One heartbeat; see the module docstring for what each answer leads to."""
        liveness = self.backend.heartbeat(self.info.instance_id, self.info.incarnation)
        if liveness is Liveness.DISPLACED:
            self._report_displaced()
        elif liveness is Liveness.PRESUMED_DEAD:
            logger.warning(
                "instance %s had been marked offline (presumed dead); online again",
                self.info.instance_id,
                extra=self._extra,
            )
            # The beat itself put a known row back online; only a missing row needs a
            # registration (one that could displace a process newly registered under the id).
            if self._registered() is None:
                self.backend.register_instance(self.info)
        if liveness is not Liveness.DISPLACED:  # the id's row is another process's now
            self.backend.set_abandoned(self.info.instance_id, ABANDONED.total)

    def _report_displaced(self) -> None:
        first = not self.displaced.is_set()
        now = time.monotonic()
        if not first and now < self._next_report:
            return
        current = self._registered()  # may raise: then the next beat tries again
        if first:
            self.displaced.set()
            self.on_displaced()
        self._next_report = now + DISPLACED_REPORT_INTERVAL
        mine = self.info
        logger.error(
            "instance id %r is now registered by another process (host %s, pid %s, "
            "incarnation %s); this process (host %s, pid %s, incarnation %s) has stopped "
            "claiming jobs and leading, and stays idle until stopped. Give every running "
            "process its own instance id (INSTANCE_ID / --instance-id, or leave it unset "
            "for <hostname>-<pid>)",
            mine.instance_id,
            current.hostname if current else "?",
            current.pid if current else "?",
            current.incarnation if current else "?",
            mine.hostname,
            mine.pid,
            mine.incarnation,
            extra={
                **self._extra,
                "incarnation": mine.incarnation,
                "displaced_by": current.incarnation if current else None,
                "displaced_by_host": current.hostname if current else None,
                "displaced_by_pid": current.pid if current else None,
            },
        )

    def _registered(self) -> Instance | None:
        """The registration that displaced this process, for the report (None if gone)."""
        for instance in self.backend.list_instances():
            if instance.instance_id == self.info.instance_id:
                return instance
        return None
