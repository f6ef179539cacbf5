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
