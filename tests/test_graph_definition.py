"""Graph definitions: every bad input is a DefinitionError naming flow and step, graph-wide
checks wait for first use, chains keep their fingerprint, and the fingerprint follows the
shape (not the declaration order, not the step options)."""

from __future__ import annotations

import gc
import re
from collections.abc import Callable
from typing import Any

import pytest

import pgflow
from pgflow.backoff_policy import Backoff
from pgflow.definition import Flow, Step, Workflow, definition_fingerprint
from pgflow.errors import DefinitionError
from pgflow.graph.registry import FlowRegistry


def _raises(match: str) -> Any:
    return pytest.raises(DefinitionError, match=match)


# --- errors at the decorator line -----------------------------------------------------------


def test_self_dependency_names_flow_and_step() -> None:
    flow = Flow("selfish")
    with _raises(r"workflow 'selfish' step 'a': a step cannot depend on itself"):

        @flow.step(depends_on=["a"])
        def a(a: Any) -> Any:
            return a


def test_map_over_more_than_one_dependency() -> None:
    flow = Flow("wide_map")
    with _raises(r"workflow 'wide_map' step '<step>': a map maps over one dependency"):
        flow.map(over=["a", "b"])  # type: ignore[call-overload]
    with _raises(r"workflow 'wide_map' step 'each': a map maps over one dependency"):
        flow.map(lambda x: x, over=("a", "b"), name="each")  # type: ignore[call-overload]


def test_map_with_depends_on_is_an_unknown_option_with_a_hint() -> None:
    flow = Flow("map_deps")
    with _raises(r"workflow 'map_deps' step '<step>': unknown option\(s\) depends_on.*over="):
        flow.map(over="a", depends_on=["b"])


def test_parameter_naming_no_dependency() -> None:
    flow = Flow("extra_param")
    with _raises(r"workflow 'extra_param' step 'b': parameter 'c' names no dependency"):

        @flow.step(depends_on=["a"])
        def b(a: Any, c: Any) -> Any:
            return a


def test_root_parameter_naming_no_dependency_is_found_at_first_use() -> None:
    flow = Flow("root_extra")

    @flow.step
    def a(x: Any, y: Any) -> Any:
        return x

    @flow.step(depends_on=["a"])
    def b(a: Any) -> Any:
        return a

    with _raises(r"workflow 'root_extra' step 'a': parameter 'y' names no dependency"):
        _ = flow.plan


def test_dependency_missing_from_signature() -> None:
    flow = Flow("missing_param")
    with _raises(
        r"workflow 'missing_param' step 'c': dependency 'b' is missing from the signature"
    ):

        @flow.step(depends_on=["a", "b"])
        def c(a: Any) -> Any:
            return a


def test_var_keyword_accepts_any_dependency() -> None:
    flow = Flow("kwargs_ok")

    @flow.step
    def a(x: Any) -> Any:
        return x

    @flow.step
    def b(x: Any) -> Any:
        return x

    @flow.step(depends_on=["a", "b"])
    def c(**outputs: Any) -> Any:
        return outputs

    assert flow.plan.step("c").deps == ("a", "b")
    assert flow.plan.leaves == ("c",)


def test_when_not_callable() -> None:
    flow = Flow("bad_when")
    with _raises(r"workflow 'bad_when' step '<step>': when must be callable, got bool"):
        flow.step(depends_on=["a"], when=True)
    with _raises(r"workflow 'bad_when' step 'b': when must be callable, got str"):
        flow.add_step("b", lambda a: a, depends_on=["a"], when="a > 1")


def test_unknown_option_names_it_and_the_allowed_ones() -> None:
    flow = Flow("typo")
    with _raises(r"workflow 'typo' step '<step>': unknown option\(s\) depend_on; allowed: "):
        flow.step(depend_on=["a"])
    with _raises(r"workflow 'typo' step 'b': unknown option\(s\) retries"):
        flow.add_step("b", lambda x: x, retries=3)


def test_bad_option_leaves_the_flow_unchanged() -> None:
    flow = Flow("nothing_half_written")

    @flow.step
    def a(x: Any) -> Any:
        return x

    with _raises(r"step 'b'"):
        flow.add_step("b", lambda a: a, depends_on=["a"], when=3)
    assert flow.workflow.step_names == ("a",)


# --- graph-wide checks at first use ---------------------------------------------------------


def _cycle() -> Flow:
    flow = Flow("loop")

    @flow.step(depends_on=["c"])
    def a(c: Any) -> Any:
        return c

    @flow.step(depends_on=["a"])
    def b(a: Any) -> Any:
        return a

    @flow.step(depends_on=["b"])
    def c(b: Any) -> Any:
        return b

    return flow


@pytest.mark.parametrize(
    "use",
    [
        lambda flow: flow.plan,
        lambda flow: flow.workflow,
        lambda flow: flow.to_mermaid(),
        lambda flow: pgflow.definition.resolve_workflow(flow),
    ],
    ids=["plan", "workflow", "to_mermaid", "resolve_workflow"],
)
def test_cycle_is_found_at_first_use(use: Callable[[Flow], Any]) -> None:
    flow = _cycle()  # defining it raised nothing
    with _raises(r"workflow 'loop': steps depend on each other in a cycle: a -> c -> b -> a"):
        use(flow)


def test_unknown_dependency_is_found_at_first_use_and_names_step() -> None:
    flow = Flow("unknown_dep")

    @flow.step
    def a(x: Any) -> Any:
        return x

    @flow.step(depends_on=["a", "ghost"])
    def b(a: Any, ghost: Any) -> Any:
        return a

    with _raises(r"workflow 'unknown_dep' step 'b': depends on unknown step 'ghost'"):
        _ = flow.plan


def test_map_over_unknown_step_is_found_at_first_use() -> None:
    flow = Flow("unknown_over")

    @flow.map(over="nowhere")
    def each(item: Any) -> Any:
        return item

    with _raises(r"workflow 'unknown_over' step 'each': depends on unknown step 'nowhere'"):
        _ = flow.plan


def test_depends_on_may_name_a_later_step() -> None:
    flow = Flow("forward")

    @flow.step(depends_on=["a"])
    def b(a: Any) -> Any:
        return a

    @flow.step
    def a(x: Any) -> Any:
        return x

    plan = flow.plan
    assert [step.name for step in plan.steps] == ["a", "b"]
    assert plan.step("a").dependents == ("b",)
    assert plan.leaves == ("b",)


def test_flow_can_be_fixed_after_a_failed_first_use() -> None:
    flow = Flow("fixed_later")

    @flow.step(depends_on=["a"])
    def b(a: Any) -> Any:
        return a

    with _raises(r"step 'b': depends on unknown step 'a'"):
        _ = flow.plan

    @flow.step
    def a(x: Any) -> Any:
        return x

    assert flow.plan.leaves == ("b",)


# --- chains unchanged -----------------------------------------------------------------------


def test_chain_fingerprint_is_the_chain_definition() -> None:
    flow = Flow("plain_chain")

    @flow.step
    def one(x: Any) -> Any:
        return x

    @flow.step(timeout=3.0, max_attempts=2, queue="other")
    def two(x: Any) -> Any:
        return x

    workflow = flow.workflow
    assert not workflow.is_graph
    assert workflow.definition == {"kind": "chain", "steps": ["one", "two"]}
    assert workflow.fingerprint == definition_fingerprint(
        {"kind": "chain", "steps": ["one", "two"]}
    )
    assert flow.plan.kind == "chain"
    assert [(s.name, s.deps) for s in flow.plan.steps] == [("one", ()), ("two", ("one",))]


def test_when_needs_a_graph() -> None:
    flow = Flow("chain_when")

    @flow.step(when=lambda x: True)
    def one(x: Any) -> Any:
        return x

    with _raises(r"workflow 'chain_when' step 'one': when= needs a graph"):
        _ = flow.plan


# --- fingerprints follow the shape ----------------------------------------------------------


def _identity(value: Any) -> Any:
    return value


def _diamond(
    order: tuple[str, ...] = ("a", "b", "c", "d"),
    *,
    name: str = "diamond",
    d_deps: tuple[str, ...] = ("b", "c"),
    c_kind: str = "step",
    d_default: bool = False,
    **options: Any,
) -> Workflow:
    def d_plain(b: Any, c: Any) -> Any:
        return [b, c]

    def d_with_default(b: Any, c: Any = None) -> Any:
        return [b, c]

    def d_only_b(b: Any) -> Any:
        return b

    def b_fn(a: Any) -> Any:
        return a

    def c_fn(a: Any) -> Any:
        return a

    d_fn = d_only_b if d_deps == ("b",) else d_with_default if d_default else d_plain
    flow = Flow(name)
    declare: dict[str, Callable[[], Any]] = {
        "a": lambda: flow.add_step("a", _identity),
        "b": lambda: flow.add_step("b", b_fn, depends_on=["a"]),
        "c": (
            (lambda: flow.map(_identity, over="a", name="c"))  # type: ignore[call-overload]
            if c_kind == "map"
            else (lambda: flow.add_step("c", c_fn, depends_on=["a"], **options))
        ),
        "d": lambda: flow.add_step("d", d_fn, depends_on=list(d_deps)),
    }
    for step in order:
        declare[step]()
    return flow.workflow


def test_fingerprint_ignores_declaration_order() -> None:
    first = _diamond(("a", "b", "c", "d"))
    second = _diamond(("d", "c", "b", "a"))
    assert first.fingerprint == second.fingerprint
    assert first.definition == second.definition


def test_fingerprint_ignores_timeout_queue_attempts_and_delays() -> None:
    base = _diamond().fingerprint
    tuned = _diamond(
        timeout=9.0,
        queue="gpu",
        max_attempts=7,
        start_delay=2.0,
        backoff=Backoff(),
    ).fingerprint
    assert tuned == base


@pytest.mark.parametrize(
    "change",
    [
        {"d_deps": ("b",)},
        {"c_kind": "map"},
        {"d_default": True},
    ],
    ids=["edge", "kind", "default"],
)
def test_fingerprint_changes_with_the_shape(change: dict[str, Any]) -> None:
    assert _diamond(**change).fingerprint != _diamond().fingerprint


def test_fingerprint_changes_with_version() -> None:
    def build(version: str | None) -> str:
        flow = Flow("versioned", version=version)
        flow.add_step("a", _identity)
        flow.add_step("b", lambda a: a, depends_on=["a"])
        return flow.workflow.fingerprint

    assert build(None) != build("2")


# --- the registry: two flows, one name -------------------------------------------------------


def _graph(name: str, *, version: str | None = None, deps: tuple[str, ...] = ("a",)) -> Flow:
    flow = Flow(name, version=version)
    flow.add_step("a", _identity)
    flow.add_step("z", _identity)
    flow.add_step("b", (lambda a: a) if deps == ("a",) else (lambda z: z), depends_on=list(deps))
    return flow


def test_two_flows_one_name_different_shapes_are_refused() -> None:
    registry = FlowRegistry()
    old, new = _graph("twice"), _graph("twice", deps=("z",))
    registry.add(old)
    registry.add(new)
    with _raises(r"two flows named 'twice' with different shapes"):
        registry.add_workflow(new.workflow)


def test_two_flows_one_name_distinct_versions_are_both_served() -> None:
    registry = FlowRegistry()
    old, new = _graph("kept", version="1"), _graph("kept", version="2", deps=("z",))
    registry.add(old)
    registry.add(new)
    registry.add_workflow(new.workflow)
    assert registry.find("kept", old.workflow.fingerprint) is old.workflow
    assert registry.find("kept", new.workflow.fingerprint) is new.workflow
    assert registry.served() == sorted(
        {("kept", old.workflow.fingerprint), ("kept", new.workflow.fingerprint)}
    )


def test_same_shape_defined_twice_is_fine() -> None:
    registry = FlowRegistry()
    first, second = _graph("same"), _graph("same")
    registry.add(first)
    registry.add(second)
    registry.add_workflow(second.workflow)
    assert registry.served() == [("same", first.workflow.fingerprint)]


# --- foundation fixes -----------------------------------------------------------------------


def test_step_named_input_is_refused_in_a_graph() -> None:
    """Its output would be passed under the name that means the run's input."""
    flow = Flow("input_step")
    flow.add_step("input", _identity)
    flow.add_step("b", lambda input: input, depends_on=["input"])
    with _raises(r"workflow 'input_step' step 'input': in a graph 'input' names the run's"):
        _ = flow.plan


def test_step_named_input_is_fine_in_a_chain() -> None:
    flow = Flow("input_chain")
    flow.add_step("input", _identity)
    flow.add_step("next", _identity)
    assert flow.workflow.definition == {"kind": "chain", "steps": ["input", "next"]}


def test_map_whose_first_parameter_is_input() -> None:
    """The element is passed first, so `input` would be given twice."""
    flow = Flow("map_input_first")
    with _raises(r"workflow 'map_input_first' step 'each': a map step's first parameter"):

        @flow.map
        def each(input: Any, item: Any) -> Any:
            return item


def test_map_may_ask_for_input_after_its_element() -> None:
    flow = Flow("map_input_after")

    @flow.map
    def each(item: Any, input: Any) -> Any:
        return item

    assert flow.plan.step("each").takes_input


def test_when_with_positional_only_parameter() -> None:
    """`when` is called by keyword, so a positional-only parameter could never be given."""
    flow = Flow("when_positional")

    def positive(a: Any, /) -> bool:
        return bool(a)

    with _raises(r"workflow 'when_positional' step 'b': when's parameter 'a' is positional"):
        flow.add_step("b", lambda a: a, depends_on=["a"], when=positive)


def test_when_parameter_naming_no_argument() -> None:
    flow = Flow("when_unknown")
    with _raises(r"workflow 'when_unknown' step 'b': when's parameter 'z' is not one of"):
        flow.add_step("b", lambda a: a, depends_on=["a"], when=lambda z: True)


# --- Steps built by hand get the same checks --------------------------------------------------


def _takes_a(a: Any) -> Any:
    return a


@pytest.mark.parametrize(
    ("step", "problem"),
    [
        (Step("b", _takes_a, depends_on=["b"]), "a step cannot depend on itself"),
        (
            Step("b", _takes_a, kind="mapp"),
            "kind must be one of 'step', 'map', 'sleep', 'subflow', 'wait', got 'mapp'",
        ),
        (Step("b", _takes_a, kind="map", over="a", depends_on=["a", "z"]), "a map depends only"),
        (Step("b", _takes_a, over="a", depends_on=["a"]), "over= is for map steps"),
        (Step("b", _takes_a, depends_on=["a"], when=3), "when must be callable, got int"),  # type: ignore[arg-type]
        (Step("b", _takes_a, depends_on=["a"], start_delay=-1.0), "start_delay must be >= 0"),
        (Step("b", _identity, depends_on=["a"]), "parameter 'value' names no dependency"),
        (Step("b", lambda: None, depends_on=["a"]), "dependency 'a' is missing"),
    ],
    ids=["self", "kind", "map-deps", "over", "when", "start_delay", "param", "missing"],
)
def test_workflow_checks_steps_built_by_hand(step: Step, problem: str) -> None:
    with _raises(rf"workflow 'by_hand' step 'b': {re.escape(problem)}"):
        Workflow("by_hand", (Step("a", _identity), step))


def test_workflow_of_hand_built_graph_steps() -> None:
    workflow = Workflow(
        "by_hand_ok",
        (
            Step("a", _identity),
            Step("b", _identity, kind="map", over="a", depends_on=["a"]),
            Step("c", lambda b: b, depends_on=["b"], when=lambda b: bool(b)),
        ),
    )
    assert workflow.is_graph and workflow.plan.leaves == ("c",)


def test_registry_forgets_a_dropped_flow_and_skips_a_broken_one() -> None:
    registry = FlowRegistry()
    dropped = _graph("dropped")
    fingerprint = dropped.workflow.fingerprint
    registry.add(dropped)
    broken = Flow("broken_in_registry")
    broken.add_step("b", lambda a: a, depends_on=["a"])
    registry.add(broken)
    assert registry.served() == [("dropped", fingerprint)]
    del dropped
    gc.collect()
    assert registry.served() == []
    assert registry.find("dropped", fingerprint) is None
    with _raises(r"workflow 'broken_in_registry' step 'b': depends on unknown step 'a'"):
        registry.find("broken_in_registry", "0" * 64)


def test_served_refuses_two_shapes_of_one_name_and_version() -> None:
    registry = FlowRegistry()
    old, new = _graph("served_twice"), _graph("served_twice", deps=("z",))
    registry.add(old)
    registry.add(new)
    with _raises(r"two flows named 'served_twice' with different shapes"):
        registry.served()


def test_served_lists_both_versions_of_one_name() -> None:
    registry = FlowRegistry()
    old, new = _graph("served_kept", version="1"), _graph("served_kept", version="2", deps=("z",))
    registry.add(old)
    registry.add(new)
    assert [name for name, _ in registry.served()] == ["served_kept", "served_kept"]


def test_when_on_a_map_step_is_refused_naming_flow_and_step() -> None:
    flow = Flow("map_when")

    @flow.step
    def items(input: Any) -> Any:
        return input

    with _raises(r"'map_when'.*when= is not accepted on a map step"):

        @flow.map(over="items", when=lambda items: bool(items))
        def each(item: Any) -> Any:
            return item
