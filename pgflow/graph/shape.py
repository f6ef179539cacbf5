"""The validated plan of a flow: steps in a fixed topological order, each with its
dependencies, dependents and the options its tasks need.

Built once per definition at first use (`execute`, `start_run`, `to_mermaid`, a worker
registering the flow); graph-wide mistakes (unknown dependency, cycle) surface here as
DefinitionError. The same plan drives the in-process engine and every backend's settle.
"""

from __future__ import annotations

import heapq
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attrs

from pgflow.errors import DefinitionError
from pgflow.graph.signature import INPUT

if TYPE_CHECKING:
    from pgflow.definition import Step, Workflow

CHAIN, GRAPH = "chain", "graph"
WAIT, SLEEP, SUBFLOW = "wait", "sleep", "subflow"
HANDLERLESS_KINDS = frozenset({WAIT, SLEEP, SUBFLOW})
#: Task jobs of flow `name` are stored with worker `TASK_WORKER_PREFIX + name`.
TASK_WORKER_PREFIX = "pgflow.flow:"


def task_worker_name(flow: str) -> str:
    """The `worker` column of a flow's task jobs (not a Python class: a flow's name)."""
    return TASK_WORKER_PREFIX + flow


@attrs.frozen
class StepPlan:
    """One step as the engines see it; `index` is its place in the topological order, the
    order every backend locks step rows in."""

    name: str
    index: int
    kind: str
    deps: tuple[str, ...]
    dependents: tuple[str, ...]
    #: For a map: the dependency it maps over (None: the run's input).
    over: str | None = None
    #: Dependencies passed by keyword (graph steps with dependencies; chains pass the
    #: previous output positionally instead).
    keyword_deps: bool = False
    #: A graph step that declares `input` gets the run's input under that name.
    takes_input: bool = False
    #: Dependencies whose parameter has a default: when one is skipped, the step still runs
    #: (with the default); a skipped dependency not in here skips the step too.
    defaults: frozenset[str] = frozenset()
    queue: str | None = None
    max_attempts: int | None = None
    start_delay: float = 0.0
    #: A wait's timeout (seconds) and what it does then ("fail" or "skip").
    wait_timeout: float | None = None
    on_timeout: str = "fail"
    #: A sleep's length, or the function of its arguments giving the datetime it ends at.
    sleep_seconds: float | None = None
    until: Callable[..., Any] | None = attrs.field(default=None, eq=False, repr=False)
    #: A sub-flow's child plan.
    child: FlowPlan | None = attrs.field(default=None, eq=False, repr=False)

    @property
    def is_map(self) -> bool:
        return self.kind == "map"

    @property
    def handlerless(self) -> bool:
        """A wait, sleep or sub-flow: settled by the stores, no function runs."""
        return self.kind in HANDLERLESS_KINDS


@attrs.frozen
class FlowPlan:
    """A flow's steps in topological order plus what a run needs to start and finish."""

    flow: str
    kind: str
    steps: tuple[StepPlan, ...]
    queue: str
    #: The shape as JSON (what the fingerprint hashes): names, kinds, edges, map sources,
    #: which parameters have defaults. Step options are left out: changing a timeout or a
    #: queue does not change which stored output belongs to which step.
    definition: dict[str, Any]
    #: Steps no other step depends on; a graph run's result is their outputs by name.
    leaves: tuple[str, ...]
    _by_name: dict[str, StepPlan] = attrs.field(init=False, repr=False, eq=False)

    @_by_name.default
    def _index(self) -> dict[str, StepPlan]:
        return {step.name: step for step in self.steps}

    @property
    def worker(self) -> str:
        return task_worker_name(self.flow)

    @property
    def is_graph(self) -> bool:
        return self.kind == GRAPH

    def step(self, name: str) -> StepPlan:
        """The step called `name`; KeyError when the flow has none."""
        return self._by_name[name]

    def has_step(self, name: str) -> bool:
        return name in self._by_name

    @property
    def roots(self) -> tuple[StepPlan, ...]:
        return tuple(step for step in self.steps if not step.deps)


def build_plan(workflow: Workflow) -> FlowPlan:
    """The FlowPlan of a validated Workflow; DefinitionError for graph-wide mistakes."""
    steps = workflow.steps
    if not any(step.makes_graph for step in steps):
        return _chain_plan(workflow)
    return _graph_plan(workflow)


def _chain_plan(workflow: Workflow) -> FlowPlan:
    for step in workflow.steps:
        if step.when is not None:
            raise DefinitionError(
                f"workflow {workflow.name!r} step {step.name!r}: when= needs a graph (a "
                "step with depends_on or a map); in a chain every step runs"
            )
    names = [step.name for step in workflow.steps]
    plans = tuple(
        StepPlan(
            name=step.name,
            index=index,
            kind="step",
            deps=(names[index - 1],) if index else (),
            dependents=(names[index + 1],) if index + 1 < len(names) else (),
            queue=step.queue,
            max_attempts=step.max_attempts,
            start_delay=step.start_delay,
        )
        for index, step in enumerate(workflow.steps)
    )
    return FlowPlan(
        flow=workflow.name,
        kind=CHAIN,
        steps=plans,
        queue=workflow.queue,
        definition=workflow.definition,
        leaves=(names[-1],),
    )


def _graph_plan(workflow: Workflow) -> FlowPlan:
    by_name = {step.name: step for step in workflow.steps}
    for step in workflow.steps:
        if step.name == INPUT:
            raise DefinitionError(
                f"workflow {workflow.name!r} step {step.name!r}: in a graph {INPUT!r} names "
                "the run's input (a step's parameter for it); give the step another name"
            )
        for dependency in step.depends_on:
            if dependency not in by_name:
                close = sorted(by_name)
                raise DefinitionError(
                    f"workflow {workflow.name!r} step {step.name!r}: depends on unknown step "
                    f"{dependency!r} (steps: {', '.join(close)})"
                )
        if not step.depends_on and not step.is_map and not step.handlerless:
            _check_root(workflow.name, step)
    order = _topological_order(workflow.name, workflow.steps)
    dependents: dict[str, list[str]] = {name: [] for name in order}
    for name in order:
        for dependency in by_name[name].depends_on:
            dependents[dependency].append(name)
    plans: list[StepPlan] = []
    shape: list[dict[str, Any]] = []
    for index, name in enumerate(order):
        step = by_name[name]
        signature = step.signature
        takes_input = signature.known and (INPUT in signature.names)
        keyword = bool(step.depends_on) and not step.is_map and not step.handlerless
        if step.until is not None:  # a sleep's until may ask for the run's input
            until_signature = step.when_signature
            takes_input = bool(until_signature and INPUT in until_signature.names)
        defaults = (
            frozenset(dep for dep in step.depends_on if dep in signature.defaults)
            if keyword
            else frozenset()
        )
        plans.append(
            StepPlan(
                name=name,
                index=index,
                kind=step.kind,
                deps=step.depends_on,
                dependents=tuple(sorted(dependents[name], key=order.index)),
                over=step.over,
                keyword_deps=keyword,
                takes_input=takes_input,
                defaults=defaults,
                queue=step.queue,
                max_attempts=step.max_attempts,
                start_delay=step.start_delay,
                wait_timeout=step.wait_timeout,
                on_timeout=step.on_timeout,
                sleep_seconds=step.sleep_seconds,
                until=step.until,
                child=_child_plan(workflow.name, step),
            )
        )
        entry: dict[str, Any] = {
            "name": name,
            "kind": step.kind,
            "depends_on": sorted(step.depends_on),
            "over": step.over,
            "input": takes_input,
            "defaults": sorted(defaults),
        }
        if plans[-1].child is not None:
            entry["flow"] = plans[-1].child.flow
        shape.append(entry)
    definition: dict[str, Any] = {"kind": GRAPH, "steps": shape}
    if workflow.version is not None:
        definition["version"] = workflow.version
    return FlowPlan(
        flow=workflow.name,
        kind=GRAPH,
        steps=tuple(plans),
        queue=workflow.queue,
        definition=definition,
        leaves=tuple(plan.name for plan in plans if not plan.dependents),
    )


_building = threading.local()


def _child_plan(workflow: str, step: Step) -> FlowPlan | None:
    """A sub-flow step's child plan; DefinitionError when flows nest in a cycle."""
    if step.kind != SUBFLOW:
        return None
    from pgflow.definition import resolve_workflow

    stack: list[str] = getattr(_building, "stack", [])
    _building.stack = stack
    name = getattr(step.child, "name", None)
    if isinstance(name, str) and (name == workflow or name in stack):
        path = " -> ".join([*stack, workflow, name])
        raise DefinitionError(
            f"workflow {workflow!r} step {step.name!r}: sub-flows nest in a cycle: {path}"
        )
    stack.append(workflow)
    try:
        child = resolve_workflow(step.child)
    except DefinitionError as exc:
        if "nest in a cycle" in str(exc):
            raise
        raise DefinitionError(f"workflow {workflow!r} step {step.name!r}: {exc}") from None
    finally:
        stack.pop()
    if child.name == workflow:
        raise DefinitionError(
            f"workflow {workflow!r} step {step.name!r}: a flow cannot run itself as a sub-flow"
        )
    return child.plan


def _check_root(workflow: str, step: Step) -> None:
    """A graph's root step is called with the run's input as its one argument."""
    signature = step.signature
    if not signature.known or signature.var_positional or signature.positional_only:
        return
    if not signature.names:
        raise DefinitionError(
            f"workflow {workflow!r} step {step.name!r}: a root step (no depends_on) is "
            "called with the run's input; give it one parameter"
        )
    extra = [name for name in signature.names[1:] if name not in signature.defaults]
    if extra:
        raise DefinitionError(
            f"workflow {workflow!r} step {step.name!r}: parameter {extra[0]!r} names no "
            "dependency (a root step gets only the run's input; add depends_on=[...])"
        )


def _topological_order(workflow: str, steps: tuple[Step, ...]) -> list[str]:
    """Kahn's algorithm, ties broken by name, so equal shapes always get equal orders
    (and so equal lock orders in every process)."""
    remaining = {step.name: len(step.depends_on) for step in steps}
    dependents: dict[str, list[str]] = {step.name: [] for step in steps}
    for step in steps:
        for dependency in step.depends_on:
            dependents[dependency].append(step.name)
    ready = [name for name, count in remaining.items() if count == 0]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        name = heapq.heappop(ready)
        order.append(name)
        for dependent in dependents[name]:
            remaining[dependent] -= 1
            if remaining[dependent] == 0:
                heapq.heappush(ready, dependent)
    if len(order) < len(steps):
        cycle = _find_cycle({step.name: step.depends_on for step in steps}, set(order))
        raise DefinitionError(
            f"workflow {workflow!r}: steps depend on each other in a cycle: " + " -> ".join(cycle)
        )
    return order


def _find_cycle(deps: dict[str, tuple[str, ...]], done: set[str]) -> list[str]:
    """One cycle among the steps not in `done`, as a path that ends where it starts."""
    start = min(name for name in deps if name not in done)
    path: list[str] = []
    seen: dict[str, int] = {}
    node = start
    while node not in seen:
        seen[node] = len(path)
        path.append(node)
        node = min(dep for dep in deps[node] if dep not in done)
    return [*path[seen[node] :], node]
