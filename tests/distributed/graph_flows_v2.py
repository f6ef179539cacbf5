"""Version 2 of flow "deploy_flow" for the rolling-deploy test (graph_flows_v1 and _v2 define
the same name with different shapes: one process imports one of them, never both)."""

from __future__ import annotations

from typing import Any

import pgflow
from tests.distributed.graph_flows import record

deploy = pgflow.Flow("deploy_flow")


@deploy.step
def prepare(input: dict[str, Any]) -> str:
    record(str(input["run"]), "prepare", "ran")
    return str(input["run"])


@deploy.step(depends_on=["prepare"])
def publish(prepare: str) -> str:
    record(prepare, "publish", "ran")
    return "v2"


@deploy.step(depends_on=["prepare"])
def audit(prepare: str) -> str:
    record(prepare, "audit", "ran")
    return "audited"
