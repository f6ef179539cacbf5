"""Workers and flows the browser tests seed the dashboard's database with.

Importable as `tests.browser.flows` (the repository root on PYTHONPATH): the dashboard process
imports it too, since resuming, restarting and signalling a run need the flow's definition.
"""

from __future__ import annotations

from typing import Any

import pgflow

#: Markup that would run script if a page inserted it unescaped.
HOSTILE = "<script>window.__pwned=1</script><img src=x onerror=window.__pwned=1>"


class Echo(pgflow.Worker, queue="default"):
    """Completes with its arguments, so a completed job has a result to show."""

    def perform(self, job: pgflow.Job) -> dict[str, Any]:
        return {"echo": job.args}


class Boom(pgflow.Worker, queue="default", max_attempts=1):
    """Fails its only attempt, so a discarded job has an error and a traceback to show."""

    def perform(self, job: pgflow.Job) -> None:
        raise RuntimeError(f"boom: {job.args.get('why', 'no reason')}")


class Mail(pgflow.Worker, queue="mail"):
    """Never served during the tests: its jobs stay available for cancel and live updates."""

    def perform(self, job: pgflow.Job) -> None:
        return None


class Nightly(pgflow.Worker, queue="cron"):
    """The cron entry the instances page lists."""

    def perform(self, job: pgflow.Job) -> None:
        return None


# --- a map: items -> double (one task per element) -> total ----------------------------

fanout = pgflow.Flow("browser_fanout", queue="flows")


@fanout.step
def items(input: dict[str, Any]) -> list[int]:
    return list(range(1, int(input["count"]) + 1))


@fanout.map(over="items")
def double(item: int) -> int:
    return item * 2


@fanout.step(depends_on=["double"])
def total(double: list[int]) -> int:
    return sum(double)


# --- a wait for a person's approval ------------------------------------------------------

approval = pgflow.Flow("browser_approval", queue="flows")


@approval.step
def draft(input: dict[str, Any]) -> dict[str, Any]:
    return {"title": input["title"]}


approval.wait_for("approve", depends_on=["draft"])


@approval.step(depends_on=["draft", "approve"])
def publish(draft: dict[str, Any], approve: Any) -> str:
    return f"{draft['title']} approved by {approve}"


# --- a sub-flow: the fan-out as one step of a parent --------------------------------------

parent = pgflow.Flow("browser_parent", queue="flows")


@parent.step
def prepare(input: dict[str, Any]) -> dict[str, Any]:
    return {"count": input["count"]}


parent.subflow("child", fanout, depends_on=["prepare"])


@parent.step(depends_on=["child"])
def report(child: dict[str, Any]) -> str:
    return f"total {child['total']}"


# --- a step that fails with markup in its message ------------------------------------------

fragile = pgflow.Flow("browser_fragile", queue="flows")


@fragile.step
def load(input: dict[str, Any]) -> dict[str, Any]:
    return dict(input)


@fragile.step(depends_on=["load"], max_attempts=1)
def explode(load: dict[str, Any]) -> None:
    raise ValueError(f"step broke on {HOSTILE}")


# --- the README's run screenshot: a map done, a wait pending, a sub-flow to come ------------

order = pgflow.Flow("browser_order", queue="flows")


@order.step
def lines(input: dict[str, Any]) -> list[int]:
    return list(input["lines"])


@order.map(over="lines")
def price(item: int) -> int:
    return item * 100


@order.step(depends_on=["lines"])
def stock(lines: list[int]) -> bool:
    return all(line > 0 for line in lines)


@order.step(depends_on=["price", "stock"])
def invoice(price: list[int], stock: bool) -> dict[str, Any]:
    return {"count": sum(price) // 100, "in_stock": stock}


order.wait_for("payment", depends_on=["invoice"])
order.subflow("ship", fanout, depends_on=["invoice", "payment"])
