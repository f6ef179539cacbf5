"""Process A of the two-process trace test: `python -m tests.telemetry.produce URL`.

Inside one span ("request") it inserts a TracedJob and starts a run of `traced_pair`, prints
their ids and the trace id as JSON, and exits (its spans go to PGFLOW_TEST_SPANS, see
traced_jobs).
"""

from __future__ import annotations

import json
import sys

import pgflow
from tests.telemetry import traced_jobs


def main() -> None:
    assert traced_jobs.provider is not None, "PGFLOW_TEST_SPANS must name the spans file"
    tracer = traced_jobs.provider.get_tracer("tests.telemetry")
    app = pgflow.Pgflow(sys.argv[1])
    try:
        with tracer.start_as_current_span("request") as span:
            job = app.insert(traced_jobs.TracedJob.new({"value": 7}))
            handle = app.start_run(traced_jobs.flow, 1)
            trace_id = format(span.get_span_context().trace_id, "032x")
        print(json.dumps({"job_id": job.id, "workflow_id": handle.workflow_id, "trace": trace_id}))
    finally:
        app.close()


if __name__ == "__main__":
    main()
