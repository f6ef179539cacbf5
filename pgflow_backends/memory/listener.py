"""Wake-up hints for in-memory workers: each listener collects the queues announced to it."""

from __future__ import annotations

import threading
from collections.abc import Iterable


class ListenerHub:
    """The listeners of one backend; `announce` is called with the backend's lock held."""

    def __init__(self, condition: threading.Condition) -> None:
        self.condition = condition
        self._listeners: set[MemoryListener] = set()

    def listener(self) -> MemoryListener:
        listener = MemoryListener(self)
        with self.condition:
            self._listeners.add(listener)
        return listener

    def announce(self, queues: Iterable[str]) -> None:
        """Add `queues` to every listener's pending set and wake the waiters (lock held)."""
        queues = set(queues)
        if queues and self._listeners:
            for listener in self._listeners:
                listener.pending |= queues
            self.condition.notify_all()

    def close_all(self) -> None:
        """Close every listener, waking any waiter (lock held)."""
        for listener in self._listeners:
            listener.closed = True
        self._listeners.clear()
        self.condition.notify_all()

    def _remove(self, listener: MemoryListener) -> None:
        with self.condition:
            self._listeners.discard(listener)
            listener.closed = True
            self.condition.notify_all()


class MemoryListener:
    """Queues announced (by inserts, staging, snoozes and rescues) since it was created."""

    def __init__(self, hub: ListenerHub) -> None:
        self._hub = hub
        self.pending: set[str] = set()
        self.closed = False

    def wait(self, timeout: float) -> set[str]:
        """Block up to `timeout` seconds for an announcement; return and forget the queues."""
        condition = self._hub.condition
        with condition:
            condition.wait_for(lambda: self.pending or self.closed, timeout=max(timeout, 0.0))
            queues, self.pending = self.pending, set()
        return queues

    def close(self) -> None:
        self._hub._remove(self)
