"""A worker SIGKILLed mid-job and restarted under the same instance id (Docker and
Kubernetes restarts keep the hostname and PID 1): its lost job runs again at once, not
after stale_timeout, because the new incarnation's registration rescues it."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest

from pgflow.app import Pgflow
from tests.distributed.conftest import Cluster, query, wait_until
from tests.distributed.workers import SlowFirstAttempt

pytestmark = [pytest.mark.postgres, pytest.mark.slow, pytest.mark.timeout(120)]

#: Far longer than the test may take: only the restart itself can free the job.
NEVER_STALE = 3600.0


@pytest.fixture
def app(pg: str) -> Iterator[Pgflow]:
    inserter = Pgflow(pg, instance_id="inserter")
    try:
        yield inserter
    finally:
        inserter.close()


def test_a_worker_restarted_under_its_id_runs_its_lost_job_again(
    cluster: Cluster, app: Pgflow
) -> None:
    url = cluster.url
    cluster.spawn("fixed", stale_timeout=NEVER_STALE)
    cluster.wait_online("fixed")
    job = app.insert(SlowFirstAttempt.new({"seconds": 300.0}))
    wait_until(
        lambda: query(url, "SELECT count(*) FROM side_effects WHERE event = 'started'")[0][0] == 1,
        30,
        "the first attempt to start",
    )
    [(first_incarnation,)] = query(url, "SELECT incarnation FROM pgflow_instances")
    cluster.signal("fixed", signal.SIGKILL)
    cluster.procs["fixed"].wait(10)

    cluster.spawn("fixed", stale_timeout=NEVER_STALE)
    wait_until(
        lambda: (
            query(url, "SELECT state FROM pgflow_jobs WHERE id = %s", (job.id,))[0][0]
            == "completed"
        ),
        60,
        "the lost job to complete after the restart",
    )

    [(attempt, errors)] = query(
        url, "SELECT attempt, errors FROM pgflow_jobs WHERE id = %s", (job.id,)
    )
    assert attempt == 2
    [lost] = errors
    assert lost["kind"] == "rescued" and "earlier incarnation" in lost["message"]
    [(status, incarnation)] = query(url, "SELECT status, incarnation FROM pgflow_instances")
    assert status == "online" and incarnation not in ("", first_incarnation)
    assert f"restarted: jobs [{job.id}]" in cluster.log_of("fixed")


def test_two_live_processes_sharing_an_id_are_reported_and_do_not_fight(
    cluster: Cluster, app: Pgflow
) -> None:
    url = cluster.url
    first = cluster.spawn("twin")
    try:
        first_log = cluster.logs / "twin-first.log"
        (cluster.logs / "twin.log").rename(first_log)  # the child keeps writing to it
        cluster.wait_online("twin")
        [(first_incarnation,)] = query(url, "SELECT incarnation FROM pgflow_instances")

        second = cluster.spawn("twin")  # a second live process given the same id

        wait_until(
            lambda: "is now registered by another process" in first_log.read_text(),
            30,
            "the first process to report that it was displaced",
        )
        report = first_log.read_text()
        assert f"pid {second.pid}" in report and f"pid {first.pid}" in report
        [(incarnation,)] = query(url, "SELECT incarnation FROM pgflow_instances")
        assert incarnation != first_incarnation  # the displaced one never registers again
        jobs = app.insert([SlowFirstAttempt.new({"seconds": 0.0}) for _ in range(5)])
        wait_until(
            lambda: (
                query(
                    url,
                    "SELECT count(*) FROM pgflow_jobs WHERE state = 'completed' AND id = ANY(%s)",
                    ([job.id for job in jobs],),
                )[0][0]
                == 5
            ),
            30,
            "the new process to run new jobs",
        )
        [(still,)] = query(url, "SELECT incarnation FROM pgflow_instances")
        assert still == incarnation
        first.send_signal(signal.SIGTERM)  # a clean stop of the displaced process...
        assert first.wait(20) == 0, first_log.read_text()
        [(status,)] = query(url, "SELECT status FROM pgflow_instances")
        assert status == "online"  # ...leaves the process that holds the id online
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(10)
