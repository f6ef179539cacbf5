"""The shape every background loop of an instance shares: a daemon thread and a stop event."""

from __future__ import annotations

import threading

from pgflow.runtime.reconnect import keep_running


class ServiceThread:
    """Runs `_main` on a daemon thread named `name`; `stop` sets `_stop` and joins.

    `_main` is restarted (after logging and a backoff) if it ever raises, so the service
    lives until stopped, whatever happens inside it.
    """

    def __init__(self, name: str, instance_id: str) -> None:
        self._stop = threading.Event()
        self._name = name
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._extra = {"instance_id": instance_id}

    def _serve(self) -> None:
        keep_running(self._name, self._main, self._stop, self._extra)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def _main(self) -> None:
        raise NotImplementedError(f"{type(self).__name__} must define _main")
