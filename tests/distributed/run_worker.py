"""A worker process for the multi-process tests: `python run_worker.py URL INSTANCE_ID`.

Options come from the environment (PGFLOW_TEST_*), so a test states them next to the spawn.
It imports `tests.distributed.workers`, so PYTHONPATH must contain the repository root.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import datetime, timedelta
from typing import Any

from pgflow.app import Pgflow
from pgflow.clock import SystemClock


class ShiftedClock(SystemClock):
    """The system clock moved by a fixed offset, so a cron slot falls when a test wants it."""

    def __init__(self, offset: float) -> None:
        self.offset = timedelta(seconds=offset)

    def now(self) -> datetime:
        return super().now() + self.offset


def main() -> None:
    url, instance_id = sys.argv[1], sys.argv[2]
    os.environ["INSTANCE_ID"] = instance_id
    os.environ["PGFLOW_TEST_URL"] = url
    logging.basicConfig(
        level=os.environ.get("PGFLOW_TEST_LOG_LEVEL", "INFO"),
        format=f"%(asctime)s {instance_id} %(threadName)s %(levelname)s %(message)s",
    )
    import tests.distributed.workers as workers

    cron: list[tuple[str, Any, dict[str, Any]]] = [
        (expression, getattr(workers, name), {})
        for expression, name in json.loads(os.environ.get("PGFLOW_TEST_CRON", "[]"))
    ]
    options = json.loads(os.environ.get("PGFLOW_TEST_OPTIONS", "{}"))
    offset = float(os.environ.get("PGFLOW_TEST_CLOCK_OFFSET", "0"))
    snooze = os.environ.get("PGFLOW_TEST_UNKNOWN_SNOOZE")
    if snooze:  # the 30 s snooze of a task of an unknown definition is a module constant
        import pgflow.runtime.flow_tasks as flow_tasks

        flow_tasks.UNKNOWN_DEFINITION_SNOOZE = float(snooze)
    app = Pgflow(
        url,
        instance_id=instance_id,
        cron=cron,
        clock=ShiftedClock(offset) if offset else None,
        **options,
    )
    app.run()


if __name__ == "__main__":
    main()
