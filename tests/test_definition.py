"""Workflow definitions: both forms resolve to the same validated Workflow, and every
malformed definition fails up front with a DefinitionError naming workflow and step."""

from __future__ import annotations

import types
from typing import Any, ClassVar

import pytest

import pgflow
from pgflow.definition import Step, Workflow, resolve_workflow


def double(state: int) -> int:
    return state * 2


async def add_one(state: int) -> int:
    return state + 1


class Seed:
    @staticmethod
    def __workflow_steps__() -> list[tuple[str, Any]]:
        return [("double", Seed.double), ("add_one", add_one)]

    @staticmethod
    def double(state: int) -> int:
        return state * 2


class SeedList:
    __workflow_steps__: ClassVar[list[tuple[Any, ...]]] = [
        ("double", double),
        ("add_one", add_one, {"timeout": 2.5}),
    ]


def test_flow_decorators_keep_functions_and_order() -> None:
    flow = pgflow.Flow("orders")

    @flow.step
    def first(state: int) -> int:
        return state + 1

    @flow.step(timeout=5.0, max_attempts=5)
    async def second(state: int) -> int:
        return state

    assert first(1) == 2  # the decorator returns the function itself
    workflow = resolve_workflow(flow)
    assert workflow.name == "orders"
    assert workflow.step_names == ("first", "second")
    assert workflow.steps[0] == Step("first", first)
    assert (workflow.steps[1].timeout, workflow.steps[1].max_attempts) == (5.0, 5)
    assert [s.is_async for s in workflow.steps] == [False, True]
    assert workflow.has_step_timeouts


def test_flow_step_can_be_renamed_and_added_without_decorator() -> None:
    flow = pgflow.Flow("renamed")
    flow.step(name="twice")(double)
    flow.add_step("plus", add_one, max_attempts=2)
    workflow = resolve_workflow(flow)
    assert workflow.step_names == ("twice", "plus")
    assert workflow.steps[1].max_attempts == 2


def test_flow_workflow_is_rebuilt_when_a_step_is_added() -> None:
    flow = pgflow.Flow("growing")
    flow.add_step("one", double)
    assert resolve_workflow(flow).step_names == ("one",)
    flow.add_step("two", double)
    assert resolve_workflow(flow).step_names == ("one", "two")


def test_seed_form_callable_and_list() -> None:
    workflow = resolve_workflow(Seed)
    assert workflow.name == f"{__name__}.Seed"
    assert workflow.step_names == ("double", "add_one")
    assert workflow.steps[1].is_async
    listed = resolve_workflow(SeedList)
    assert listed.steps[1].timeout == 2.5
    assert not listed.steps[0].is_async


def test_seed_form_module() -> None:
    module = types.ModuleType("my_module_flow")
    module.__workflow_steps__ = lambda: [("double", double)]  # type: ignore[attr-defined]
    assert resolve_workflow(module).name == "my_module_flow"
    assert pgflow.execute(module, 4) == 8


def test_resolution_is_cached_per_object() -> None:
    class Counted:
        calls = 0

        @classmethod
        def __workflow_steps__(cls) -> list[tuple[str, Any]]:
            cls.calls += 1
            return [("double", double)]

    first = resolve_workflow(Counted)
    assert resolve_workflow(Counted) is first
    assert Counted.calls == 1


def test_workflow_and_flow_pass_through() -> None:
    workflow = Workflow("direct", (Step("double", double),))
    assert resolve_workflow(workflow) is workflow
    assert pgflow.execute(workflow, 2, timeout=None) == 4


def test_not_a_workflow() -> None:
    with pytest.raises(pgflow.DefinitionError, match="not a workflow"):
        resolve_workflow(object())


def _seed(steps: Any) -> type:
    return type("Broken", (), {"__workflow_steps__": steps, "__module__": "app"})


@pytest.mark.parametrize(
    ("steps", "pattern"),
    [
        ([], r"workflow 'app\.Broken' has no steps"),
        ([("a", double), ("a", double)], r"'app\.Broken': duplicate step name 'a'"),
        ([("a", 42)], r"'app\.Broken' step 'a': step is not callable"),
        ([("a",)], r"'app\.Broken': step #0 must be a \(name, function\) pair"),
        (["a"], r"step #0 must be a \(name, function\) pair"),
        ([("", double)], r"'app\.Broken': step name must be a non-empty string"),
        ([(3, double)], r"step name must be a non-empty string, got 3"),
        ([("a", double, {"retries": 3})], r"step 'a': unknown option\(s\) retries"),
        ([("a", double, {"max_attempts": 0})], r"step 'a': max_attempts must be >= 1"),
        ([("a", double, {"timeout": -1})], r"step 'a': timeout must be > 0"),
        ([("a", double, {"timeout": 0})], r"step 'a': timeout must be > 0"),
        ([("a", double, {"timeout": "5"})], r"step 'a': timeout must be a number"),
        ([("a", double, {"max_attempts": 2.5})], r"step 'a': max_attempts must be an int"),
        ([("a", double, "fast")], r"step 'a': options must be a mapping"),
        ("double", r"must give a list of \(name, function\) pairs"),
        (None, r"must give a list"),
    ],
)
def test_seed_form_errors_name_workflow_and_step(steps: Any, pattern: str) -> None:
    broken = _seed(steps)
    with pytest.raises(pgflow.DefinitionError, match=pattern):
        resolve_workflow(broken)
    with pytest.raises(pgflow.DefinitionError, match=pattern):  # at first use, every use
        pgflow.execute(broken, 1)


def test_seed_callable_that_raises() -> None:
    def explode() -> list[Any]:
        raise RuntimeError("boom")

    with pytest.raises(pgflow.DefinitionError, match=r"__workflow_steps__\(\) raised RuntimeError"):
        resolve_workflow(_seed(staticmethod(explode)))


def test_flow_errors_at_definition_time() -> None:
    flow = pgflow.Flow("bad")

    @flow.step
    def taken(state: int) -> int:
        return state

    with pytest.raises(
        pgflow.DefinitionError, match=r"workflow 'bad': duplicate step name 'taken'"
    ):
        flow.add_step("taken", double)
    with pytest.raises(pgflow.DefinitionError, match=r"'bad' step .*unknown option\(s\) retries"):
        flow.step(retries=3)
    with pytest.raises(pgflow.DefinitionError, match=r"'bad' step 'x': max_attempts must be >= 1"):
        flow.step(name="x", max_attempts=0)
    with pytest.raises(pgflow.DefinitionError, match=r"timeout must be > 0"):
        flow.step(timeout=-2.0)
    with pytest.raises(pgflow.DefinitionError, match=r"timeout must be a number"):
        flow.step(timeout=True)
    with pytest.raises(pgflow.DefinitionError, match=r"'bad' step 'y': step is not callable"):
        flow.add_step("y", "not a function")  # type: ignore[arg-type]
    with pytest.raises(pgflow.DefinitionError, match=r"@flow.step\(name='z'\)"):
        flow.step("z")  # type: ignore[call-overload]
    with pytest.raises(pgflow.DefinitionError, match="non-empty string"):
        pgflow.Flow("")


def test_empty_flow_fails_at_use() -> None:
    flow = pgflow.Flow("empty")
    with pytest.raises(pgflow.DefinitionError, match="workflow 'empty' has no steps"):
        pgflow.execute(flow, 1)


def test_workflow_record_validates() -> None:
    with pytest.raises(pgflow.DefinitionError, match="'w': duplicate step name 'a'"):
        Workflow("w", (Step("a", double), Step("a", double)))
    with pytest.raises(pgflow.DefinitionError, match="'w' step 'a': max_attempts must be >= 1"):
        Workflow("w", (Step("a", double, max_attempts=0),))
    with pytest.raises(pgflow.DefinitionError, match="has no steps"):
        Workflow("w", ())


def test_async_callable_objects_are_detected() -> None:
    class AsyncCallable:
        async def __call__(self, state: int) -> int:
            return state + 10

    workflow = Workflow("objects", (Step("call", AsyncCallable()),))
    assert workflow.steps[0].is_async
    assert pgflow.execute(workflow, 1) == 11


def test_a_workflows_fingerprint_is_the_sha256_of_its_canonical_definition() -> None:
    import hashlib

    from pgflow.definition import definition_fingerprint

    flow = pgflow.Flow("fingerprinted")
    flow.add_step("a", lambda state: state)
    flow.add_step("b", lambda state: state, max_attempts=2)
    workflow: Workflow = flow.workflow

    assert workflow.definition == {"kind": "chain", "steps": ["a", "b"]}
    canonical = b'{"kind":"chain","steps":["a","b"]}'
    assert workflow.fingerprint == hashlib.sha256(canonical).hexdigest()
    assert definition_fingerprint({"steps": ["a", "b"], "kind": "chain"}) == workflow.fingerprint
