"""A fixed-size pool of daemon threads for sync `perform` calls.

Unlike `concurrent.futures.ThreadPoolExecutor`, whose threads are joined at interpreter exit,
a job still stuck after the shutdown timeout cannot keep a stopping worker process alive:
it is abandoned (and rescued elsewhere), as the drain promised.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")

_Work = tuple[Future[Any], Callable[[], Any]]


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

    def submit(self, fn: Callable[[], T]) -> Future[T]:
        """Run `fn()` on a pool thread; its result or exception lands in the returned Future."""
        future: Future[T] = Future()
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
        self._queue.put((future, fn))
        return future

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            future, fn = item
            if future.set_running_or_notify_cancel():
                try:
                    result = fn()
                except BaseException as exc:  # handed to the future's owner
                    future.set_exception(exc)
                else:
                    future.set_result(result)
            with self._lock:
                self._idle += 1

    def shutdown(self) -> None:
        """Let idle threads exit; busy ones exit after their call (nobody waits for them)."""
        with self._lock:
            self._closed = True
            count = len(self._threads)
        for _ in range(count):
            self._queue.put(None)
