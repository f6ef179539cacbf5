"""Claim races across real processes: every job is handed out exactly once."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from pgflow.records import NewJob
from pgflow.registry import backend_from_url
from tests.sql.helpers import run_helpers

JOBS = 500
PROCESSES = 4

pytestmark = pytest.mark.slow


def _race(url: str, tmp_path: Path) -> None:
    backend = backend_from_url(url)
    try:
        backend.migrate()
        inserted = backend.insert_jobs(
            [NewJob(worker="tests.sql.Noop", queue="race", args={"n": n}) for n in range(JOBS)]
        )
    finally:
        backend.close()
    go = tmp_path / "go"
    outputs = run_helpers(
        "claim_worker.py",
        [[url, f"proc-{n}", str(go)] for n in range(PROCESSES)],
        timeout=120,
        go=go,
    )
    claims = Counter(int(line) for out in outputs for line in out.split())
    assert sorted(claims) == sorted(job.id for job in inserted)  # none lost
    assert set(claims.values()) == {1}  # none twice
    assert sum(1 for out in outputs if out.strip()) >= 2  # it really was a race

    backend = backend_from_url(url)
    try:
        counts = [c for c in backend.job_counts() if c.queue == "race"]
        assert sum(c.count for c in counts) == JOBS
        assert {c.state.value for c in counts} == {"completed"}
        assert len({c.reserved_by for c in counts}) >= 2
    finally:
        backend.close()


def test_processes_sharing_one_sqlite_file_never_claim_a_job_twice(
    sqlite_url: str, tmp_path: Path
) -> None:
    _race(sqlite_url, tmp_path)


@pytest.mark.postgres
def test_processes_on_postgres_never_claim_a_job_twice(postgres_url: str, tmp_path: Path) -> None:
    _race(postgres_url, tmp_path)
