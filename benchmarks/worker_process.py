"""The body of one worker process of the distributed suite (started with `spawn`)."""

from __future__ import annotations

import os
from typing import Any

#: Upper bound on waiting for the parent's start signal, in seconds.
START_TIMEOUT = 60.0


def serve(
    url: str,
    queues: dict[str, int],
    instance_id: str,
    options: dict[str, Any],
    signals: tuple[Any, Any, Any],
    sink: Any,
) -> None:
    """Build the app, report ready, start on `go`, serve until `stop` is set.

    `signals` is (ready queue, go event, stop event). Everything slow (imports, engine)
    happens before "ready", so the parent's clock measures serving jobs, not starting Python.
    The process also stops if its parent disappears, so a killed run leaves no orphans.
    """
    import pgflow
    from benchmarks import jobs

    ready, go, stop = signals
    parent = os.getppid()
    jobs.start_sink = sink
    app = pgflow.Pgflow(url, queues=queues, instance_id=instance_id, **options)
    ready.put(instance_id)
    if not go.wait(timeout=START_TIMEOUT):
        return
    app.start()
    try:
        while not stop.wait(timeout=0.5):
            if os.getppid() != parent:
                break
    finally:
        app.stop(timeout=10.0)
