"""Awaiting a condition in tests: poll it, bounded in time, instead of sleeping and hoping."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_for(condition: Callable[[], bool], timeout: float = 20.0) -> bool:
    """True as soon as `condition()` holds; its last value once `timeout` seconds passed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


def wait_or_fail(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Like `wait_for`, but a time-out fails the test, saying what never happened."""
    assert wait_for(condition, timeout), f"timed out after {timeout}s waiting for {what}"
