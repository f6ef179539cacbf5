"""The heartbeat: its own thread, so a job that blocks or burns the CPU never looks dead."""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from pgflow.records import InstanceInfo
from pgflow.runtime.reconnect import Guard

if TYPE_CHECKING:
    from pgflow.backend import JobQueue

logger = logging.getLogger("pgflow.runtime")


class Heartbeat:
    """Refreshes the instance's heartbeat every `interval`; re-registers if presumed dead."""

    def __init__(self, backend: JobQueue, info: InstanceInfo, interval: float) -> None:
        self.backend = backend
        self.info = info
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name="pgflow-heartbeat", daemon=True)
        self._extra = {"instance_id": info.instance_id}

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

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
