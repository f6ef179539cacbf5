"""The one shared background loop on which every `async def` step runs."""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any

from pgflow.background_loop import BackgroundLoop


class LoopReentryError(RuntimeError):
    """An async step called a blocking execute() whose own async steps need the same loop."""


def refuse_reentry(coro: Coroutine[Any, Any, Any]) -> None:
    """Raise LoopReentryError (closing `coro`): a step waiting on its own loop deadlocks."""
    coro.close()
    raise LoopReentryError(
        "pgflow.execute() was called from inside an async step and the workflow "
        "has async steps: the shared loop would wait for itself. Run the nested "
        "workflow from a sync step, or in a thread (asyncio.to_thread)"
    )


LOOP = BackgroundLoop("pgflow-async-steps")
