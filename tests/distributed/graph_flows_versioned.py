"""Two shapes of flow "versioned_flow", told apart by `version=`, in one module: a process
may define both, and serves runs of either."""

from __future__ import annotations

from typing import Any

import pgflow
from tests.distributed.graph_flows import record

old = pgflow.Flow("versioned_flow", version=1)


@old.step
def begin(input: dict[str, Any]) -> str:
    record(str(input["run"]), "begin", "v1")
    return str(input["run"])


@old.step(depends_on=["begin"])
def end(begin: str) -> str:
    return "v1"


new = pgflow.Flow("versioned_flow", version=2)


@new.step(name="begin")
def begin_v2(input: dict[str, Any]) -> list[str]:
    record(str(input["run"]), "begin", "v2")
    return [str(input["run"])]


@new.map(over="begin", name="end")
def end_v2(item: str) -> str:
    return "v2"
