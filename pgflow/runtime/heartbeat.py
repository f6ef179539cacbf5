"""The heartbeat: its own thread, so a job that blocks or burns the CPU never looks dead."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from pgflow.abandoned import ABANDONED
from pgflow.records import InstanceInfo
from pgflow.runtime.reconnect import Guard
from pgflow.runtime.service import ServiceThread

if TYPE_CHECKING:
    from pgflow.backend import JobQueue

logger = logging.getLogger("pgflow.runtime")


class Heartbeat(ServiceThread):
    """Refreshes the instance's heartbeat every `interval`; re-registers if presumed dead."""

    def __init__(self, backend: JobQueue, info: InstanceInfo, interval: float) -> None:
        self.backend = backend
        self.info = info
        self.interval = interval
        super().__init__("pgflow-heartbeat", info.instance_id)

    def _main(self) -> None:
        guard = Guard("heartbeat", self._stop, self._extra)
        while not self._stop.wait(self.interval):
            guard.attempt(self.beat)

    def beat(self) -> None:
        """One heartbeat; an instance marked offline (its jobs rescued) registers again."""
        if not self.backend.heartbeat(self.info.instance_id):
            logger.warning(
                "instance %s had been marked offline (presumed dead); registering again",
                self.info.instance_id,
                extra=self._extra,
            )
            self.backend.register_instance(self.info)
        self.backend.set_abandoned(self.info.instance_id, ABANDONED.total)
