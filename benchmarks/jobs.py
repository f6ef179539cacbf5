"""The workers the distributed suite runs; imported only where pgflow's runtime exists.

Their names (`benchmarks.jobs.Noop`, ...) resolve by import in any worker process.
"""

from __future__ import annotations

import time
from typing import Any

import pgflow

#: Where `StampStart` reports (sequence, start - insert ns); set by the worker process.
start_sink: Any = None


class Noop(pgflow.Worker, queue="bench"):
    """Does nothing: what is left is the cost of claiming, running and completing a job."""

    def perform(self, job: pgflow.Job) -> None:
        return None


class StampStart(pgflow.Worker, queue="bench"):
    """Reports how long after its insert (stamped in args) the job started."""

    def perform(self, job: pgflow.Job) -> None:
        started_ns = time.time_ns()
        if start_sink is not None:
            start_sink.put((job.args["seq"], started_ns - job.args["sent_ns"]))
