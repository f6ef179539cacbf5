"""Workers and flows the dashboard's HTTP tests store jobs and runs of."""

from __future__ import annotations

from typing import Any

import pgflow

#: Markup that would run if a page inserted it unescaped.
HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)>'

#: Steps named here raise until a test removes them (the fix being deployed).
FAILING: set[str] = set()


class Echo(pgflow.Worker, queue="default"):
    """Completes with its args, so a completed job shows a result."""

    def perform(self, job: pgflow.Job) -> dict[str, Any]:
        return {"echo": job.args}


class Boom(pgflow.Worker, queue="default", max_attempts=1):
    """Fails its only attempt: a discarded job with an error and a traceback."""

    def perform(self, job: pgflow.Job) -> None:
        raise RuntimeError(f"boom {job.args.get('why', '')}")


class Idle(pgflow.Worker, queue="mail"):
    """Never drained by the tests: its jobs stay available."""

    def perform(self, job: pgflow.Job) -> None:
        return None


fanout = pgflow.Flow("dash_fanout", queue="flows")


@fanout.step
def items(input: dict[str, Any]) -> list[int]:
    return list(range(int(input["count"])))


@fanout.map(over="items")
def double(item: int) -> int:
    return item * 2


@fanout.step(depends_on=["double"])
def total(double: list[int]) -> int:
    return sum(double)


child = pgflow.Flow("dash_child", queue="flows")


@child.step
def inner(input: Any) -> str:
    return "inner done"


approval = pgflow.Flow("dash_approval", queue="flows")


@approval.step
def draft(input: dict[str, Any]) -> dict[str, Any]:
    return {"title": input["title"]}


approval.wait_for("approve", depends_on=["draft"])
approval.subflow("nested", child, depends_on=["draft"])


@approval.step(depends_on=["approve", "nested"])
def publish(approve: Any, nested: Any) -> str:
    return f"approved by {approve}"


hostile = pgflow.Flow("dash_hostile", queue="flows")


@hostile.step(name=HOSTILE[:60])
def hostile_step(input: Any) -> str:
    return HOSTILE


broken = pgflow.Flow("dash_broken", queue="flows")


@broken.step
def fetch(input: Any) -> int:
    return 41


@broken.step(depends_on=["fetch"], max_attempts=1)
def compute(fetch: int) -> int:
    if "compute" in FAILING:
        raise RuntimeError("bug in compute")
    return fetch + 1
