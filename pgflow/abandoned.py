"""Threads of timed-out work that still run: counted process-wide, bounded and logged.

A thread cannot be killed. When a sync step of `execute()` or a sync `perform` outlives its
timeout, the caller moves on and the thread runs until its code returns. Such threads are
counted here so they stay visible (a WARNING per abandonment, `pgflow status` per instance)
and bounded: a job's thread keeps its queue slot until it ends, and `execute()` refuses to
start timed steps while `ABANDONED.limit` of its threads are still running.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Mapping
from typing import Any

from pgflow.errors import PgflowError

__all__ = ["ABANDONED", "AbandonedThreads", "TooManyAbandonedThreads"]

logger = logging.getLogger("pgflow.runtime")

#: Default bound on abandoned `execute()` step threads in one process.
DEFAULT_LIMIT = 100


class TooManyAbandonedThreads(PgflowError, RuntimeError):
    """Raised by `execute()` instead of starting a timed step while too many timed-out
    steps still hold their threads; the step was not started."""


class AbandonedThreads:
    """How many timed-out steps and jobs still run on their threads in this process."""

    def __init__(self, limit: int = DEFAULT_LIMIT) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._steps = 0
        self._jobs = 0

    @property
    def steps(self) -> int:
        """Abandoned `execute()` step threads still running."""
        return self._steps

    @property
    def jobs(self) -> int:
        """Abandoned `perform` threads still running (each holds its queue slot)."""
        return self._jobs

    @property
    def total(self) -> int:
        return self._steps + self._jobs

    def check_room(self, describe: Callable[[], str]) -> None:
        """Refuse to start timed step work when `limit` step threads are still abandoned;
        `describe()` names the work in the error (called only then)."""
        if self._steps >= self.limit:
            raise TooManyAbandonedThreads(
                f"{describe()}: not started, {self._steps} timed-out steps still run on their "
                f"threads (limit pgflow.abandoned.ABANDONED.limit = {self.limit}); a thread "
                "cannot be killed, so make the hanging steps return or raise the limit"
            )

    def add_step(self, what: str, extra: Mapping[str, Any] | None = None) -> None:
        self._add(what, extra, step=True)

    def add_job(self, what: str, extra: Mapping[str, Any] | None = None) -> None:
        """A perform's thread outlived its timeout (it keeps its queue slot meanwhile)."""
        self._add(what, extra, step=False)

    def end_step(self) -> None:
        with self._lock:
            self._steps -= 1

    def end_job(self) -> None:
        with self._lock:
            self._jobs -= 1

    def _add(self, what: str, extra: Mapping[str, Any] | None, *, step: bool) -> None:
        with self._lock:
            if step:
                self._steps += 1
            else:
                self._jobs += 1
            steps, jobs = self._steps, self._jobs
        # A broken handler or filter must not fail the caller.
        with contextlib.suppress(Exception):
            logger.warning(
                "%s timed out; its thread cannot be stopped and runs on "
                "(%d abandoned step threads, limit %d; %d abandoned job threads)",
                what,
                steps,
                self.limit,
                jobs,
                extra={
                    **(extra or {}),
                    "abandoned_steps": steps,
                    "abandoned_jobs": jobs,
                    "abandoned_limit": self.limit,
                },
            )

    def _forget(self) -> None:
        """After fork the abandoned threads do not exist in the child."""
        self._steps = self._jobs = 0


#: The process-wide count; set `ABANDONED.limit` to change the bound for `execute()`.
ABANDONED = AbandonedThreads()
os.register_at_fork(after_in_child=ABANDONED._forget)
