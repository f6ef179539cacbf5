"""CancelFlag: the `threading.Event`-compatible flag a running job polls to learn it should stop.

Every job gets one, and almost none is ever waited on: a `threading.Event` builds a
Condition (a few microseconds of pure Python) up front, which was a quarter of the worker's
per-job overhead. This flag is a plain boolean until somebody calls `wait`.
"""

from __future__ import annotations

import threading

__all__ = ["CancelFlag"]

# Guards the one-time creation of a flag's Condition (creation is rare: only on wait).
_CREATING = threading.Lock()


class CancelFlag:
    """`is_set()`, `set()`, `clear()` and `wait(timeout)`, as on `threading.Event`."""

    __slots__ = ("_cond", "_flag")

    def __init__(self) -> None:
        self._flag = False
        self._cond: threading.Condition | None = None

    def __repr__(self) -> str:
        return f"<CancelFlag {'set' if self._flag else 'unset'}>"

    def is_set(self) -> bool:
        """True once cancellation was requested."""
        return self._flag

    def _condition(self) -> threading.Condition:
        cond = self._cond
        if cond is None:
            with _CREATING:
                cond = self._cond
                if cond is None:
                    cond = self._cond = threading.Condition(threading.Lock())
        return cond

    def set(self) -> None:
        """Raise the flag and wake every waiter."""
        cond = self._cond
        if cond is None:
            with _CREATING:  # no waiter can appear between this check and the write
                if self._cond is None:
                    self._flag = True
                    return
            cond = self._condition()
        with cond:
            self._flag = True
            cond.notify_all()

    def clear(self) -> None:
        """Lower the flag."""
        self._flag = False

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the flag is set or `timeout` seconds pass; return the flag."""
        if self._flag:
            return True
        cond = self._condition()
        with cond:
            if not self._flag:
                cond.wait(timeout)
            return self._flag
