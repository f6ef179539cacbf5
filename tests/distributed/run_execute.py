"""One caller of `pgflow.execute` for the multi-process fencing test:
`python run_execute.py URL WORKDIR`.

It runs a two-step workflow under the fixed workflow_id "order-proc". Each step appends a
line to WORKDIR/effects; the first step waits until both callers have reached start_run
(each leaves WORKDIR/started-<pid> behind), so the two processes certainly overlap. The
result is printed as JSON on stdout.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import pgflow
from pgflow.registry import backend_from_url

CALLERS = 2


class MarkingStore:
    """The backend, leaving a file behind once this process's start_run has returned."""

    def __init__(self, backend: Any, workdir: Path) -> None:
        self._backend = backend
        self._workdir = workdir

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backend, name)

    def start_run(self, **fields: Any) -> Any:
        started = self._backend.start_run(**fields)
        (self._workdir / f"started-{os.getpid()}").touch()
        return started


def main() -> None:
    url, workdir = sys.argv[1], Path(sys.argv[2])
    effects = workdir / "effects"

    def record(line: str) -> None:
        with effects.open("a") as file:
            file.write(f"{line}\n")

    def charge(order: dict[str, Any]) -> dict[str, Any]:
        record("charge")
        deadline = time.monotonic() + 30.0
        while len(list(workdir.glob("started-*"))) < CALLERS:
            if time.monotonic() > deadline:
                raise RuntimeError("the other caller never reached start_run")
            time.sleep(0.01)
        return {**order, "charged": True}

    def receipt(order: dict[str, Any]) -> dict[str, Any]:
        record("receipt")
        return {**order, "receipt": True}

    flow = pgflow.Flow("charge_order")
    flow.add_step("charge", charge)
    flow.add_step("receipt", receipt)
    store = MarkingStore(backend_from_url(url), workdir)
    result = pgflow.execute(flow, {"order": 1}, backend=store, workflow_id="order-proc")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
