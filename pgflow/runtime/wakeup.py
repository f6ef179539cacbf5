"""Forwards the backend's "jobs available" hints (LISTEN/NOTIFY on PostgreSQL) to producers.

Hints only shorten the wait: producers poll anyway, so a lost connection or a dropped
notification delays work by at most one poll interval.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from pgflow.runtime.reconnect import Guard
from pgflow.runtime.service import ServiceThread

if TYPE_CHECKING:
    from pgflow.backend import JobListener, JobQueue

logger = logging.getLogger("pgflow.runtime")


class Wakeup(ServiceThread):
    """Listens on its own thread and calls `on_hint(queues)` for every announcement."""

    def __init__(
        self,
        backend: JobQueue,
        on_hint: Callable[[Iterable[str]], None],
        *,
        instance_id: str,
        wait_timeout: float = 0.5,
    ) -> None:
        self.backend = backend
        self.on_hint = on_hint
        self.wait_timeout = wait_timeout
        self._listener: JobListener | None = None
        super().__init__("pgflow-listener", instance_id)

    def _main(self) -> None:
        guard = Guard("listener", self._stop, self._extra)
        try:
            while not self._stop.is_set():
                if not guard.attempt(self._listen_once):
                    self._drop()
        finally:
            self._drop()

    def _listen_once(self) -> None:
        if self._listener is None:
            self._listener = self.backend.listener()
            # Anything announced while we were not listening would be lost: look anyway.
            self.on_hint(())
        queues = self._listener.wait(self.wait_timeout)
        if queues:
            self.on_hint(queues)

    def _drop(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            try:
                listener.close()
            except Exception as exc:
                logger.debug("closing the listener failed: %s", exc, extra=self._extra)
