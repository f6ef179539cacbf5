"""The abandoned-thread count an instance reports for `pgflow status`."""

from __future__ import annotations

from pgflow.backend import Backend

from .support import register


def test_set_abandoned_is_listed_with_the_instance(backend: Backend) -> None:
    register(backend, "node-a")
    register(backend, "node-b")
    assert [i.abandoned for i in backend.list_instances()] == [0, 0]

    backend.set_abandoned("node-a", 3)

    counts = {i.instance_id: i.abandoned for i in backend.list_instances()}
    assert counts == {"node-a": 3, "node-b": 0}
    backend.set_abandoned("node-a", 0)
    assert {i.instance_id: i.abandoned for i in backend.list_instances()}["node-a"] == 0


def test_set_abandoned_of_an_unknown_instance_changes_nothing(backend: Backend) -> None:
    register(backend, "node-a")
    backend.set_abandoned("ghost", 5)
    assert [(i.instance_id, i.abandoned) for i in backend.list_instances()] == [("node-a", 0)]
