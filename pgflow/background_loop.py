"""An asyncio event loop on a daemon thread of its own, for running coroutines from sync code.

The executor runs `async def` steps on one, the runtime runs `async def perform` on another;
owning the loop means it works whether or not the caller is itself inside an event loop, and
that a supervisor can cancel a coroutine's task for real.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import threading
import weakref
from collections.abc import Coroutine
from typing import Any

_ALL: weakref.WeakSet[BackgroundLoop] = weakref.WeakSet()

logger = logging.getLogger("pgflow.runtime")


class BackgroundLoop:
    """A loop started on first use, stoppable, and forgotten in a forked child."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ident: int | None = None
        _ALL.add(self)

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The running loop, started on first use."""
        loop = self._loop
        return loop if loop is not None else self._start()

    def submit(self, coro: Coroutine[Any, Any, Any]) -> concurrent.futures.Future[Any]:
        """Schedule `coro` on the loop; cancelling the returned future cancels its task."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def is_current(self) -> bool:
        """True on the loop's own thread (i.e. inside a coroutine it runs)."""
        return threading.get_ident() == self._ident

    def stop(self, timeout: float = 2.0) -> None:
        """Cancel what still runs, stop the loop and close it; a later use starts afresh."""
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = self._ident = None
        if loop is None or thread is None:
            return

        async def shutdown() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            loop.stop()

        asyncio.run_coroutine_threadsafe(shutdown(), loop)
        thread.join(timeout)
        if not thread.is_alive():
            loop.close()

    def _start(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                ready = threading.Event()

                def serve() -> None:
                    asyncio.set_event_loop(loop)
                    loop.call_soon(ready.set)
                    _serve_until_stopped(loop, self.name)

                thread = threading.Thread(target=serve, name=self.name, daemon=True)
                thread.start()
                ready.wait()
                self._thread, self._ident, self._loop = thread, thread.ident, loop
            return self._loop

    def _forget(self) -> None:
        """After fork the loop's thread does not exist in the child: start afresh there."""
        self._lock = threading.Lock()
        self._loop = self._thread = self._ident = None


def _serve_until_stopped(loop: asyncio.AbstractEventLoop, name: str) -> None:
    """Run `loop` until `stop()`. asyncio lets a task's SystemExit or KeyboardInterrupt
    escape `run_forever` (the task itself holds the exception for whoever awaits it), so the
    loop is resumed: one coroutine must not end the thread every other coroutine runs on."""
    while True:
        try:
            loop.run_forever()
            return
        except (SystemExit, KeyboardInterrupt) as exc:
            logger.error(
                "loop %s: a coroutine raised %s; the loop carries on",
                name,
                type(exc).__name__,
                extra={"error": type(exc).__name__},
            )


def _forget_all_in_child() -> None:
    for background in list(_ALL):
        background._forget()


os.register_at_fork(after_in_child=_forget_all_in_child)
