"""The leader's sweep of distributed runs whose definition no online instance serves.

A task of a definition a worker does not know is snoozed, never lost (see flow_tasks), so
during a rolling deploy old-shape runs wait for a worker of the old code. When no such worker
comes back, they would wait forever: the leader fails them once their definition has been
unserved for longer than the grace period, with an error naming the flow, the run's
fingerprint and how it differs from what is served.

Since when a definition is unserved lives only in the leader's memory: a new leader (or one
that lost and regained the lease) starts its own clock, so a hand-over can delay a failure by
up to one grace period, never bring it forward. Times are the database's clock.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from pgflow.backend import FlowStore, JobQueue, RunStore
from pgflow.graph.difference import describe_difference
from pgflow.graph.registry import FlowRegistry, flows

logger = logging.getLogger("pgflow.runtime")

#: The `kind` of the error a swept run fails with.
UNSERVED_FLOW = "UnservedFlow"
DEFAULT_UNSERVED_GRACE = 3600.0
DEFAULT_UNSERVED_INTERVAL = 60.0
#: Runs failed per read of `running_flow_runs`.
PAGE = 100
#: Known definitions compared with a run's in one message.
MAX_COMPARED = 3
ONLINE = "online"

Definition = tuple[str, str]  # (flow name, fingerprint)


@runtime_checkable
class SweptStore(FlowStore, RunStore, JobQueue, Protocol):
    """What the sweep reads (running runs, instances, the clock) and writes (failed runs)."""


def short(fingerprint: str) -> str:
    """A fingerprint as people quote it (like a git hash): its first 12 hex digits."""
    return fingerprint[:12]


class UnservedFlowSweep:
    """Remembers since when each running (flow, fingerprint) has had no online instance
    serving it, and fails the runs of those unserved for longer than `grace` seconds."""

    def __init__(
        self,
        *,
        grace: float,
        registry: FlowRegistry = flows,
        extra: Mapping[str, Any] | None = None,
        page: int = PAGE,
    ) -> None:
        self.grace = grace
        self.registry = registry
        self.page = page
        self._extra: dict[str, Any] = dict(extra or {})
        self._since: dict[Definition, datetime] = {}

    @property
    def unserved_since(self) -> dict[Definition, datetime]:
        """The definitions seen unserved at the last sweep, with when first seen so."""
        return dict(self._since)

    def forget(self) -> None:
        """Leadership was (re)gained: what happened meanwhile is unknown, start over."""
        self._since.clear()

    def run(self, store: SweptStore, holds_lease: Callable[[], bool]) -> list[str]:
        """`sweep`, logging any error instead of raising (the leader's other duties go on)."""
        try:
            return self.sweep(store, holds_lease)
        except Exception as exc:
            logger.warning(
                "unserved flow sweep failed (%s: %s); trying again next time",
                type(exc).__name__,
                exc,
                extra={**self._extra, "error": type(exc).__name__},
            )
            return []

    def sweep(self, store: SweptStore, holds_lease: Callable[[], bool]) -> list[str]:
        """Update which definitions are unserved; fail the runs of those past the grace
        period while `holds_lease()`. Returns the workflow_ids failed."""
        now = store.database_time()
        running = {(name, fp) for name, fp, count in store.running_flows() if count > 0}
        served: dict[str, dict[str, list[str]]] = {}
        for instance in store.list_instances():
            if instance.status == ONLINE:
                for name, fingerprint in instance.flows:
                    served.setdefault(name, {}).setdefault(fingerprint, []).append(
                        instance.instance_id
                    )
        unserved = {(name, fp) for name, fp in running if fp not in served.get(name, {})}
        self._since = {key: self._since.get(key, now) for key in unserved}
        failed: list[str] = []
        for (name, fingerprint), since in sorted(self._since.items()):
            waited = (now - since).total_seconds()
            if waited <= self.grace:
                continue
            if not holds_lease():
                break
            try:
                failed += self._fail_runs(
                    store, name, fingerprint, served.get(name, {}), waited, holds_lease
                )
            except Exception as exc:
                logger.warning(
                    "could not fail the runs of flow %r definition %s (%s: %s)",
                    name,
                    short(fingerprint),
                    type(exc).__name__,
                    exc,
                    extra={
                        **self._extra,
                        "workflow": name,
                        "fingerprint": fingerprint,
                        "error": type(exc).__name__,
                    },
                )
        return failed

    def _fail_runs(
        self,
        store: SweptStore,
        name: str,
        fingerprint: str,
        served: Mapping[str, list[str]],
        waited: float,
        holds_lease: Callable[[], bool],
    ) -> list[str]:
        """Fail every running run of the definition, a page at a time."""
        failed: list[str] = []
        seen: set[str] = set()
        error: dict[str, Any] | None = None
        while True:
            page = [
                workflow_id
                for workflow_id in store.running_flow_runs(name, fingerprint, self.page)
                if workflow_id not in seen
            ]
            if not page:
                return failed
            seen.update(page)
            if error is None:
                run = store.get_run(page[0])
                definition = None if run is None else run.definition
                error = {
                    "kind": UNSERVED_FLOW,
                    "message": self.message(name, fingerprint, definition, served, waited),
                    "step": None,
                    "traceback": "",
                }
            for workflow_id in page:
                if not holds_lease():
                    return failed
                if store.fail_run(workflow_id, error):
                    failed.append(workflow_id)
                    logger.warning(
                        "flow %r run %s failed: no online instance served its definition %s "
                        "for %.0f s",
                        name,
                        workflow_id,
                        short(fingerprint),
                        waited,
                        extra={
                            **self._extra,
                            "workflow": name,
                            "workflow_id": workflow_id,
                            "fingerprint": fingerprint,
                        },
                    )

    def message(
        self,
        name: str,
        fingerprint: str,
        definition: Any,
        served: Mapping[str, list[str]],
        waited: float,
    ) -> str:
        """The error of a run of `name` started with definition `fingerprint`: for how long
        it was unserved, and how it differs from the definitions served or known here."""
        parts = [
            f"Flow {name!r}: no online instance has served this run's definition "
            f"{short(fingerprint)} for {waited:.0f} s (grace period {self.grace:g} s)"
        ]
        known = [wf for wf in self.registry.versions(name) if wf.fingerprint != fingerprint]
        known.sort(key=lambda wf: (wf.fingerprint not in served, wf.fingerprint))
        for workflow in known[:MAX_COMPARED]:
            where = "served now" if workflow.fingerprint in served else "known to the leader"
            parts.append(
                f"Definition {short(workflow.fingerprint)} ({where}) differs from it: "
                f"{describe_difference(definition, workflow.definition)}"
            )
        if served:
            listed = ", ".join(
                f"{short(fp)} (by {_some(ids)})" for fp, ids in sorted(served.items())
            )
            parts.append(f"Online instances serve definition(s) {listed}")
        else:
            parts.append(
                "No online instance serves any definition of this flow (workers import the "
                "module that defines it)"
            )
        return ". ".join(parts) + "."


def _some(instance_ids: list[str], shown: int = 3) -> str:
    """A few instance ids, and how many more: a cluster may have hundreds."""
    ids = sorted(instance_ids)
    more = f" and {len(ids) - shown} more" if len(ids) > shown else ""
    return ", ".join(ids[:shown]) + more
