"""SIGINT/SIGTERM handling for `Pgflow.run()`: the first signal drains, a second one hurries."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

logger = logging.getLogger("pgflow.runtime")

SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def stop_on_signals(on_signal: Callable[[int], None]) -> Iterator[bool]:
    """Route SIGINT/SIGTERM to `on_signal` while the block runs; restore handlers after.

    Yields False (and installs nothing) outside the main thread, where Python forbids it.
    """
    if threading.current_thread() is not threading.main_thread():
        yield False
        return
    previous: dict[signal.Signals, Any] = {}

    def handler(signum: int, _frame: FrameType | None) -> None:
        on_signal(signum)

    for sig in SIGNALS:
        previous[sig] = signal.signal(sig, handler)
    try:
        yield True
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
