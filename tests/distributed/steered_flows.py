"""Flows of the steered-run process tests (issue 11); importable as
`tests.distributed.steered_flows`.

Steps record what they do in `flow_effects` (graph_flows.FLOW_EFFECTS_DDL) so a test counts
how often each step or map element really ran, and where. `STEERED_DDL` adds the table of
conditions a test sets and removes (`steered_blocks`): a step reads it, so the test, not a
timer, decides when a failure stops happening.

With PGFLOW_TEST_HOLD_RELAY=1 in its environment, a worker that imports this module never
finishes a sub-flow's relay task: its read of the child run records a `holding` effect and
then hangs, so a test can SIGKILL a worker that holds a relay task.
"""

from __future__ import annotations

import os
import time
from typing import Any

import pgflow
from tests.distributed.graph_flows import _connection, record

STEERED_DDL = """
CREATE TABLE IF NOT EXISTS steered_blocks (
    run text NOT NULL,
    element int NOT NULL,
    PRIMARY KEY (run, element)
)
"""

#: How long a map element waits for the outputs of its siblings at most (resume flow).
SIBLINGS_TIMEOUT = 60.0
#: The element of the resume flow's map that fails while a block for it is stored.
FAILING_ELEMENT = 7


def _count(sql: str, params: tuple[Any, ...]) -> int:
    row = _connection().execute(sql, params).fetchone()
    return int(row[0]) if row else 0


# --- a wait between two steps: draft -> approval (wait_for) -> publish -------------------

approvals = pgflow.Flow("steered_approvals")


@approvals.step
def draft(input: dict[str, Any]) -> dict[str, Any]:
    record(str(input["run"]), "draft", "ran")
    return {"run": input["run"], "text": f"draft of {input['run']}"}


approvals.wait_for("approval", depends_on=["draft"])


@approvals.step(depends_on=["approval"])
def publish(approval: Any, input: dict[str, Any]) -> dict[str, Any]:
    record(str(input["run"]), "publish", "ran")
    return {"published": input["run"], "approval": approval}


# --- a wide map of short elements, cancelled midway: items -> crunch (map) -> tally --------

crunching = pgflow.Flow("steered_crunch")


@crunching.step
def items(input: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {"run": input["run"], "n": n, "seconds": input["seconds"]} for n in range(input["count"])
    ]


@crunching.map(over="items")
def crunch(item: dict[str, Any]) -> int:
    time.sleep(float(item["seconds"]))
    record(str(item["run"]), "crunch", "done", int(item["n"]))
    return int(item["n"])


@crunching.step(depends_on=["crunch"])
def tally(crunch: list[int]) -> int:
    return len(crunch)


# --- a map of 10 whose element 7 fails while blocked: parts -> part (map) -> combine -----

resumable = pgflow.Flow("steered_resume")


@resumable.step
def parts(input: dict[str, Any]) -> list[dict[str, Any]]:
    count = int(input["count"])
    return [{"run": input["run"], "n": n, "count": count} for n in range(count)]


@resumable.map(over="parts", max_attempts=1)
def part(item: dict[str, Any]) -> int:
    """Element FAILING_ELEMENT first waits until every sibling's output is stored (so the
    run's failure cancels none of them), then fails while a block for it is stored."""
    run, n = str(item["run"]), int(item["n"])
    record(run, "part", "started", n)
    if n == FAILING_ELEMENT:
        siblings = int(item["count"]) - 1
        deadline = time.monotonic() + SIBLINGS_TIMEOUT
        while (
            _count(
                "SELECT count(*) FROM pgflow_task_outputs WHERE workflow_id = %s AND step = 'part'",
                (run,),
            )
            < siblings
        ):
            if time.monotonic() > deadline:
                raise TimeoutError(f"run {run}: the other elements never completed")
            time.sleep(0.02)
        if _count("SELECT count(*) FROM steered_blocks WHERE run = %s AND element = %s", (run, n)):
            raise RuntimeError(f"element {n} of run {run} is blocked")
    record(run, "part", "done", n)
    return n * 10


@resumable.step(depends_on=["part"])
def combine(part: list[int]) -> dict[str, Any]:
    return {"parts": part, "sum": sum(part)}


# --- a sub-flow: parent (ship = child run) -> finish; the child (a chain of one step, so
# its result is that step's output) packs its input ------------------------------------

packing = pgflow.Flow("steered_child", queue="steered_child")


@packing.step
def pack(input: dict[str, Any]) -> dict[str, Any]:
    record(str(input["run"]), "pack", "ran")
    return {"packed": input["run"]}


shipping = pgflow.Flow("steered_parent", queue="steered_parent")
shipping.subflow("ship", packing)


@shipping.step(depends_on=["ship"])
def finish(ship: Any, input: dict[str, Any]) -> dict[str, Any]:
    record(str(input["run"]), "finish", "ran")
    return {"shipped": ship}


# --- a parent whose child run is the wide map: inner (sub-flow of crunching) -> summary ---

nesting = pgflow.Flow("steered_nest")
nesting.subflow("inner", crunching)


@nesting.step(depends_on=["inner"])
def summary(inner: int, input: dict[str, Any]) -> str:
    record(str(input["run"]), "summary", "ran")
    return f"{inner} elements"


# --- a durable sleep between two steps: doze_off -> rest (sleep) -> wake ---------------

#: How long the nap flow's sleep lasts: long enough to kill and replace the worker inside it.
NAP_SECONDS = 3.0

napping = pgflow.Flow("steered_nap")


@napping.step
def doze_off(input: dict[str, Any]) -> dict[str, Any]:
    record(str(input["run"]), "doze_off", "ran")
    return {"run": input["run"]}


napping.sleep("rest", NAP_SECONDS, depends_on=["doze_off"])


@napping.step(depends_on=["rest"])
def wake(rest: dict[str, Any]) -> dict[str, Any]:
    record(str(rest["run"]), "wake", "ran")
    return {"woke": rest["run"]}


# --- a run outliving its deadline: linger (slow) -> after ---------------------------------

overdue = pgflow.Flow("steered_overdue")


@overdue.step
def linger(input: dict[str, Any]) -> dict[str, Any]:
    record(str(input["run"]), "linger", "started")
    time.sleep(float(input["seconds"]))
    record(str(input["run"]), "linger", "done")
    return {"run": input["run"]}


@overdue.step(depends_on=["linger"])
def after(linger: dict[str, Any]) -> str:
    record(str(linger["run"]), "after", "ran")
    return "too late"


def _hold_relays() -> None:
    """Make this process's relay tasks hang on their read of the child run (see above)."""
    from pgflow_backends.postgres import PostgresBackend

    original = PostgresBackend.get_run

    def get_run(self: PostgresBackend, workflow_id: str) -> Any:
        run = original(self, workflow_id)
        if run is not None and run.parent_id is not None:
            record(str(run.parent_id), "relay", "holding")
            time.sleep(3600.0)
        return run

    PostgresBackend.get_run = get_run  # type: ignore[method-assign, assignment]


if os.environ.get("PGFLOW_TEST_HOLD_RELAY") == "1":
    _hold_relays()
