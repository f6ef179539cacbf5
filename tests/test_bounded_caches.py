"""Process-wide caches stay bounded and close what they drop: executors opened per URL,
resolved seed-form workflows, and the in-process hubs of SQLite files."""

from __future__ import annotations

import gc
import shutil
from pathlib import Path
from typing import Any

import pytest

import pgflow
from pgflow import definition, executor
from pgflow.errors import BackendError
from pgflow_backends import sqlite
from pgflow_backends.sqlite import SQLiteBackend


def _hub_keys(paths: list[Path]) -> set[str]:
    wanted = {str(path.resolve()) for path in paths}
    return wanted & set(sqlite._hubs)


def test_closing_sqlite_backends_leaves_no_hub_behind(tmp_path: Path) -> None:
    paths = [tmp_path / f"db-{n}.db" for n in range(200)]
    for path in paths:
        SQLiteBackend(f"sqlite:///{path}").close()
    assert _hub_keys(paths) == set()


def test_a_hub_lives_while_a_backend_on_its_file_is_open(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    first = SQLiteBackend(f"sqlite:///{path}")
    second = SQLiteBackend(f"sqlite:///{path}")
    listener = second.listener()
    first.close()
    assert _hub_keys([path]) == {str(path.resolve())}
    third = SQLiteBackend(f"sqlite:///{path}")  # still the hub `second` listens on
    third._hub.announce({"default"})
    assert listener.wait(5.0) == {"default"}
    listener.close()
    second.close()
    third.close()
    third.close()  # closing twice releases once
    assert _hub_keys([path]) == set()


def test_a_backend_collected_unclosed_releases_its_hub(tmp_path: Path) -> None:
    path = tmp_path / "dropped.db"
    backend: Any = SQLiteBackend(f"sqlite:///{path}")
    assert _hub_keys([path])
    del backend
    gc.collect()
    assert _hub_keys([path]) == set()


@pytest.fixture
def migrated_copies(tmp_path: Path) -> list[str]:
    """100 SQLite files with pgflow's schema (migrated once, then copied)."""
    template = tmp_path / "template.db"
    store = SQLiteBackend(f"sqlite:///{template}")
    store.migrate()
    store.close()
    urls = []
    for n in range(100):
        copy = tmp_path / f"runs-{n}.db"
        shutil.copyfile(template, copy)
        urls.append(f"sqlite:///{copy}")
    return urls


def _double() -> pgflow.Flow:
    flow = pgflow.Flow("double")

    @flow.step
    def twice(value: int) -> int:
        return value * 2

    return flow


def _open_store(url: str) -> Any:
    return executor._EXECUTORS._entries[url].backend


def test_executors_per_url_are_bounded_and_evicted_ones_closed(
    migrated_copies: list[str],
) -> None:
    executor.close_all()
    flow = _double()
    stores = []
    for n, url in enumerate(migrated_copies):
        assert pgflow.execute(flow, n, backend=url, timeout=None, workflow_id=f"w{n}") == 2 * n
        stores.append(_open_store(url))
    assert len(executor._EXECUTORS) == executor.MAX_CACHED_EXECUTORS
    kept = len(stores) - executor.MAX_CACHED_EXECUTORS
    for store in stores[:kept]:
        with pytest.raises(BackendError, match="closed"):
            store.get_run("w0")
    for n, store in enumerate(stores[kept:], start=kept):
        assert store.get_run(f"w{n}") is not None
    executor.close_all()
    assert len(executor._EXECUTORS) == 0
    with pytest.raises(BackendError, match="closed"):
        stores[-1].get_run("w0")
    # A closed URL opens again on its next use, and finds its runs.
    assert pgflow.execute(flow, 99, backend=migrated_copies[-1], workflow_id="w99") == 198
    executor.close_all()


def test_an_evicted_executor_is_closed_only_after_its_running_call(
    migrated_copies: list[str],
) -> None:
    executor.close_all()
    inner = _double()
    outer = pgflow.Flow("evicts-its-own-executor")
    first, others = migrated_copies[0], migrated_copies[1 : 2 + executor.MAX_CACHED_EXECUTORS]
    seen: list[Any] = []

    @outer.step
    def crowd_out(value: int) -> int:
        seen.append(_open_store(first))
        for url in others:  # evicts `first` while this run still records into it
            pgflow.execute(inner, 1, backend=url, timeout=None)
        return value

    @outer.step
    def last(value: int) -> int:
        return value + 1

    assert pgflow.execute(outer, 1, backend=first, timeout=None, workflow_id="busy") == 2
    assert first not in executor._EXECUTORS._entries
    with pytest.raises(BackendError, match="closed"):
        seen[0].get_run("busy")  # closed once its run had finished
    assert pgflow.execute(outer, 1, backend=first, workflow_id="busy") == 2  # recorded: done
    executor.close_all()


class _Unweakrefable:
    """A seed-form definition object that cannot be weakly referenced."""

    __slots__ = ("step_name",)

    def __init__(self, step_name: str) -> None:
        self.step_name = step_name

    def __workflow_steps__(self) -> list[tuple[str, Any]]:
        return [(self.step_name, lambda value: value)]


class _AllEqual:
    """Weakly referenceable, but every instance compares equal to every other."""

    def __init__(self, step_name: str) -> None:
        self.step_name = step_name

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _AllEqual)

    def __hash__(self) -> int:
        return 1

    def __workflow_steps__(self) -> list[tuple[str, Any]]:
        return [(self.step_name, lambda value: value)]


def test_a_cached_seed_workflow_is_never_returned_for_another_object() -> None:
    first = _Unweakrefable("a")
    assert pgflow.execute(first, 1, timeout=None) == 1
    assert definition.resolve_workflow(first).step_names == ("a",)
    second = _Unweakrefable("b")
    assert definition.resolve_workflow(second).step_names == ("b",)
    assert definition.resolve_workflow(first).step_names == ("a",)

    equal_a, equal_b = _AllEqual("x"), _AllEqual("y")
    assert definition.resolve_workflow(equal_a).step_names == ("x",)
    assert definition.resolve_workflow(equal_b).step_names == ("y",)


def test_unweakrefable_seed_objects_are_cached_up_to_a_bound() -> None:
    for n in range(1000):
        assert definition.resolve_workflow(_Unweakrefable(f"s{n}")).step_names == (f"s{n}",)
    assert len(definition._strong_cache) <= definition.STRONG_CACHE_SIZE


def test_a_collected_seed_object_frees_its_entry() -> None:
    seed = _AllEqual("gone")
    definition.resolve_workflow(seed)
    key = id(seed)
    assert key in definition._seed_cache
    del seed
    gc.collect()
    assert key not in definition._seed_cache
