"""Flows that the graph process tests run; importable as `tests.distributed.graph_flows`.

Steps record each execution in the `flow_effects` table (FLOW_EFFECTS_DDL), through a
per-thread connection of their own, so a test can count how often each step or map element
really ran and on which instance.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import psycopg

import pgflow

FLOW_EFFECTS_DDL = """
CREATE TABLE IF NOT EXISTS flow_effects (
    id bigserial PRIMARY KEY,
    run text NOT NULL,
    step text NOT NULL,
    element int NOT NULL DEFAULT 0,
    instance_id text NOT NULL,
    event text NOT NULL,
    at timestamptz NOT NULL DEFAULT clock_timestamp()
)
"""

#: How long the two racing steps of the diamond wait for each other at most.
BARRIER_TIMEOUT = 30.0

_local = threading.local()


def _connection() -> psycopg.Connection[Any]:
    conn: psycopg.Connection[Any] | None = getattr(_local, "conn", None)
    if conn is None or conn.closed or conn.broken:
        conn = psycopg.connect(os.environ["PGFLOW_TEST_URL"], autocommit=True, connect_timeout=5)
        _local.conn = conn
    return conn


def record(run: str, step: str, event: str, element: int = 0) -> None:
    """One flow_effects row; a broken connection raises, so the attempt fails and retries."""
    try:
        _connection().execute(
            "INSERT INTO flow_effects (run, step, element, instance_id, event) "
            "VALUES (%s, %s, %s, %s, %s)",
            (run, step, element, os.environ["INSTANCE_ID"], event),
        )
    except psycopg.Error:
        _local.conn = None
        raise


def arrived(run: str) -> int:
    found = _connection().execute(
        "SELECT count(*) FROM flow_effects WHERE run = %s AND event = 'arrived'", (run,)
    )
    row = found.fetchone()
    return int(row[0]) if row else 0


# --- a map that a SIGKILL interrupts: pages -> score (one task per element) -> total -------

scores = pgflow.Flow("proc_scores")


@scores.step
def pages(input: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {"run": input["run"], "n": n, "seconds": input["seconds"]} for n in range(input["count"])
    ]


@scores.map(over="pages", max_attempts=5)
def score(item: dict[str, Any]) -> int:
    record(item["run"], "score", "started", item["n"])
    time.sleep(float(item["seconds"]))
    record(item["run"], "score", "done", item["n"])
    return int(item["n"]) * 2


@scores.step(depends_on=["score"])
def total(score: list[int]) -> int:
    return sum(score)


# --- a diamond whose two middle steps finish together on two processes -------------------

diamond = pgflow.Flow("proc_diamond")


@diamond.step
def top(input: dict[str, Any]) -> str:
    return str(input["run"])


def _meet(run: str, step: str) -> str:
    """Arrive at the run's barrier and wait for the other middle step, then return at once."""
    record(run, step, "arrived")
    deadline = time.monotonic() + BARRIER_TIMEOUT
    while arrived(run) < 2:
        if time.monotonic() > deadline:
            raise TimeoutError(f"run {run}: the other middle step never arrived")
        time.sleep(0.002)
    return step


@diamond.step(depends_on=["top"])
def left(top: str) -> str:
    return _meet(top, "left")


@diamond.step(depends_on=["top"])
def right(top: str) -> str:
    return _meet(top, "right")


@diamond.step(depends_on=["left", "right"])
def bottom(left: str, right: str, input: dict[str, Any]) -> str:
    record(str(input["run"]), "bottom", "ran")
    return f"{left}+{right}"


# --- a chain whose last task a SIGKILL interrupts ----------------------------------------

chain = pgflow.Flow("proc_chain")


@chain.step
def first(state: dict[str, Any]) -> dict[str, Any]:
    record(str(state["run"]), "first", "ran")
    return state


@chain.step
def last(state: dict[str, Any]) -> str:
    """Its first execution hangs (the test kills the process then); later ones finish."""
    run = str(state["run"])
    record(run, "last", "started")
    if _connection().execute(
        "SELECT count(*) FROM flow_effects WHERE run = %s AND step = 'last'", (run,)
    ).fetchone() == (1,):
        time.sleep(300.0)
    record(run, "last", "done")
    return f"{run} done"
