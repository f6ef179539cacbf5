"""Structured log records about workflow runs, on the `pgflow` logger.

Every record carries `workflow_id` and `workflow` as `extra` attributes, plus `step`,
`attempt`, `max_attempts`, `job_id` and `instance_id` where they apply. Inputs and outputs
never appear at INFO or above (they may hold secrets), nor does an exception's message (it
may quote them): WARNING and ERROR records name its type (`error`), DEBUG adds its text.
Each call is guarded by `isEnabledFor`, so a disabled level costs one cached check, and a
handler or filter that raises is contained here: logging must never fail a run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

logger = logging.getLogger("pgflow")

#: Keys a caller (e.g. the distributed runtime) may add to every record of a run.
CONTEXT_KEYS = frozenset({"job_id", "instance_id"})


class RunLog:
    """Logs the life of one run; `workflow_id` is looked up lazily, only when a record is made."""

    __slots__ = ("_context", "_debug", "_workflow", "_workflow_id", "max_attempts")

    def __init__(
        self,
        workflow: str,
        workflow_id: Callable[[], str],
        max_attempts: int,
        context: Mapping[str, Any] | None = None,
    ) -> None:
        self._workflow = workflow
        self._workflow_id = workflow_id
        self.max_attempts = max_attempts
        self._context = dict(context) if context else None
        # Checked once per run: the hot path then pays a bool test per step.
        self._debug = logger.isEnabledFor(logging.DEBUG)

    def _emit(
        self, level: int, message: str, args: tuple[Any, ...], fields: dict[str, Any]
    ) -> None:
        try:
            extra: dict[str, Any] = {
                "workflow_id": self._workflow_id(),
                "workflow": self._workflow,
                "max_attempts": self.max_attempts,
            }
            if self._context:
                extra.update(self._context)
            extra.update(fields)
            logger.log(level, message, *args, extra=extra)
        except Exception:
            pass  # a broken handler or filter must not fail the run

    def run_started(self, attempt: int, *, resumed_at: str | None = None) -> None:
        if self._debug:
            if resumed_at is None:
                self._emit(
                    logging.DEBUG, "workflow %s started", (self._workflow,), {"attempt": attempt}
                )
            else:
                self._emit(
                    logging.DEBUG,
                    "workflow %s resumed at step %s (attempt %d)",
                    (self._workflow, resumed_at, attempt),
                    {"attempt": attempt, "step": resumed_at},
                )

    def step_started(self, step: str, attempt: int) -> None:
        if self._debug:
            self._emit(
                logging.DEBUG,
                "step %s of workflow %s started (attempt %d)",
                (step, self._workflow, attempt),
                {"step": step, "attempt": attempt},
            )

    def step_completed(self, step: str, attempt: int, duration: float) -> None:
        if self._debug:
            self._emit(
                logging.DEBUG,
                "step %s of workflow %s completed in %.6fs",
                (step, self._workflow, duration),
                {"step": step, "attempt": attempt, "duration": duration},
            )

    def run_completed(self, attempt: int) -> None:
        if logger.isEnabledFor(logging.INFO):
            self._emit(
                logging.INFO,
                "workflow %s completed on attempt %d",
                (self._workflow, attempt),
                {"attempt": attempt},
            )

    def _error_text(self, step: str, attempt: int, error: BaseException) -> None:
        """The exception's message, at DEBUG only: it may quote the step's input."""
        if self._debug:
            self._emit(
                logging.DEBUG,
                "step %s of workflow %s raised %s: %s",
                (step, self._workflow, type(error).__name__, error),
                {"step": step, "attempt": attempt, "error": type(error).__name__},
            )

    def attempt_failed(self, step: str, attempt: int, error: BaseException, delay: float) -> None:
        if logger.isEnabledFor(logging.WARNING):
            self._emit(
                logging.WARNING,
                "workflow %s attempt %d failed at step %s (%s); retrying in %gs",
                (self._workflow, attempt, step, type(error).__name__, delay),
                {"step": step, "attempt": attempt, "delay": delay, "error": type(error).__name__},
            )
        self._error_text(step, attempt, error)

    def run_failed(self, step: str, attempt: int, error: BaseException) -> None:
        if logger.isEnabledFor(logging.ERROR):
            self._emit(
                logging.ERROR,
                "workflow %s failed at step %s on attempt %d (%s)",
                (self._workflow, step, attempt, type(error).__name__),
                {"step": step, "attempt": attempt, "error": type(error).__name__},
            )
        self._error_text(step, attempt, error)

    def following(self, attempt: int, limit: float | None) -> None:
        """Another caller holds the run: this one waits for its outcome instead of joining."""
        if logger.isEnabledFor(logging.INFO):
            self._emit(
                logging.INFO,
                "workflow %s is being executed by another caller (attempt %d); waiting %s",
                (self._workflow, attempt, "until it ends" if limit is None else f"{limit:g}s"),
                {"attempt": attempt},
            )

    def taking_over(self, attempt: int, waited: float) -> None:
        """A run still at the same attempt after the wait is presumed abandoned."""
        if logger.isEnabledFor(logging.WARNING):
            self._emit(
                logging.WARNING,
                "workflow %s made no end in %gs (attempt %d); presumed abandoned, taking it over",
                (self._workflow, waited, attempt),
                {"attempt": attempt},
            )
