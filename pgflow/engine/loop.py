"""One shared background event loop on which every `async def` step runs.

Running coroutines on a loop pgflow owns works the same whether or not the caller is
itself inside an event loop, and lets a supervisor cancel a step's task for real.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
from collections.abc import Coroutine
from typing import Any


class LoopReentryError(RuntimeError):
    """An async step called a blocking execute() whose own async steps need the same loop."""


class BackgroundLoop:
    """A daemon thread running an asyncio loop, started on first use."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ident: int | None = None

    def submit(self, coro: Coroutine[Any, Any, Any]) -> concurrent.futures.Future[Any]:
        """Schedule `coro` on the loop; cancelling the returned future cancels its task."""
        loop = self._loop
        if loop is None:
            loop = self._start()
        return asyncio.run_coroutine_threadsafe(coro, loop)

    def is_current(self) -> bool:
        """True on the loop's own thread (i.e. inside an async step)."""
        return threading.get_ident() == self._ident

    def refuse_reentry(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Raise LoopReentryError (closing `coro`): a step waiting on its own loop deadlocks."""
        coro.close()
        raise LoopReentryError(
            "pgflow.execute() was called from inside an async step and the workflow "
            "has async steps: the shared loop would wait for itself. Run the nested "
            "workflow from a sync step, or in a thread (asyncio.to_thread)"
        )

    def _start(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                ready = threading.Event()

                def serve() -> None:
                    asyncio.set_event_loop(loop)
                    loop.call_soon(ready.set)
                    loop.run_forever()

                thread = threading.Thread(target=serve, name="pgflow-async-steps", daemon=True)
                thread.start()
                ready.wait()
                self._thread = thread
                self._ident = thread.ident
                self._loop = loop
            return self._loop

    def _forget(self) -> None:
        """After fork the loop's thread does not exist in the child: start afresh there."""
        self._lock = threading.Lock()
        self._loop = None
        self._thread = None
        self._ident = None


LOOP = BackgroundLoop()
os.register_at_fork(after_in_child=LOOP._forget)
