"""A fixed-size pool of daemon threads for sync `perform` calls.

Unlike `concurrent.futures.ThreadPoolExecutor`, whose threads are joined at interpreter exit,
a job still stuck after the shutdown timeout cannot keep a stopping worker process alive:
it is abandoned (and rescued elsewhere), as the drain promised. Results go to a callback,
not a Future: a Future builds a Condition per call, a measurable cost per job.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

#: Receives (result, None) when the call returned, (None, exception) when it raised.
Done = Callable[[T | None, BaseException | None], None]
_Work = tuple[Callable[[], Any], Done[Any]]

logger = logging.getLogger("pgflow.runtime")


class DaemonPool:
    """Runs callables on up to `size` daemon threads, started as they are needed."""

    def __init__(self, size: int, name: str) -> None:
        self._size = size
        self._name = name
        self._queue: queue.SimpleQueue[_Work | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._idle = 0
        self._closed = False

    def submit(self, fn: Callable[[], T], done: Done[T]) -> None:
        """Run `fn()` on a pool thread, then `done` there with its result or exception."""
        with self._lock:
            if self._closed:
                raise RuntimeError(f"pool {self._name} is shut down")
            if self._idle <= 0 and len(self._threads) < self._size:
                thread = threading.Thread(
                    target=self._work, name=f"{self._name}-{len(self._threads)}", daemon=True
                )
                self._threads.append(thread)
                thread.start()
            else:
                self._idle -= 1
        self._queue.put((fn, done))

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            fn, done = item
            try:
                result = fn()
            except BaseException as exc:  # handed to the submitter
                self._report(done, None, exc)
            else:
                self._report(done, result, None)
            with self._lock:
                self._idle += 1

    def _report(self, done: Done[Any], result: Any, exc: BaseException | None) -> None:
        try:
            done(result, exc)
        except BaseException:  # a broken callback must not kill the pool thread
            logger.exception("pool %s: completion callback failed", self._name)

    def shutdown(self) -> None:
        """Let idle threads exit; busy ones exit after their call (nobody waits for them)."""
        with self._lock:
            self._closed = True
            count = len(self._threads)
        for _ in range(count):
            self._queue.put(None)
