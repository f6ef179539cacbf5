"""The leader's sweep of distributed runs past their deadline (`start_run(deadline=)`).

The store compares `deadline_at` with its own clock and fails each expired run through the
failure sweep (its sub-flow runs cancelled), so one call per tick is all the leader does; a
run expires at most `deadline_interval` seconds late, and a leader hand-over loses nothing
(the deadline lives in the run's row).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from pgflow.backend import FlowStore

logger = logging.getLogger("pgflow.runtime")

DEFAULT_DEADLINE_INTERVAL = 1.0
#: Runs expired per call of `expire_runs`; a full page is followed by another call.
PAGE = 100


def expire_due_runs(
    store: FlowStore,
    holds_lease: Callable[[], bool],
    extra: Mapping[str, Any],
    page: int = PAGE,
) -> list[str]:
    """Fail every running run whose deadline has passed, a page at a time while the lease
    holds; log each one. Errors are logged, not raised (the leader's other duties go on)."""
    expired: list[str] = []
    try:
        while holds_lease():
            batch = store.expire_runs(page)
            for workflow_id in batch:
                logger.warning(
                    "run %s passed its deadline: failed (DeadlineExceeded)",
                    workflow_id,
                    extra={**extra, "workflow_id": workflow_id},
                )
            expired += batch
            if len(batch) < page:
                break
    except Exception as exc:
        logger.warning(
            "deadline sweep failed (%s: %s); trying again next time",
            type(exc).__name__,
            exc,
            extra={**extra, "error": type(exc).__name__},
        )
    return expired
