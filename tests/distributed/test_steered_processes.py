"""Steered runs (issue 11) across real worker processes on PostgreSQL: a signal sent while
no worker is alive, a cancel in the middle of a 1,000-element map, a resume that reuses the
completed elements of a map, and a sub-flow whose relay task dies with its worker.

Each test spawns workers (run_worker.py), awaits database states rather than sleeping,
bounds every wait, and kills its children at teardown; steps record what they did in the
`flow_effects` table (steered_flows.py).
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from typing import Any

import pytest

from pgflow.app import Pgflow
from pgflow.errors import DeadlineExceeded, RunCancelled, SignalError, StepFailed
from pgflow.records import RunState
from tests.distributed.conftest import Cluster, query, wait_until
from tests.distributed.graph_flows import FLOW_EFFECTS_DDL
from tests.distributed.steered_flows import (
    FAILING_ELEMENT,
    NAP_SECONDS,
    STEERED_DDL,
    approvals,
    crunching,
    napping,
    nesting,
    overdue,
    resumable,
    shipping,
)

pytestmark = [pytest.mark.postgres, pytest.mark.slow, pytest.mark.timeout(150)]

FLOWS = "tests.distributed.steered_flows"
UNFINISHED = ("available", "scheduled", "executing", "retryable")


@pytest.fixture
def app(pg: str) -> Iterator[Pgflow]:
    """An app that only starts, steers and reads runs (never started), as a web process."""
    query(pg, FLOW_EFFECTS_DDL)
    query(pg, STEERED_DDL)
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


def step_state(url: str, run: str, step: str) -> str | None:
    rows = query(
        url,
        "SELECT state FROM pgflow_step_states WHERE workflow_id = %s AND step = %s",
        (run, step),
    )
    return str(rows[0][0]) if rows else None


def unfinished_jobs(url: str, run: str) -> int:
    return count(
        url,
        "SELECT count(*) FROM pgflow_jobs WHERE workflow_id = %s AND state = ANY(%s)",
        (run, list(UNFINISHED)),
    )


def kill(cluster: Cluster, instance_id: str) -> None:
    cluster.signal(instance_id, signal.SIGKILL)
    cluster.procs[instance_id].wait(10)


# --- a. signals survive the absence of every worker --------------------------------------


def test_a_signal_sent_while_every_worker_is_down_completes_the_run_on_a_fresh_worker(
    cluster: Cluster, app: Pgflow
) -> None:
    url = cluster.url
    run = "signal-while-down"
    cluster.spawn("w1", imports=[FLOWS])
    cluster.wait_online("w1")
    handle = app.start_run(approvals, {"run": run}, workflow_id=run)
    wait_until(lambda: step_state(url, run, "approval") == "started", 30, "the run to wait")
    assert step_state(url, run, "publish") == "pending"
    kill(cluster, "w1")

    payload = {"ok": True, "by": "reviewer", "notes": ["ship it", 3]}
    assert app.signal(run, "approval", payload) is True
    # With no worker alive, the signal is stored, the wait completed and the next task queued.
    assert query(url, "SELECT payload FROM pgflow_signals WHERE workflow_id = %s", (run,)) == [
        (payload,)
    ]
    assert step_state(url, run, "approval") == "completed"
    assert query(
        url, "SELECT state FROM pgflow_jobs WHERE workflow_id = %s AND step = 'publish'", (run,)
    ) == [("available",)]
    assert run_state(url, run) == "running"
    with pytest.raises(SignalError, match="already signalled"):
        app.signal(run, "approval", {"ok": False})

    cluster.spawn("w2", imports=[FLOWS])
    assert handle.result(timeout=60.0) == {"publish": {"published": run, "approval": payload}}
    effects = query(
        url, "SELECT step, instance_id FROM flow_effects WHERE run = %s ORDER BY id", (run,)
    )
    assert effects == [("draft", "w1"), ("publish", "w2")]
    record = app.get_run(run)
    assert record is not None and record.state is RunState.COMPLETED
    wait = record.steps["approval"]
    assert (wait.state, wait.kind, wait.output, wait.tasks_done) == (
        "completed",
        "wait",
        payload,
        1,
    )
    assert query(url, "SELECT DISTINCT state FROM pgflow_jobs WHERE workflow_id = %s", (run,)) == [
        ("completed",)
    ]


def test_a_signal_sent_before_the_wait_is_reached_with_no_worker_alive_is_kept(
    cluster: Cluster, app: Pgflow
) -> None:
    """No worker has ever run: the signal is kept (False) and used when the wait is reached."""
    url = cluster.url
    run = "signal-early"
    handle = app.start_run(approvals, {"run": run}, workflow_id=run)
    assert step_state(url, run, "approval") == "pending"
    payload = {"ok": True, "early": True}
    assert app.signal(run, "approval", payload) is False
    assert step_state(url, run, "approval") == "pending"
    with pytest.raises(SignalError, match=r"already signalled|keeps its first signal"):
        app.signal(run, "approval", {"ok": False})

    cluster.spawn("late", imports=[FLOWS])
    assert handle.result(timeout=60.0) == {"publish": {"published": run, "approval": payload}}
    assert count(url, "SELECT count(*) FROM flow_effects WHERE run = %s", (run,)) == 2


# --- b. a cancel in the middle of a wide map ---------------------------------------------

MAP_WIDTH = 1_000
#: Each element sleeps this long: short, but long enough that some run during the cancel.
ELEMENT_SECONDS = 0.05


def test_b_cancel_in_the_middle_of_a_1000_element_map_stops_everything_and_late_completions_count_nothing(  # noqa: E501
    cluster: Cluster, app: Pgflow
) -> None:
    url = cluster.url
    run = "cancel-map"
    cluster.spawn("a", queues={"default": 5}, imports=[FLOWS])
    cluster.spawn("b", queues={"default": 5}, imports=[FLOWS])
    cluster.wait_online("a", "b")
    handle = app.start_run(
        crunching,
        {"run": run, "count": MAP_WIDTH, "seconds": ELEMENT_SECONDS},
        workflow_id=run,
    )

    def midway() -> bool:
        done = count(url, "SELECT count(*) FROM pgflow_task_outputs WHERE workflow_id = %s", (run,))
        executing = count(
            url,
            "SELECT count(*) FROM pgflow_jobs WHERE workflow_id = %s AND step = 'crunch' "
            "AND state = 'executing'",
            (run,),
        )
        return done >= 100 and executing >= 2

    wait_until(midway, 90, "100 elements completed and some executing")
    cancelled = app.cancel_run(run)
    assert cancelled.state is RunState.CANCELLED
    done_at_cancel = cancelled.steps["crunch"].tasks_done
    outputs_at_cancel = count(
        url,
        "SELECT count(*) FROM pgflow_task_outputs WHERE workflow_id = %s AND step = 'crunch'",
        (run,),
    )
    assert 100 <= done_at_cancel < MAP_WIDTH
    assert outputs_at_cancel == done_at_cancel

    wait_until(lambda: unfinished_jobs(url, run) == 0, 30, "every job of the run to finish")

    record = app.get_run(run)
    assert record is not None and record.state is RunState.CANCELLED
    states = {name: str(step.state) for name, step in record.steps.items()}
    assert states == {"items": "completed", "crunch": "cancelled", "tally": "cancelled"}
    crunch = record.steps["crunch"]
    assert (crunch.tasks_total, crunch.tasks_done) == (MAP_WIDTH, done_at_cancel)
    assert (
        count(
            url,
            "SELECT count(*) FROM pgflow_task_outputs WHERE workflow_id = %s AND step = 'crunch'",
            (run,),
        )
        == outputs_at_cancel
    )
    jobs = dict(
        query(
            url,
            "SELECT state, count(*) FROM pgflow_jobs WHERE workflow_id = %s AND step = 'crunch' "
            "GROUP BY state",
            (run,),
        )
    )
    assert sum(jobs.values()) == MAP_WIDTH
    assert set(jobs) <= {"completed", "cancelled"}, jobs
    # The elements running when the cancel committed were flagged; they finished their work
    # after it (late completions: their jobs end completed or cancelled) and counted nothing.
    [(counted, flagged, late, before_cancel)] = query(
        url,
        "SELECT count(*) FILTER (WHERE j.state = 'completed' AND NOT flagged), "
        "count(*) FILTER (WHERE flagged), "
        "count(*) FILTER (WHERE flagged AND j.state = 'completed'), "
        "count(*) FILTER (WHERE flagged AND j.completed_at < r.finished_at) "
        "FROM (SELECT *, COALESCE((meta ->> 'cancel_requested')::boolean, false) AS flagged "
        "      FROM pgflow_jobs WHERE workflow_id = %s AND step = 'crunch') j "
        "JOIN pgflow_runs r USING (workflow_id)",
        (run,),
    )
    assert counted == done_at_cancel
    assert flagged >= 1, "no element was running when the cancel committed"
    assert before_cancel == 0
    finished_work = count(
        url, "SELECT count(*) FROM flow_effects WHERE run = %s AND event = 'done'", (run,)
    )
    assert finished_work >= done_at_cancel + late
    assert count(url, "SELECT count(*) FROM pgflow_jobs WHERE step = 'tally'") == 0
    with pytest.raises(RunCancelled):
        handle.result(timeout=5.0)
    assert cluster.procs["a"].poll() is None and cluster.procs["b"].poll() is None


def test_cancelling_a_parent_mid_child_map_cancels_the_child_first_and_leaves_no_job(
    cluster: Cluster, app: Pgflow
) -> None:
    """The parent's sweep takes its running child with it in the same transaction (no relay
    for the parent), while two workers keep completing the child's elements."""
    url = cluster.url
    run = "nest-cancel"
    cluster.spawn("a", queues={"default": 5}, imports=[FLOWS])
    cluster.spawn("b", queues={"default": 5}, imports=[FLOWS])
    cluster.wait_online("a", "b")
    handle = app.start_run(
        nesting, {"run": run, "count": 300, "seconds": ELEMENT_SECONDS}, workflow_id=run
    )
    [(child,)] = query(url, "SELECT workflow_id FROM pgflow_runs WHERE parent_id = %s", (run,))

    def midway() -> bool:
        done = count(
            url, "SELECT count(*) FROM pgflow_task_outputs WHERE workflow_id = %s", (child,)
        )
        executing = count(
            url,
            "SELECT count(*) FROM pgflow_jobs WHERE workflow_id = %s AND state = 'executing'",
            (child,),
        )
        return done >= 30 and executing >= 1

    wait_until(midway, 60, "30 elements of the child completed and some executing")
    cancelled = app.cancel_run(run)
    assert cancelled.state is RunState.CANCELLED
    inner = app.get_run(child)  # ended by the parent's transaction, not later
    assert inner is not None and inner.state is RunState.CANCELLED
    assert (inner.parent_id, inner.parent_step) == (run, "inner")
    done_at_cancel = inner.steps["crunch"].tasks_done
    assert 30 <= done_at_cancel < 300

    wait_until(
        lambda: unfinished_jobs(url, run) + unfinished_jobs(url, child) == 0,
        30,
        "every job of both runs to finish",
    )
    assert count(url, "SELECT count(*) FROM pgflow_jobs WHERE workflow_id = %s", (run,)) == 0
    parent = app.get_run(run)
    assert parent is not None and parent.state is RunState.CANCELLED
    assert {name: str(step.state) for name, step in parent.steps.items()} == {
        "inner": "cancelled",
        "summary": "cancelled",
    }
    assert parent.steps["inner"].child_id == child
    inner = app.get_run(child)
    assert inner is not None and inner.state is RunState.CANCELLED
    assert {name: str(step.state) for name, step in inner.steps.items()} == {
        "items": "completed",
        "crunch": "cancelled",
        "tally": "cancelled",
    }
    assert inner.steps["crunch"].tasks_done == done_at_cancel
    assert count(url, "SELECT count(*) FROM flow_effects WHERE step = 'summary'") == 0
    with pytest.raises(RunCancelled):
        handle.result(timeout=5.0)


# --- c. a resume that reuses what completed ----------------------------------------------


def test_c_resume_runs_only_the_failed_element_and_reuses_the_nine_outputs(
    cluster: Cluster, app: Pgflow
) -> None:
    url = cluster.url
    run = "resume-map"
    query(url, "INSERT INTO steered_blocks (run, element) VALUES (%s, %s)", (run, FAILING_ELEMENT))
    cluster.spawn("w", queues={"default": 5}, imports=[FLOWS])
    cluster.wait_online("w")
    handle = app.start_run(resumable, {"run": run, "count": 10}, workflow_id=run)
    with pytest.raises(StepFailed, match="blocked"):
        handle.result(timeout=60.0)

    failed = app.get_run(run)
    assert failed is not None and failed.state is RunState.FAILED
    part = failed.steps["part"]
    assert (str(part.state), part.tasks_total, part.tasks_done) == ("failed", 10, 9)
    assert str(failed.steps["combine"].state) == "cancelled"
    assert dict(
        query(
            url,
            "SELECT state, count(*) FROM pgflow_jobs WHERE workflow_id = %s AND step = 'part' "
            "GROUP BY state",
            (run,),
        )
    ) == {"completed": 9, "discarded": 1}
    [(last_job,)] = query(url, "SELECT max(id) FROM pgflow_jobs WHERE workflow_id = %s", (run,))

    query(url, "DELETE FROM steered_blocks WHERE run = %s", (run,))  # the fix
    resumed = app.resume_run(run)
    assert resumed.workflow_id == run
    expected = [10 * n for n in range(10)]
    assert resumed.result(timeout=60.0) == {"combine": {"parts": expected, "sum": sum(expected)}}

    new_jobs = query(
        url,
        "SELECT step, task_index FROM pgflow_jobs WHERE workflow_id = %s AND id > %s ORDER BY id",
        (run, last_job),
    )
    assert new_jobs == [("part", FAILING_ELEMENT), ("combine", 0)]
    assert (
        count(
            url, "SELECT count(*) FROM pgflow_jobs WHERE workflow_id = %s AND step = 'part'", (run,)
        )
        == 11
    )
    assert (
        count(
            url,
            "SELECT count(*) FROM pgflow_jobs WHERE workflow_id = %s AND step = 'parts'",
            (run,),
        )
        == 1
    )
    calls = dict(
        query(
            url,
            "SELECT element, count(*) FROM flow_effects WHERE run = %s AND step = 'part' "
            "AND event = 'started' GROUP BY element",
            (run,),
        )
    )
    assert calls == {n: 2 if n == FAILING_ELEMENT else 1 for n in range(10)}
    record = app.get_run(run)
    assert record is not None and record.state is RunState.COMPLETED
    part = record.steps["part"]
    assert (str(part.state), part.tasks_total, part.tasks_done) == ("completed", 10, 10)
    assert part.output == expected


# --- a sub-flow's relay task lost with its worker ----------------------------------------


def test_a_worker_killed_while_holding_a_subflow_relay_task_is_rescued_and_the_parent_completes(
    cluster: Cluster, app: Pgflow, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = cluster.url
    run = "relay-lost"
    cluster.spawn("kid", queues={"steered_child": 2}, imports=[FLOWS])
    monkeypatch.setenv("PGFLOW_TEST_HOLD_RELAY", "1")
    cluster.spawn("holder", queues={"steered_parent": 2}, imports=[FLOWS])
    monkeypatch.delenv("PGFLOW_TEST_HOLD_RELAY")
    cluster.wait_online("kid", "holder")
    handle = app.start_run(shipping, {"run": run}, workflow_id=run)

    wait_until(
        lambda: count(url, "SELECT count(*) FROM flow_effects WHERE step = 'relay'") == 1,
        30,
        "the holder to take the relay task",
    )
    [(relay_id, state, reserved_by)] = query(
        url,
        "SELECT id, state, reserved_by FROM pgflow_jobs WHERE workflow_id = %s AND step = 'ship'",
        (run,),
    )
    assert (state, reserved_by) == ("executing", "holder")
    child_id = app.get_run(run).steps["ship"].child_id  # type: ignore[union-attr]
    assert child_id is not None and run_state(url, child_id) == "completed"
    kill(cluster, "holder")
    assert run_state(url, run) == "running"

    cluster.spawn("rescuer", queues={"steered_parent": 2}, imports=[FLOWS])
    assert handle.result(timeout=60.0) == {"finish": {"shipped": {"packed": run}}}
    [(state, attempt, reserved_by, errors)] = query(
        url,
        "SELECT state, attempt, reserved_by, errors FROM pgflow_jobs WHERE id = %s",
        (relay_id,),
    )
    assert (state, attempt, reserved_by) == ("completed", 2, "rescuer")
    assert [error["kind"] for error in errors] == ["rescued"]
    child = app.get_run(child_id)
    assert child is not None and child.state is RunState.COMPLETED
    assert (child.parent_id, child.parent_step) == (run, "ship")
    effects = query(url, "SELECT step, instance_id FROM flow_effects ORDER BY id")
    assert effects == [("pack", "kid"), ("relay", "holder"), ("finish", "rescuer")]


# --- a durable sleep and a deadline, kept by the database rather than by a process --------


def test_a_durable_sleep_outlives_its_worker_and_ends_on_a_fresh_one_not_before_its_time(
    cluster: Cluster, app: Pgflow
) -> None:
    url = cluster.url
    run = "nap"
    cluster.spawn("w1", imports=[FLOWS])
    cluster.wait_online("w1")
    handle = app.start_run(napping, {"run": run}, workflow_id=run)
    wait_until(lambda: step_state(url, run, "rest") == "started", 30, "the sleep to start")
    [(state, due, dozed)] = query(
        url,
        "SELECT j.state, j.scheduled_at, s.completed_at FROM pgflow_jobs j "
        "JOIN pgflow_step_states s ON s.workflow_id = j.workflow_id AND s.step = 'doze_off' "
        "WHERE j.workflow_id = %s AND j.step = 'rest'",
        (run,),
    )
    assert state == "scheduled"
    assert abs((due - dozed).total_seconds() - NAP_SECONDS) < 0.5
    kill(cluster, "w1")

    cluster.spawn("w2", imports=[FLOWS])
    assert handle.result(timeout=60.0) == {"wake": {"woke": run}}
    effects = query(
        url, "SELECT step, instance_id, at FROM flow_effects WHERE run = %s ORDER BY id", (run,)
    )
    assert [(step, instance) for step, instance, _ in effects] == [
        ("doze_off", "w1"),
        ("wake", "w2"),
    ]
    assert effects[1][2] >= due  # the step after the sleep never started early
    record = app.get_run(run)
    assert record is not None
    rest = record.steps["rest"]
    assert (rest.kind, str(rest.state), rest.output) == ("sleep", "completed", {"run": run})


DEADLINE = 2.0
#: How long the overdue flow's first step works: well past the deadline.
LINGER_SECONDS = 6.0


def test_a_run_past_its_deadline_is_failed_by_a_worker_while_its_step_still_runs(
    cluster: Cluster, app: Pgflow
) -> None:
    url = cluster.url
    run = "overdue"
    cluster.spawn("w", imports=[FLOWS], deadline_interval=0.25)
    cluster.wait_online("w")
    handle = app.start_run(
        overdue, {"run": run, "seconds": LINGER_SECONDS}, workflow_id=run, deadline=DEADLINE
    )
    with pytest.raises(DeadlineExceeded):
        handle.result(timeout=30.0)

    record = app.get_run(run)
    assert record is not None and record.state is RunState.FAILED
    assert record.error is not None and record.error["kind"] == "DeadlineExceeded"
    assert record.deadline_at is not None and record.finished_at is not None
    ran_for = (record.finished_at - record.started_at).total_seconds()
    assert DEADLINE <= ran_for < LINGER_SECONDS
    assert {name: str(step.state) for name, step in record.steps.items()} == {
        "linger": "cancelled",
        "after": "cancelled",
    }
    [(state, flagged)] = query(
        url,
        "SELECT state, meta ->> 'cancel_requested' FROM pgflow_jobs "
        "WHERE workflow_id = %s AND step = 'linger'",
        (run,),
    )
    assert (state, flagged) == ("executing", "true")

    # The step ends its work later; its completion counts nothing and nothing runs after it.
    wait_until(lambda: unfinished_jobs(url, run) == 0, 30, "the lingering step to end")
    assert query(
        url, "SELECT step, event FROM flow_effects WHERE run = %s ORDER BY id", (run,)
    ) == [("linger", "started"), ("linger", "done")]
    after_end = app.get_run(run)
    assert after_end is not None and after_end.state is RunState.FAILED
    assert after_end.steps["linger"].tasks_done == 0
    assert count(url, "SELECT count(*) FROM pgflow_jobs WHERE workflow_id = %s", (run,)) == 1
