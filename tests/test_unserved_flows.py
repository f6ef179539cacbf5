"""The leader fails distributed runs whose definition no online instance has served for the
grace period, naming the flow, the run's fingerprint and the difference from what is served.

Mostly on the memory backend with a fake clock: the sweep reads the database's time, so
moving the clock past the grace period is how time passes here.
"""

from __future__ import annotations

import gc
import logging
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from click.testing import CliRunner

import pgflow
from pgflow import Pgflow, cli
from pgflow.clock import SYSTEM_CLOCK, FakeClock
from pgflow.definition import Workflow
from pgflow.errors import DefinitionError
from pgflow.graph.difference import MAX_CHANGES, definition_changes, describe_difference
from pgflow.graph.registry import FlowRegistry, flows
from pgflow.records import InstanceInfo, RunState, StepStatus
from pgflow.runtime.leader import Leader
from pgflow.runtime.unserved_flows import UNSERVED_FLOW, UnservedFlowSweep, short
from pgflow_backends.memory import InMemoryBackend
from tests.waiting import wait_or_fail

GRACE = 3600.0


def _name(prefix: str) -> str:
    """A flow name unique to the test: the flow registry is process-wide."""
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def _v1(name: str, queue: str = "default") -> Workflow:
    """fetch -> summarize."""
    flow = pgflow.Flow(name, queue=queue, version=1)

    @flow.step
    def fetch(input: Any) -> list[int]:
        return [1, 2]

    @flow.step(depends_on=["fetch"])
    def summarize(fetch: list[int]) -> int:
        return len(fetch)

    return flow.workflow


def _v2(name: str, queue: str = "default") -> Workflow:
    """v1 plus a map `score` over fetch, which summarize now also depends on."""
    flow = pgflow.Flow(name, queue=queue, version=2)

    @flow.step
    def fetch(input: Any) -> list[int]:
        return [1, 2]

    @flow.map(over="fetch")
    def score(item: int) -> int:
        return item

    @flow.step(depends_on=["fetch", "score"])
    def summarize(fetch: list[int], score: list[int]) -> int:
        return len(fetch)

    return flow.workflow


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def backend(clock: FakeClock) -> Iterator[InMemoryBackend]:
    backend = InMemoryBackend(clock=clock)
    yield backend
    backend.close()


def _serve(backend: InMemoryBackend, instance_id: str, *workflows: Workflow) -> None:
    backend.register_instance(
        InstanceInfo(
            instance_id=instance_id,
            incarnation=instance_id,
            flows=tuple((wf.name, wf.fingerprint) for wf in workflows),  # type: ignore[arg-type]
        )
    )


def _start(backend: InMemoryBackend, workflow: Workflow, workflow_id: str) -> None:
    backend.start_flow_run(
        workflow.plan, workflow_id=workflow_id, input={"secret": "s3cr3t"}, max_attempts=3
    )


def _state(backend: InMemoryBackend, workflow_id: str) -> RunState:
    run = backend.get_run(workflow_id)
    assert run is not None
    return run.state


def _leading() -> bool:
    return True


# --- the definition diff (pure) -------------------------------------------------------------


def test_diff_names_added_steps_and_changed_dependencies() -> None:
    name = _name("diff")
    old, new = _v1(name), _v2(name)
    assert definition_changes(old.definition, new.definition) == [
        "now version 2 (was version 1)",
        "step 'score' (a map, depends on ['fetch']) added",
        "step 'summarize' now depends on ['fetch', 'score'] (was ['fetch'])",
    ]
    assert definition_changes(new.definition, old.definition) == [
        "now version 1 (was version 2)",
        "step 'score' removed",
        "step 'summarize' now depends on ['fetch'] (was ['fetch', 'score'])",
    ]


def test_diff_of_a_map_source_and_of_the_run_input() -> None:
    stored = {
        "kind": "graph",
        "steps": [
            {"name": "a", "kind": "step", "depends_on": [], "over": None, "input": False},
            {"name": "b", "kind": "step", "depends_on": [], "over": None, "input": False},
            {"name": "m", "kind": "map", "depends_on": ["a"], "over": "a", "input": False},
        ],
    }
    current = {
        "kind": "graph",
        "steps": [
            {"name": "a", "kind": "step", "depends_on": [], "over": None, "input": False},
            {"name": "b", "kind": "step", "depends_on": [], "over": None, "input": False},
            {"name": "m", "kind": "map", "depends_on": ["b"], "over": "b", "input": True},
        ],
    }
    assert definition_changes(stored, current) == [
        "step 'm' now depends on ['b'] (was ['a'])",
        "step 'm' now maps over 'b' (was 'a')",
        "step 'm' now takes the run's input",
    ]


def test_diff_of_a_chain_that_became_a_graph() -> None:
    chain = {"kind": "chain", "steps": ["fetch", "summarize"]}
    graph = {
        "kind": "graph",
        "steps": [
            {"name": "fetch", "kind": "step", "depends_on": []},
            {"name": "summarize", "kind": "step", "depends_on": []},
        ],
    }
    assert describe_difference(chain, graph) == (
        "now a graph (was a chain); step 'summarize' now depends on [] (was ['fetch'])"
    )


def test_diff_of_an_unreadable_or_equal_definition() -> None:
    graph = {"kind": "graph", "steps": [{"name": "a", "kind": "step", "depends_on": []}]}
    assert "not readable" in describe_difference(None, graph)
    assert describe_difference(graph, graph) == "no difference in steps or dependencies"


def test_diff_spells_out_a_bounded_number_of_changes() -> None:
    many = {"kind": "chain", "steps": [f"s{i}" for i in range(MAX_CHANGES + 5)]}
    other = {"kind": "chain", "steps": ["t"]}
    text = describe_difference(many, other)
    assert text.startswith("step 't' (step) added; step 's0' removed")
    assert text.endswith("and 6 more change(s)")  # 't' added, MAX_CHANGES + 5 removed
    assert text.count("removed") == MAX_CHANGES - 1


# --- the sweep on the memory backend --------------------------------------------------------


def test_a_run_unserved_past_the_grace_fails_naming_flow_fingerprint_and_difference(
    backend: InMemoryBackend, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    name = _name("enrich")
    old, new = _v1(name), _v2(name)
    registry = FlowRegistry()
    registry.add_workflow(new)
    _serve(backend, "node-a", new)
    _start(backend, old, "old-run")
    _start(backend, new, "new-run")
    sweep = UnservedFlowSweep(grace=GRACE, registry=registry, extra={"instance_id": "lead"})

    assert sweep.sweep(backend, _leading) == []
    assert sweep.unserved_since == {(name, old.fingerprint): clock.now()}
    clock.advance(GRACE)  # exactly the grace period: not yet
    assert sweep.sweep(backend, _leading) == []
    assert _state(backend, "old-run") is RunState.RUNNING

    clock.advance(1)
    with caplog.at_level(logging.WARNING, logger="pgflow.runtime"):
        assert sweep.sweep(backend, _leading) == ["old-run"]

    run = backend.get_run("old-run")
    assert run is not None and run.state is RunState.FAILED and run.error is not None
    assert (run.error["kind"], run.error["step"], run.error["traceback"]) == (
        UNSERVED_FLOW,
        None,
        "",
    )
    message = run.error["message"]
    assert f"Flow {name!r}" in message
    assert f"definition {short(old.fingerprint)} for 3601 s" in message
    assert f"Definition {short(new.fingerprint)} (served now) differs from it" in message
    assert "step 'score' (a map, depends on ['fetch']) added" in message
    assert f"serve definition(s) {short(new.fingerprint)} (by node-a)" in message
    assert all(s.state is StepStatus.CANCELLED for s in backend.get_step_states("old-run").values())
    assert _state(backend, "new-run") is RunState.RUNNING  # served: untouched
    [record] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert (record.workflow, record.workflow_id) == (name, "old-run")  # type: ignore[attr-defined]
    assert name in record.getMessage() and "old-run" in record.getMessage()
    assert "s3cr3t" not in record.getMessage()  # no payloads at WARNING
    assert sweep.sweep(backend, _leading) == []  # nothing left running of it


def test_a_definition_served_again_before_the_grace_is_not_failed(
    backend: InMemoryBackend, clock: FakeClock
) -> None:
    name = _name("back")
    old, new = _v1(name), _v2(name)
    _serve(backend, "node-new", new)
    _start(backend, old, "old-run")
    sweep = UnservedFlowSweep(grace=GRACE, registry=FlowRegistry())
    sweep.sweep(backend, _leading)
    clock.advance(GRACE / 2)
    _serve(backend, "node-old", old)  # an instance of the old code comes back
    assert sweep.sweep(backend, _leading) == []
    assert sweep.unserved_since == {}

    clock.advance(GRACE)
    backend.mark_offline("node-old")  # ... and goes away again: the clock starts over
    assert sweep.sweep(backend, _leading) == []
    assert sweep.unserved_since == {(name, old.fingerprint): clock.now()}
    clock.advance(GRACE / 2)
    assert sweep.sweep(backend, _leading) == []
    assert _state(backend, "old-run") is RunState.RUNNING
    clock.advance(GRACE)
    assert sweep.sweep(backend, _leading) == ["old-run"]


def test_an_offline_instance_serves_nothing(backend: InMemoryBackend, clock: FakeClock) -> None:
    name = _name("offline")
    old = _v1(name)
    _serve(backend, "gone", old)
    backend.mark_offline("gone")
    _start(backend, old, "run")
    sweep = UnservedFlowSweep(grace=GRACE, registry=FlowRegistry())
    sweep.sweep(backend, _leading)
    clock.advance(GRACE + 1)
    assert sweep.sweep(backend, _leading) == ["run"]
    run = backend.get_run("run")
    assert run is not None and run.error is not None
    assert "No online instance serves any definition of this flow" in run.error["message"]


def test_without_a_known_definition_the_message_names_the_served_fingerprints(
    backend: InMemoryBackend, clock: FakeClock
) -> None:
    name = _name("unknown")
    old, new = _v1(name), _v2(name)
    _serve(backend, "node-b", new)
    _serve(backend, "node-a", new)
    _start(backend, old, "run")
    sweep = UnservedFlowSweep(grace=GRACE, registry=FlowRegistry())  # knows no definition
    sweep.sweep(backend, _leading)
    clock.advance(GRACE + 1)
    sweep.sweep(backend, _leading)
    run = backend.get_run("run")
    assert run is not None and run.error is not None
    message = run.error["message"]
    assert "differs" not in message
    assert f"serve definition(s) {short(new.fingerprint)} (by node-a, node-b)" in message


def test_every_run_of_the_definition_is_failed_page_by_page(
    backend: InMemoryBackend, clock: FakeClock
) -> None:
    name = _name("paged")
    old = _v1(name)
    ids = [f"run-{i}" for i in range(5)]
    for workflow_id in ids:
        _start(backend, old, workflow_id)
    assert backend.running_flow_runs(name, old.fingerprint, 2) == ids[:2]
    sweep = UnservedFlowSweep(grace=GRACE, registry=FlowRegistry(), page=2)
    sweep.sweep(backend, _leading)
    clock.advance(GRACE + 1)
    assert sorted(sweep.sweep(backend, _leading)) == ids
    assert backend.running_flow_runs(name, old.fingerprint, 100) == []


def test_a_lost_lease_stops_the_failing(backend: InMemoryBackend, clock: FakeClock) -> None:
    name = _name("lease")
    old = _v1(name)
    for i in range(3):
        _start(backend, old, f"run-{i}")
    sweep = UnservedFlowSweep(grace=GRACE, registry=FlowRegistry())
    sweep.sweep(backend, _leading)
    clock.advance(GRACE + 1)
    answers = iter([True, True, False])
    assert sweep.sweep(backend, lambda: next(answers)) == ["run-0"]  # checked before each
    assert [_state(backend, f"run-{i}") for i in range(3)] == [
        RunState.FAILED,
        RunState.RUNNING,
        RunState.RUNNING,
    ]


def test_a_new_leader_starts_its_own_clock(backend: InMemoryBackend, clock: FakeClock) -> None:
    name = _name("handover")
    old = _v1(name)
    _start(backend, old, "run")
    first = UnservedFlowSweep(grace=GRACE, registry=FlowRegistry())
    first.sweep(backend, _leading)
    clock.advance(GRACE + 1)  # the first leader died just before failing the run

    second = UnservedFlowSweep(grace=GRACE, registry=FlowRegistry())
    assert second.sweep(backend, _leading) == []
    clock.advance(GRACE)
    assert second.sweep(backend, _leading) == []
    clock.advance(1)
    assert second.sweep(backend, _leading) == ["run"]


def test_an_error_is_logged_not_raised(
    backend: InMemoryBackend, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken() -> list[tuple[str, str, int]]:
        raise ConnectionError("database went away")

    monkeypatch.setattr(backend, "running_flows", broken)
    sweep = UnservedFlowSweep(grace=GRACE, extra={"instance_id": "lead"})
    with caplog.at_level(logging.WARNING, logger="pgflow.runtime"):
        assert sweep.run(backend, _leading) == []
    [record] = caplog.records
    assert "database went away" in record.getMessage()
    assert (record.instance_id, record.error) == ("lead", "ConnectionError")  # type: ignore[attr-defined]


def test_a_failing_definition_does_not_stop_the_others(
    backend: InMemoryBackend, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = _v1(_name("a_first")), _v1(_name("b_second"))
    _start(backend, first, "first-run")
    _start(backend, second, "second-run")
    sweep = UnservedFlowSweep(grace=GRACE, registry=FlowRegistry())
    sweep.sweep(backend, _leading)
    clock.advance(GRACE + 1)
    real = backend.running_flow_runs

    def flaky(flow: str, fingerprint: str, limit: int = 100) -> list[str]:
        if flow == first.name:
            raise ConnectionError("lost")
        return real(flow, fingerprint, limit)

    monkeypatch.setattr(backend, "running_flow_runs", flaky)
    assert sweep.sweep(backend, _leading) == ["second-run"]


# --- the leader and the app -----------------------------------------------------------------


def _leader(backend: InMemoryBackend, instance_id: str, now: list[float]) -> Leader:
    return Leader(
        backend=backend,
        instance_id=instance_id,
        clock=SYSTEM_CLOCK,
        interval=0.5,
        stale_timeout=60.0,
        rescue_interval=5.0,
        prune_after=None,
        prune_interval=60.0,
        cron=None,
        on_staged=lambda queues: None,
        unserved=UnservedFlowSweep(grace=GRACE, registry=FlowRegistry()),
        unserved_interval=60.0,
        monotonic=lambda: now[0],
    )


def test_the_leader_sweeps_every_interval_and_forgets_when_it_regains_the_lease(
    backend: InMemoryBackend, clock: FakeClock
) -> None:
    name = _name("leader")
    _start(backend, _v1(name), "run")
    now = [1000.0]
    leader = _leader(backend, "lead", now)
    assert leader.unserved is not None
    leader.tick()
    assert leader.is_leader and list(leader.unserved.unserved_since) == [
        (name, _v1(name).fingerprint)
    ]
    clock.advance(GRACE + 1)
    leader.tick()  # the interval has not passed on the leader's own clock: no sweep yet
    assert _state(backend, "run") is RunState.RUNNING

    leader._lost()  # e.g. a database error in another duty
    now[0] += 60.0
    leader.tick()  # leader again: it watched nothing meanwhile, so it starts over
    assert _state(backend, "run") is RunState.RUNNING
    now[0] += 60.0
    clock.advance(GRACE + 1)
    leader.tick()
    assert _state(backend, "run") is RunState.FAILED


def test_a_backend_without_flow_runs_has_no_sweep() -> None:
    class JobsOnly:
        """Not a FlowStore: the leader has nothing to sweep."""

    leader = Leader(
        backend=JobsOnly(),  # type: ignore[arg-type]
        instance_id="x",
        clock=SYSTEM_CLOCK,
        interval=0.5,
        stale_timeout=60.0,
        rescue_interval=5.0,
        prune_after=None,
        prune_interval=60.0,
        cron=None,
        on_staged=lambda queues: None,
        unserved=UnservedFlowSweep(grace=GRACE),
    )
    assert leader.unserved is None


def test_an_app_fails_a_run_no_instance_serves() -> None:
    """End to end: the app's own leader thread, a tiny grace period on the real clock."""
    backend = InMemoryBackend()
    name = _name("gone")
    workflow = _v1(name, queue="nobody")  # no producer would touch its tasks anyway
    backend.start_flow_run(workflow.plan, workflow_id="run", input={}, max_attempts=1)
    del workflow  # the code that started it is gone: this process no longer knows it
    gc.collect()
    assert all(flow != name for flow, _ in flows.served())
    app = Pgflow(
        backend,
        instance_id="sweeper",
        queues={"default": 2},
        stage_interval=0.02,
        unserved_grace=0.001,
        unserved_interval=0.02,
    )
    app.start()
    try:
        wait_or_fail(lambda: _state(backend, "run") is RunState.FAILED, "the run to be failed")
        run = backend.get_run("run")
        assert run is not None and run.error is not None
        assert run.error["kind"] == UNSERVED_FLOW and name in run.error["message"]
    finally:
        app.close()
        backend.close()


def test_app_options() -> None:
    assert Pgflow("memory://").unserved_grace == 3600.0
    assert Pgflow("memory://", unserved_grace=None).unserved_grace is None
    with pytest.raises(DefinitionError, match="unserved_grace"):
        Pgflow("memory://", unserved_grace=0)
    with pytest.raises(DefinitionError, match="unserved_interval"):
        Pgflow("memory://", unserved_interval=-1)


def test_a_grace_of_none_starts_no_sweep() -> None:
    app = Pgflow("memory://", instance_id="no-sweep", unserved_grace=None)
    app.start()
    try:
        assert app._threads is not None and app._threads[2].unserved is None
    finally:
        app.close()


def test_worker_cli_passes_the_unserved_options(monkeypatch: pytest.MonkeyPatch) -> None:
    import pgflow.app

    created: list[dict[str, Any]] = []

    class Recording:
        def __init__(self, url: str, **options: Any) -> None:
            created.append(options)

        def run(self) -> None:
            pass

    monkeypatch.setattr(pgflow.app, "Pgflow", Recording)
    runner = CliRunner()
    base = ["worker", "--url", "memory://"]
    assert runner.invoke(cli.cli, base).exit_code == 0
    assert created[-1]["unserved_grace"] == 3600.0
    assert created[-1]["unserved_interval"] == 60.0
    result = runner.invoke(cli.cli, [*base, "--unserved-grace", "none", "--unserved-interval", "5"])
    assert result.exit_code == 0, result.output
    assert (created[-1]["unserved_grace"], created[-1]["unserved_interval"]) == (None, 5.0)
    assert runner.invoke(cli.cli, [*base, "--unserved-grace", "90"]).exit_code == 0
    assert created[-1]["unserved_grace"] == 90.0
    bad = runner.invoke(cli.cli, [*base, "--unserved-grace", "0"])
    assert bad.exit_code == 2 and "--unserved-grace" in bad.output
