"""Flow runs as graphs across real worker processes on PostgreSQL (issue 10, "Done when").

Each test spawns workers (run_worker.py), bounds every wait and kills its children at
teardown; steps count their executions in the `flow_effects` table (graph_flows.py).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

import tests.distributed.graph_flows_versioned as versioned
from pgflow.app import Pgflow
from pgflow.errors import DefinitionError
from pgflow.records import RunState
from tests.distributed.conftest import ROOT, Cluster, query, wait_until
from tests.distributed.graph_flows import FLOW_EFFECTS_DDL, chain, diamond, scores

pytestmark = [pytest.mark.postgres, pytest.mark.slow, pytest.mark.timeout(150)]

FLOWS = "tests.distributed.graph_flows"
#: Far longer than a test may take: only a restart under the same id can free a lost task.
NEVER_STALE = 3600.0


@pytest.fixture
def app(pg: str) -> Iterator[Pgflow]:
    """An app that only starts runs and reads them (it is never started), as a web process."""
    query(pg, FLOW_EFFECTS_DDL)
    starter = Pgflow(pg, instance_id="starter")
    try:
        yield starter
    finally:
        starter.close()


def count(url: str, sql: str, params: Any = None) -> int:
    return int(query(url, sql, params)[0][0])


def run_state(url: str, run: str) -> str | None:
    rows = query(url, "SELECT state FROM pgflow_runs WHERE workflow_id = %s", (run,))
    return str(rows[0][0]) if rows else None


def test_sigkill_mid_map_rescues_only_the_lost_elements(cluster: Cluster, app: Pgflow) -> None:
    url = cluster.url
    run = "map-kill"
    cluster.spawn("a", queues={"default": 4}, imports=[FLOWS])
    cluster.spawn("b", queues={"default": 2}, imports=[FLOWS])
    cluster.wait_online("a", "b")
    handle = app.start_run(scores, {"run": run, "count": 40, "seconds": 1.0}, workflow_id=run)

    def midway() -> bool:
        done = count(url, "SELECT count(*) FROM pgflow_task_outputs WHERE workflow_id = %s", (run,))
        on_a = count(
            url,
            "SELECT count(*) FROM pgflow_jobs WHERE workflow_id = %s AND step = 'score' "
            "AND state = 'executing' AND reserved_by = 'a'",
            (run,),
        )
        return done >= 6 and on_a >= 2

    wait_until(midway, 60, "some elements completed and some executing on a")
    cluster.signal("a", signal.SIGKILL)
    cluster.procs["a"].wait(10)
    completed_before = {
        row[0]
        for row in query(
            url,
            "SELECT task_index FROM pgflow_task_outputs WHERE workflow_id = %s AND step = 'score'",
            (run,),
        )
    }
    lost = query(
        url,
        "SELECT id, task_index FROM pgflow_jobs WHERE workflow_id = %s AND step = 'score' "
        "AND state = 'executing' AND reserved_by = 'a'",
        (run,),
    )
    assert lost, "a held no element when it was killed"

    assert handle.result(timeout=60.0) == {"total": sum(2 * n for n in range(40))}

    assert (
        count(
            url,
            "SELECT count(*) FROM pgflow_task_outputs WHERE workflow_id = %s AND step = 'score'",
            (run,),
        )
        == 40
    )
    started = dict(
        query(
            url,
            "SELECT element, count(*) FROM flow_effects "
            "WHERE run = %s AND step = 'score' AND event = 'started' GROUP BY element",
            (run,),
        )
    )
    assert sorted(started) == list(range(40))
    for element in completed_before:  # a completed element never runs again
        assert started[element] == 1, (element, started[element])
    for job_id, element in lost:  # a's lost elements ran again elsewhere, once
        assert started[element] == 2, (element, started[element])
        [(state, attempt, reserved_by)] = query(
            url, "SELECT state, attempt, reserved_by FROM pgflow_jobs WHERE id = %s", (job_id,)
        )
        assert (state, attempt, reserved_by) == ("completed", 2, "b")
    states = query(url, "SELECT DISTINCT state FROM pgflow_jobs WHERE workflow_id = %s", (run,))
    assert states == [("completed",)]
    record = app.get_run(run)
    assert record is not None and record.state is RunState.COMPLETED
    step = record.steps["score"]
    assert (step.state, step.tasks_total, step.tasks_done) == ("completed", 40, 40)
    assert cluster.procs["b"].poll() is None


RACES = 30


def test_two_processes_completing_the_last_dependencies_together_run_the_join_once(
    cluster: Cluster, app: Pgflow
) -> None:
    """left and right wait for each other (one slot per process: they run on two processes)
    and return at the same moment; whichever completion settles last makes bottom ready."""
    url = cluster.url
    cluster.spawn("p", queues={"default": 1}, imports=[FLOWS])
    cluster.spawn("q", queues={"default": 1}, imports=[FLOWS])
    cluster.wait_online("p", "q")
    runs = [f"diamond-{n}" for n in range(RACES)]
    for run in runs:
        handle = app.start_run(diamond, {"run": run}, workflow_id=run)
        assert handle.result(timeout=40.0) == {"bottom": "left+right"}

    arrivals = query(
        url,
        "SELECT run, array_agg(instance_id ORDER BY instance_id) FROM flow_effects "
        "WHERE event = 'arrived' GROUP BY run",
    )
    assert sorted(arrivals) == sorted((run, ["p", "q"]) for run in runs)
    joined = dict(
        query(url, "SELECT run, count(*) FROM flow_effects WHERE step = 'bottom' GROUP BY run")
    )
    assert joined == dict.fromkeys(runs, 1)
    jobs = dict(
        query(
            url,
            "SELECT workflow_id, count(*) FROM pgflow_jobs WHERE step = 'bottom' "
            "GROUP BY workflow_id",
        )
    )
    assert jobs == dict.fromkeys(runs, 1)
    for run in runs:
        record = app.get_run(run)
        assert record is not None and record.state is RunState.COMPLETED
        bottom = record.steps["bottom"]
        assert (bottom.state, bottom.tasks_done, bottom.attempts) == ("completed", 1, 1)


def start_runs(url: str, target: str, runs: list[str]) -> None:
    """Start runs from a child process that imported `target` (module:flow) alone."""
    subprocess.run(
        [sys.executable, str(ROOT / "tests/distributed/run_start.py"), url, target, *runs],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=True,
        timeout=60,
        capture_output=True,
    )


#: Short, so that the old workers get the snoozed tasks within seconds; long enough to see
#: the snoozed rows.
SNOOZE = 3.0


def test_rolling_deploy_new_workers_snooze_old_runs_until_old_workers_serve_them(
    cluster: Cluster, app: Pgflow, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = cluster.url
    monkeypatch.setenv("PGFLOW_TEST_UNKNOWN_SNOOZE", str(SNOOZE))
    cluster.spawn("new", imports=["tests.distributed.graph_flows_v2"])
    cluster.wait_online("new")
    old_runs = [f"old-{n}" for n in range(3)]
    new_runs = [f"new-{n}" for n in range(3)]
    start_runs(url, "tests.distributed.graph_flows_v1:deploy", old_runs)
    start_runs(url, "tests.distributed.graph_flows_v2:deploy", new_runs)
    fingerprints = dict(
        query(
            url, "SELECT workflow_id, fingerprint FROM pgflow_runs WHERE workflow = 'deploy_flow'"
        )
    )
    assert (
        len({fingerprints[run] for run in old_runs} | {fingerprints[run] for run in new_runs}) == 2
    )

    wait_until(
        lambda: all(run_state(url, run) == "completed" for run in new_runs),
        40,
        "the runs of v2 to complete on the new worker",
    )

    def snoozed() -> bool:
        rows = query(
            url,
            "SELECT state, attempt FROM pgflow_jobs WHERE workflow_id LIKE 'old-%%'",
        )
        return len(rows) == len(old_runs) and all(row == ("scheduled", 0) for row in rows)

    wait_until(snoozed, 30, "the new worker to snooze each task of v1 without an attempt")
    for run in old_runs:
        assert run_state(url, run) == "running"
        [(job_id, errors)] = query(
            url, "SELECT id, errors FROM pgflow_jobs WHERE workflow_id = %s", (run,)
        )
        assert errors == []
        assert f"job {job_id}: flow 'deploy_flow' with definition" in cluster.log_of("new")
    assert count(url, "SELECT count(*) FROM flow_effects WHERE run LIKE 'old-%%'") == 0

    cluster.spawn("old", imports=["tests.distributed.graph_flows_v1"])
    wait_until(
        lambda: all(run_state(url, run) == "completed" for run in old_runs),
        60,
        "the runs of v1 to complete once an old worker is back",
    )
    for run in old_runs:
        record = app.get_run(run)
        assert record is not None and set(record.steps) == {"prepare", "publish"}
        assert record.output == {"publish": "v1"}
    for run in new_runs:
        record = app.get_run(run)
        assert record is not None and set(record.steps) == {"prepare", "publish", "audit"}
        assert record.output == {"publish": "v2", "audit": "audited"}
    ran = query(
        url,
        "SELECT substr(run, 1, 3), step, instance_id, count(*) FROM flow_effects GROUP BY 1, 2, 3",
    )
    assert sorted(ran) == sorted(
        [
            ("old", "prepare", "old", 3),
            ("old", "publish", "old", 3),
            ("new", "prepare", "new", 3),
            ("new", "publish", "new", 3),
            ("new", "audit", "new", 3),
        ]
    )
    # Snoozes gave their attempts back: each task of v1 counted only the attempt that ran it.
    attempts = query(
        url, "SELECT DISTINCT attempt FROM pgflow_jobs WHERE workflow_id LIKE 'old-%%'"
    )
    assert attempts == [(1,)]


def test_one_process_serves_both_versions_of_a_flow(cluster: Cluster, app: Pgflow) -> None:
    """`version=` lets one process define two shapes of one flow name (here, one module
    defines both), so a worker serves the runs of either without snoozing any; the same name
    and version with another shape is refused."""
    url = cluster.url
    cluster.spawn("both", imports=["tests.distributed.graph_flows_versioned"])
    cluster.wait_online("both")
    v1 = app.start_run(versioned.old, {"run": "ver-1"}, workflow_id="ver-1")
    v2 = app.start_run(versioned.new, {"run": "ver-2"}, workflow_id="ver-2")
    assert v1.result(timeout=30.0) == {"end": "v1"}
    assert v2.result(timeout=30.0) == {"end": ["v2"]}
    served = query(url, "SELECT flows FROM pgflow_instances WHERE instance_id = 'both'")[0][0]
    assert [versioned.old.name, versioned.old.workflow.fingerprint] in served
    assert [versioned.new.name, versioned.new.workflow.fingerprint] in served
    assert "is not known in this process" not in cluster.log_of("both")
    assert sorted(query(url, "SELECT run, event FROM flow_effects")) == [
        ("ver-1", "v1"),
        ("ver-2", "v2"),
    ]

    import pgflow

    clash = pgflow.Flow("versioned_flow", version=1)

    @clash.step
    def only(input: dict[str, Any]) -> None:
        return None

    with pytest.raises(DefinitionError, match="distinct version="):
        app.start_run(clash, {"run": "ver-3"}, workflow_id="ver-3")
    assert app.get_run("ver-3") is None


def test_a_worker_importing_two_shapes_of_one_flow_and_version_refuses_to_start(
    cluster: Cluster,
) -> None:
    proc = cluster.spawn(
        "confused",
        imports=["tests.distributed.graph_flows_v1", "tests.distributed.graph_flows_v2"],
    )
    try:
        code = proc.wait(20)
    except subprocess.TimeoutExpired:
        code = None
    assert code not in (0, None), "the worker kept running with both shapes"
    assert "DefinitionError" in cluster.log_of("confused")


def test_a_worker_killed_during_the_last_task_restarts_under_its_id_and_completes_the_run(
    cluster: Cluster, app: Pgflow
) -> None:
    url = cluster.url
    run = "chain-restart"
    cluster.spawn("fixed", stale_timeout=NEVER_STALE, imports=[FLOWS])
    cluster.wait_online("fixed")
    handle = app.start_run(chain, {"run": run}, workflow_id=run)
    wait_until(
        lambda: count(url, "SELECT count(*) FROM flow_effects WHERE step = 'last'") == 1,
        30,
        "the last task to start",
    )
    cluster.signal("fixed", signal.SIGKILL)
    cluster.procs["fixed"].wait(10)
    assert run_state(url, run) == "running"

    cluster.spawn("fixed", stale_timeout=NEVER_STALE, imports=[FLOWS])
    assert handle.result(timeout=60.0) == f"{run} done"
    effects = query(url, "SELECT step, event FROM flow_effects ORDER BY id")
    assert effects == [
        ("first", "ran"),
        ("last", "started"),
        ("last", "started"),
        ("last", "done"),
    ]
    [(attempt, errors)] = query(
        url,
        "SELECT attempt, errors FROM pgflow_jobs WHERE workflow_id = %s AND step = 'last'",
        (run,),
    )
    assert attempt == 2
    [lost] = errors
    assert lost["kind"] == "rescued" and "earlier incarnation" in lost["message"]
