"""Starts flow runs from a process of its own: `python run_start.py URL MODULE:FLOW RUN_ID...`.

For the rolling-deploy test: the process that starts a run must know its definition, and one
process cannot define two shapes of one flow name without `version=`. Each run gets
`{"run": RUN_ID}` as input and RUN_ID as its workflow id.
"""

from __future__ import annotations

import importlib
import sys

from pgflow.app import Pgflow


def main() -> None:
    url, target, run_ids = sys.argv[1], sys.argv[2], sys.argv[3:]
    module, _, attribute = target.partition(":")
    flow = getattr(importlib.import_module(module), attribute)
    app = Pgflow(url, instance_id="starter")
    try:
        for run_id in run_ids:
            app.start_run(flow, {"run": run_id}, workflow_id=run_id)
    finally:
        app.close()


if __name__ == "__main__":
    main()
