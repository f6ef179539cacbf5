"""`python -m pgflow.demo` (or `pgflow demo`): the seed's ProcessData workflow, durably on SQLite.

It runs the workflow in both definition forms on the embedded default database (a SQLite file,
no server needed), reads each run and its steps back from that file, and shows a failing input
being retried with a short backoff. This module is a program, so it prints.
"""

from __future__ import annotations

import logging
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pgflow

DEFAULT_DB = "pgflow-demo.db"


# -- 1. the seed form: any class with __workflow_steps__ --------------------------------------


class ProcessData:
    """The seed's example: validate, transform and publish a piece of data."""

    @staticmethod
    def __workflow_steps__() -> list[tuple[str, Any]]:
        return [
            ("validate", ProcessData.validate),
            ("transform", ProcessData.transform),
            ("publish", ProcessData.publish),
        ]

    @staticmethod
    def validate(state: dict[str, Any]) -> dict[str, Any]:
        if not state.get("data"):
            raise ValueError("missing data")  # a raised exception fails the step
        return state  # the return value is the next step's input

    @staticmethod
    def transform(state: dict[str, Any]) -> dict[str, Any]:
        return {**state, "data": state["data"].upper(), "length": len(state["data"])}

    @staticmethod
    def publish(state: dict[str, Any]) -> dict[str, Any]:
        return {**state, "published": True}


# -- 2. the decorator form: the same engine underneath ------------------------------------------

flow = pgflow.Flow("process_data")


@flow.step
def validate(state: dict[str, Any]) -> dict[str, Any]:
    if not state.get("data"):
        raise ValueError("missing data")
    return state


@flow.step(timeout=5.0, max_attempts=5)  # per-step overrides
def transform(state: dict[str, Any]) -> dict[str, Any]:
    return {**state, "data": state["data"][::-1]}


@flow.step
async def publish(state: dict[str, Any]) -> dict[str, Any]:  # async steps work too
    return {**state, "published": True}


# -- the program ---------------------------------------------------------------------------------


def run_demo(db_path: str = DEFAULT_DB) -> None:
    """Run the three demonstrations against the SQLite file `db_path` (created if missing)."""
    path = Path(db_path).expanduser().resolve()
    url = f"sqlite:///{path}"
    where = "kept after the demo" if path.exists() else "new; kept after the demo"
    _show_pgflow_logs()
    print("pgflow demo: durable workflows on the embedded SQLite database")
    print(f"database: {path} ({where})")
    backend = pgflow.backend_from_url(url)
    try:
        backend.migrate()
    finally:
        backend.close()

    print("\n1. Seed form: ProcessData (validate -> transform -> publish)")
    run_id = _new_id("hello")
    result = pgflow.execute(ProcessData, {"data": "hello"}, backend=url, workflow_id=run_id)
    print(f"   execute(ProcessData, {{'data': 'hello'}}, backend=URL) -> {result}")
    _show_run(url, run_id)

    print("\n2. A failing input, max_attempts=3, Backoff(base=2, factor=0.05) (0.1 s, then 0.2 s)")
    run_id = _new_id("empty")
    try:
        pgflow.execute(
            ProcessData,
            {"data": ""},
            backend=url,
            workflow_id=run_id,
            max_attempts=3,
            backoff=pgflow.Backoff(base=2, factor=0.05),
        )
    except pgflow.MaxAttemptsExceeded as exc:
        reason = exc.reason
        cause = getattr(reason, "reason", None)
        print(
            f"   raised {type(exc).__name__}: attempts={exc.attempts}, "
            f"last error {type(reason).__name__} in step {reason.step!r}: "
            f"{type(cause).__name__}: {cause}"
        )
    else:
        raise RuntimeError("the failing input unexpectedly succeeded")
    _show_run(url, run_id)

    print('\n3. Decorator form: pgflow.Flow("process_data") with an async step')
    run_id = _new_id("flow")
    result = pgflow.execute(flow, {"data": "hello"}, backend=url, workflow_id=run_id)
    print(f"   execute(flow, {{'data': 'hello'}}, backend=URL) -> {result}")
    _show_run(url, run_id)

    print(f"\nThe runs stay in {path.name}: inspect them with")
    print(f'   sqlite3 {path.name} "SELECT workflow, state, attempt FROM pgflow_runs"')


def _show_pgflow_logs() -> None:
    """Print pgflow's WARNING and ERROR records (retries, failures) in line with the output."""
    logger = logging.getLogger("pgflow")
    if any(getattr(handler, "_pgflow_demo", False) for handler in logger.handlers):
        return
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("   log %(levelname)s: %(message)s"))
    handler.setLevel(logging.WARNING)
    handler._pgflow_demo = True  # type: ignore[attr-defined]
    logger.addHandler(handler)


def _new_id(label: str) -> str:
    return f"demo-{label}-{uuid.uuid4().hex[:8]}"


def _show_run(url: str, workflow_id: str) -> None:
    """Read the run and its steps back through a fresh connection to the database file."""
    backend = pgflow.backend_from_url(url)
    try:
        run = backend.get_run(workflow_id)
        steps = backend.get_steps(workflow_id)
    finally:
        backend.close()
    if run is None:
        raise RuntimeError(f"run {workflow_id} was not recorded")
    print(
        f"   read back: run {run.workflow_id} ({run.workflow}) {run.state.value}, "
        f"attempt {run.attempt}/{run.max_attempts}"
    )
    for step in steps:
        if step.error:
            detail = f"{step.error.get('kind', 'error')}: {step.error.get('message', '')}"
        else:
            detail = f"-> {step.output}"
        print(
            f"     attempt {step.attempt}  {step.step:<9} {step.outcome.value:<9} "
            f"{step.duration * 1000:6.2f} ms  {detail}"
        )


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m pgflow.demo [--db PATH]`: the same as `pgflow demo`."""
    from pgflow.cli import demo

    demo.main(args=list(argv) if argv is not None else None, prog_name="python -m pgflow.demo")


if __name__ == "__main__":
    # Run the copy imported as `pgflow.demo`, so the workflows are named pgflow.demo.*,
    # not __main__.*, in the database.
    from pgflow.demo import main as _main

    _main()
