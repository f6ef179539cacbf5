"""The flows this process knows, by name and definition fingerprint: the runtime runs a task
only for a definition registered here (imported), never one a row names."""

from __future__ import annotations

import gc
import threading
import weakref
from typing import TYPE_CHECKING

from pgflow.errors import DefinitionError

if TYPE_CHECKING:
    from pgflow.definition import Flow, Workflow


class FlowRegistry:
    """Flows by name, held weakly (a flow built in a test and dropped is forgotten), plus
    workflows registered explicitly (seed-form definitions given to start_run)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._flows: dict[str, list[weakref.ref[Flow]]] = {}
        self._workflows: dict[tuple[str, str], Workflow] = {}

    def add(self, flow: Flow) -> None:
        """Called by Flow.__init__: importing a module that defines a flow registers it."""
        with self._lock:
            refs = [ref for ref in self._flows.get(flow.name, []) if ref() is not None]
            refs.append(weakref.ref(flow))
            self._flows[flow.name] = refs

    def add_workflow(self, workflow: Workflow) -> None:
        """Register a built workflow (any form) so its tasks can run in this process."""
        self.check(workflow)
        with self._lock:
            self._workflows[(workflow.name, workflow.fingerprint)] = workflow

    def _live(self, name: str) -> list[Flow]:
        with self._lock:
            refs = list(self._flows.get(name, []))
        return [flow for flow in (ref() for ref in refs) if flow is not None]

    def find(self, name: str, fingerprint: str) -> Workflow | None:
        """The definition of flow `name` whose fingerprint is `fingerprint`, if known here.
        Building a flow's workflow may raise DefinitionError (a broken definition)."""
        with self._lock:
            found = self._workflows.get((name, fingerprint))
        if found is not None:
            return found
        for flow in self._live(name):
            workflow = flow.workflow
            if workflow.fingerprint == fingerprint:
                return workflow
        return None

    def by_fingerprint(self, fingerprint: str) -> Workflow | None:
        """The known definition whose fingerprint is `fingerprint`, whatever its name (a
        store reading a run under its lock asks by the run's fingerprint alone)."""
        with self._lock:
            for (_, known), workflow in self._workflows.items():
                if known == fingerprint:
                    return workflow
            names = list(self._flows)
        for name in names:
            for flow in self._live(name):
                try:
                    workflow = flow.workflow
                except DefinitionError:
                    continue
                if workflow.fingerprint == fingerprint:
                    return workflow
        return None

    def versions(self, name: str) -> list[Workflow]:
        """Every definition of flow `name` known here (to explain a mismatch)."""
        with self._lock:
            found = [wf for (flow, _), wf in self._workflows.items() if flow == name]
        for flow in self._live(name):
            try:
                workflow = flow.workflow
            except DefinitionError:
                continue
            if all(workflow.fingerprint != other.fingerprint for other in found):
                found.append(workflow)
        return found

    def served(self) -> list[tuple[str, str]]:
        """(name, fingerprint) of every well-formed definition known here, sorted.

        DefinitionError when two of them share a name and a version but not a shape: an
        instance must not start serving definitions its tasks cannot tell apart.
        """
        pairs = self._served()
        if self._ambiguous(pairs):
            gc.collect()  # flows dropped in reference cycles (tests) must not count
            pairs = self._served()
        for name in sorted({name for name, _ in pairs}):
            seen: dict[str | int | None, Workflow] = {}
            for workflow in self.versions(name):
                other = seen.setdefault(workflow.version, workflow)
                if other.fingerprint != workflow.fingerprint:
                    self.check(workflow)  # raises, naming the flow
        return pairs

    def _served(self) -> list[tuple[str, str]]:
        with self._lock:
            names = set(self._flows) | {name for name, _ in self._workflows}
        return sorted({(name, wf.fingerprint) for name in names for wf in self.versions(name)})

    def _ambiguous(self, pairs: list[tuple[str, str]]) -> bool:
        names = [name for name, _ in pairs]
        return len(names) != len(set(names))

    def check(self, workflow: Workflow) -> None:
        """DefinitionError when another definition with this name and version but another
        shape is known: tasks could not tell them apart by name and version."""
        for other in self.versions(workflow.name):
            if other.fingerprint != workflow.fingerprint and other.version == workflow.version:
                raise DefinitionError(
                    f"two flows named {workflow.name!r} with different shapes are defined in "
                    "this process; give each a distinct version= (to serve runs of an older "
                    "shape during a rolling deploy) or a distinct name"
                )


#: The process-wide registry.
flows = FlowRegistry()
