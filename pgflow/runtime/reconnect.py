"""Backing off after database errors, so a restarted database never stops an instance.

Every loop of the runtime wraps its work in `Guard.attempt`: an exception is logged as a
WARNING with structured fields, then the loop waits an exponentially growing, capped and
jittered delay (from the `backoff` package's generators) before trying again. Around each
loop, `keep_running` restarts it after anything short of interpreter shutdown, so no error
(not even a SystemExit raised by some import) silently ends a runtime thread.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

import backoff

logger = logging.getLogger("pgflow.runtime")


class RetryDelay:
    """Successive waits after consecutive failures: 0.05 s doubling up to `cap`, jittered."""

    def __init__(self, *, first: float = 0.05, cap: float = 5.0) -> None:
        self._first = first
        self._cap = cap
        self._waits: Iterator[float] | None = None
        self.failures = 0

    def next(self) -> float:
        """The wait before the next try."""
        if self._waits is None:
            waits: Iterator[float] = backoff.expo(base=2, factor=self._first, max_value=self._cap)
            next(waits)  # the generators are primed with one bare `next`
            self._waits = waits
        self.failures += 1
        return float(backoff.full_jitter(next(self._waits)) or self._first)

    def reset(self) -> None:
        """Forget past failures after a success."""
        self._waits = None
        self.failures = 0


class Guard:
    """Runs a loop's step, logging and backing off on failure, never raising."""

    def __init__(self, what: str, stop: threading.Event, extra: dict[str, Any]) -> None:
        self.what = what
        self.stop = stop
        self.extra = extra
        self.delay = RetryDelay()

    def attempt(self, step: Callable[[], None]) -> bool:
        """Run `step`; on an exception, log it, wait (interruptibly) and return False."""
        try:
            step()
        except KeyboardInterrupt:
            raise
        except BaseException as exc:
            wait = self.delay.next()
            logger.warning(
                "%s failed (%s: %s); retrying in %.2fs",
                self.what,
                type(exc).__name__,
                str(exc).splitlines()[0] if str(exc) else "",
                wait,
                extra={**self.extra, "error": type(exc).__name__, "failures": self.delay.failures},
            )
            self.stop.wait(wait)
            return False
        if self.delay.failures:
            logger.info(
                "%s recovered after %d failure(s)",
                self.what,
                self.delay.failures,
                extra=self.extra,
            )
        self.delay.reset()
        return True


def keep_running(
    what: str, loop: Callable[[], None], stop: threading.Event, extra: dict[str, Any]
) -> None:
    """Run `loop` until it returns; if it raises anything but KeyboardInterrupt, log the
    traceback at ERROR, back off and run it again (unless `stop` is set meanwhile)."""
    delay = RetryDelay()
    while True:
        try:
            loop()
            return
        except KeyboardInterrupt:
            raise
        except BaseException as exc:
            wait = delay.next()
            logger.error(
                "%s crashed (%s); restarting it in %.2fs",
                what,
                type(exc).__name__,
                wait,
                exc_info=True,
                extra={**extra, "error": type(exc).__name__, "failures": delay.failures},
            )
            if stop.wait(wait):
                return


_TRANSIENT_NAMES = frozenset({"OperationalError", "InterfaceError", "DisconnectionError"})


def is_transient(exc: BaseException) -> bool:
    """Whether a write failed for a reason that retrying the same write may cure (a lost
    connection, a busy database), judged from the whole chain of causes."""
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        if isinstance(link, (OSError, TimeoutError)) or getattr(
            link, "connection_invalidated", False
        ):
            return True
        cls = type(link)
        if cls.__name__ in _TRANSIENT_NAMES or (
            cls.__name__ == "TimeoutError" and cls.__module__.startswith("sqlalchemy")
        ):
            return True
        link = link.__cause__ or link.__context__
    return False
