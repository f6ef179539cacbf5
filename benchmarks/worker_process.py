"""The body of one worker process of the distributed suite (started with `spawn`)."""

from __future__ import annotations

from typing import Any

#: Upper bound on waiting for the parent at the start line, in seconds.
START_TIMEOUT = 60.0


def serve(
    url: str,
    queues: dict[str, int],
    instance_id: str,
    options: dict[str, Any],
    start_line: Any,
    stop: Any,
    sink: Any,
) -> None:
    """Build the app, wait at `start_line` with the parent, serve until `stop` is set.

    Everything slow (imports, engine, connections) happens before the start line, so the
    parent's clock measures serving jobs, not starting Python.
    """
    import pgflow
    from benchmarks import jobs

    jobs.start_sink = sink
    app = pgflow.Pgflow(url, queues=queues, instance_id=instance_id, **options)
    start_line.wait(timeout=START_TIMEOUT)
    app.start()
    stop.wait()
    app.stop(timeout=10.0)
