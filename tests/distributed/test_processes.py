"""Worker processes sharing one PostgreSQL database: sharing, crashes, drains, zombies, cron.

Each test spawns real processes (tests/distributed/run_worker.py), bounds every wait, and
kills its children at teardown. Side effects are counted in the `side_effects` table.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import psycopg
import pytest

from pgflow.app import Pgflow
from tests.distributed.conftest import Cluster, query, wait_until
from tests.distributed.workers import Count, CronTick, Nap, Sleepy

pytestmark = [pytest.mark.postgres, pytest.mark.slow, pytest.mark.timeout(120)]


@pytest.fixture
def app(pg: str) -> Iterator[Pgflow]:
    """An app that only inserts (it is never started), as a web process would."""
    inserter = Pgflow(pg, instance_id="inserter")
    try:
        yield inserter
    finally:
        inserter.close()


def count(url: str, sql: str, params: Any = None) -> int:
    return int(query(url, sql, params)[0][0])


def job_row(url: str, job_id: int) -> tuple[Any, ...]:
    [row] = query(
        url,
        "SELECT state, attempt, reserved_by, completed_at, errors::text FROM pgflow_jobs "
        "WHERE id = %s",
        (job_id,),
    )
    return row


def test_three_processes_share_300_jobs_exactly_once(cluster: Cluster, app: Pgflow) -> None:
    for name in ("a", "b", "c"):
        cluster.spawn(name)
    cluster.wait_online("a", "b", "c")
    jobs = app.insert([Count.new({"n": n, "seconds": 0.02}) for n in range(300)])
    url = cluster.url
    wait_until(
        lambda: count(url, "SELECT count(*) FROM pgflow_jobs WHERE state = 'completed'") == 300,
        60,
        "300 completed jobs",
    )
    per_job = query(url, "SELECT job_id, count(*) FROM side_effects GROUP BY job_id")
    assert sorted(job_id for job_id, _ in per_job) == sorted(job.id for job in jobs)
    assert {n for _, n in per_job} == {1}  # each job ran exactly once
    shared = dict(query(url, "SELECT reserved_by, count(*) FROM pgflow_jobs GROUP BY reserved_by"))
    assert set(shared) == {"a", "b", "c"}, shared
    for name, sig in (("a", signal.SIGINT), ("b", signal.SIGTERM), ("c", signal.SIGTERM)):
        cluster.signal(name, sig)  # Ctrl-C drains as SIGTERM does
    for name, proc in cluster.procs.items():
        assert proc.wait(20) == 0, cluster.log_of(name)
    statuses = dict(query(url, "SELECT instance_id, status FROM pgflow_instances"))
    assert statuses == {"a": "offline", "b": "offline", "c": "offline"}


def test_sigkill_mid_job_its_jobs_are_rescued_elsewhere(cluster: Cluster, app: Pgflow) -> None:
    url = cluster.url
    cluster.spawn("victim", queues={"default": 3})
    cluster.wait_online("victim")
    jobs = app.insert([Sleepy.new({"seconds": 1.0}) for _ in range(3)])
    wait_until(
        lambda: count(url, "SELECT count(*) FROM side_effects WHERE event = 'started'") == 3,
        30,
        "the victim to start its three jobs",
    )
    cluster.signal("victim", signal.SIGKILL)
    cluster.procs["victim"].wait(10)
    cluster.spawn("survivor")
    wait_until(
        lambda: count(url, "SELECT count(*) FROM pgflow_jobs WHERE state = 'completed'") == 3,
        40,
        "the rescued jobs to complete",
    )
    for job in jobs:
        state, attempt, reserved_by, _, _ = job_row(url, job.id)
        assert (state, attempt, reserved_by) == ("completed", 2, "survivor")
    done = query(url, "SELECT job_id, instance_id FROM side_effects WHERE event = 'done'")
    assert sorted(done) == sorted((job.id, "survivor") for job in jobs)
    assert cluster.procs["survivor"].poll() is None


def test_sigterm_finishes_running_jobs_starts_none_and_goes_offline(
    cluster: Cluster, app: Pgflow
) -> None:
    url = cluster.url
    proc = cluster.spawn("drainer", queues={"default": 2})
    cluster.wait_online("drainer")
    running = app.insert([Sleepy.new({"seconds": 1.5}, priority=10) for _ in range(2)])
    wait_until(
        lambda: count(url, "SELECT count(*) FROM side_effects WHERE event = 'started'") == 2,
        30,
        "two running jobs",
    )
    waiting = app.insert([Sleepy.new({"seconds": 0.1}) for _ in range(5)])
    cluster.signal("drainer", signal.SIGTERM)
    assert proc.wait(30) == 0, cluster.log_of("drainer")
    for job in running:
        assert job_row(url, job.id)[0] == "completed"
    for job in waiting:
        assert job_row(url, job.id)[:2] == ("available", 0)
    assert count(url, "SELECT count(*) FROM side_effects WHERE event = 'started'") == 2
    assert query(url, "SELECT status FROM pgflow_instances WHERE instance_id = 'drainer'") == [
        ("offline",)
    ]


def test_sigterm_with_a_stuck_job_exits_after_the_shutdown_timeout(
    cluster: Cluster, app: Pgflow
) -> None:
    url = cluster.url
    proc = cluster.spawn("stuck", shutdown_timeout=1.0)
    cluster.wait_online("stuck")
    [job] = app.insert([Sleepy.new({"seconds": 60})])
    wait_until(
        lambda: count(url, "SELECT count(*) FROM side_effects WHERE event = 'started'") == 1,
        30,
        "the long job to start",
    )
    cluster.signal("stuck", signal.SIGTERM)
    assert proc.wait(20) == 0, cluster.log_of("stuck")
    # Left executing under an offline instance: the next rescue makes it available.
    assert job_row(url, job.id)[:3] == ("executing", 1, "stuck")
    assert query(url, "SELECT status FROM pgflow_instances") == [("offline",)]


def test_a_paused_zombie_cannot_overwrite_the_rescue(cluster: Cluster, app: Pgflow) -> None:
    url = cluster.url
    cluster.spawn("zombie", queues={"default": 1})
    cluster.wait_online("zombie")
    [job] = app.insert([Sleepy.new({"seconds": 1.0})])
    wait_until(
        lambda: count(url, "SELECT count(*) FROM side_effects WHERE event = 'started'") == 1,
        30,
        "the zombie to start the job",
    )
    cluster.signal("zombie", signal.SIGSTOP)
    cluster.spawn("rescuer")
    wait_until(lambda: job_row(url, job.id)[0] == "completed", 40, "the rescuer to finish")
    after_rescue = job_row(url, job.id)
    assert after_rescue[1:3] == (2, "rescuer")
    cluster.signal("zombie", signal.SIGCONT)
    wait_until(
        lambda: (
            count(
                url,
                "SELECT count(*) FROM side_effects WHERE event = 'done' AND instance_id = 'zombie'",
            )
            == 1
        ),
        30,
        "the zombie's late finish",
    )
    wait_until(
        lambda: "no longer holds the job" in cluster.log_of("zombie"),
        10,
        "the zombie's fenced acknowledgement",
    )
    assert job_row(url, job.id) == after_rescue
    assert cluster.procs["zombie"].poll() is None  # it carried on, registered again
    cluster.wait_online("zombie")


def test_two_instances_enqueue_each_cron_slot_once(cluster: Cluster) -> None:
    """Two instances whose own clocks disagree by 80 s still enqueue each slot once, and the
    slots are minutes of the database's clock."""
    url = cluster.url
    db_before = query(url, "SELECT now()")[0][0]
    for name, skew in (("cron-a", -40.0), ("cron-b", 40.0)):
        cluster.spawn(name, cron=[("* * * * *", CronTick.__name__)], clock_offset=skew)
    cluster.wait_online("cron-a", "cron-b")
    wait_until(
        lambda: count(url, "SELECT count(*) FROM side_effects WHERE event = 'cron'") >= 1,
        30,
        "the cron job to run",
    )
    # Hand over: stop the leader; the other takes the lease and runs cron for the same
    # minute. Three distinct lease expiries of its own mean whole duty passes, cron
    # included, ran after it took over: it must not have enqueued the slot again.
    [(leader_id,)] = query(url, "SELECT instance_id FROM pgflow_leader")
    successor = "cron-b" if leader_id == "cron-a" else "cron-a"
    cluster.signal(leader_id, signal.SIGTERM)
    assert cluster.procs[leader_id].wait(20) == 0, cluster.log_of(leader_id)
    leases: set[Any] = set()

    def successor_renewed() -> bool:
        leases.update(
            row[0]
            for row in query(
                url, "SELECT expires_at FROM pgflow_leader WHERE instance_id = %s", (successor,)
            )
        )
        return len(leases) >= 3

    wait_until(successor_renewed, 30, f"{successor} to lead for a few ticks")
    db_after = query(url, "SELECT now()")[0][0]
    rows = query(url, "SELECT meta->>'cron_slot', state FROM pgflow_jobs ORDER BY 1")
    minutes = {
        (db_before + timedelta(minutes=m)).replace(second=0, microsecond=0).isoformat()
        for m in range(int((db_after - db_before).total_seconds() // 60) + 2)
    }
    slots = [slot for slot, _ in rows]
    assert rows and len(slots) == len(set(slots)), rows  # each slot once
    assert set(slots) <= minutes, (slots, db_before, db_after)  # the database's minutes
    wait_until(
        lambda: (
            count(url, "SELECT count(*) FROM pgflow_jobs WHERE state = 'completed'") == len(rows)
        ),
        30,
        "every cron job to complete",
    )
    assert count(url, "SELECT count(*) FROM side_effects WHERE event = 'cron'") == len(rows)


def _pg_ctlcluster() -> list[str] | None:
    """The command restarting the local cluster at once, or None where it cannot be done."""
    if not shutil.which("pg_ctlcluster") or not os.path.isdir("/etc/postgresql"):
        return None
    versions = sorted(os.listdir("/etc/postgresql"))
    if not versions:
        return None
    return ["pg_ctlcluster", "--skip-systemctl-redirect", versions[-1], "main", "restart"]


def test_postgres_restart_under_load_loses_nothing(cluster: Cluster, app: Pgflow) -> None:
    """Kept last and short: the server is shared, and an immediate restart drops everyone."""
    if os.environ.get("CI") != "true" and os.environ.get("PGFLOW_TEST_PG_RESTART") != "1":
        pytest.skip("restarts the shared server: runs with CI=true or PGFLOW_TEST_PG_RESTART=1")
    command = _pg_ctlcluster()
    if command is None:
        pytest.skip("needs the local Debian PostgreSQL cluster (pg_ctlcluster) to restart")
    url = cluster.url
    for name in ("steady-a", "steady-b"):
        cluster.spawn(name, queues={"default": 50})
    cluster.wait_online("steady-a", "steady-b")
    jobs = app.insert([Nap.new({"n": n, "seconds": 1.5}) for n in range(100)])
    wait_until(
        lambda: count(url, "SELECT count(*) FROM pgflow_jobs WHERE state = 'executing'") == 100,
        30,
        "100 jobs in flight",
    )
    subprocess.run([*command, "-m", "immediate"], check=True, timeout=60, capture_output=True)

    def all_completed() -> bool:
        try:
            done = count(url, "SELECT count(*) FROM pgflow_jobs WHERE state = 'completed'")
        except psycopg.OperationalError:  # still starting up
            return False
        return done == len(jobs)

    try:
        wait_until(all_completed, 60, "every job completed after the restart")
    except AssertionError:
        states = query(url, "SELECT state, count(*) FROM pgflow_jobs GROUP BY 1")
        raise AssertionError(f"jobs by state after the restart: {states}") from None
    for name, proc in cluster.procs.items():
        assert proc.poll() is None, f"{name} exited:\n{cluster.log_of(name)[-3000:]}"
    assert any("retrying in" in cluster.log_of(name) for name in cluster.procs)
    for name in cluster.procs:
        cluster.signal(name, signal.SIGTERM)
    for name, proc in cluster.procs.items():
        assert proc.wait(30) == 0, cluster.log_of(name)
