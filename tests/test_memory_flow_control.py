"""The memory backend's flow control on a FakeClock: exact window and hold edges, partition
text, window sweeping, and the queue switching between one heap and per-partition heaps."""

from __future__ import annotations

from typing import Any

import pytest

from pgflow.clock import FakeClock
from pgflow.errors import BackendError, DefinitionError
from pgflow.queue_config import Queue
from pgflow.records import NewJob
from pgflow_backends.memory import InMemoryBackend
from pgflow_backends.memory.jobs import partition_value

WORKER = "tests.Noop"


def make() -> tuple[InMemoryBackend, FakeClock]:
    clock = FakeClock()
    return InMemoryBackend(clock=clock), clock


def fill(backend: InMemoryBackend, *args: dict[str, Any]) -> None:
    backend.insert_jobs([NewJob(worker=WORKER, queue="q", args=a) for a in args])


def test_a_rate_window_is_half_open_on_the_backends_clock() -> None:
    backend, clock = make()
    shape = Queue(rate_limit=(2, 1.0))
    fill(backend, *[{}] * 6)

    assert len(backend.claim_jobs("q", "a", 10, shape=shape)) == 2
    clock.advance(0.999)
    assert backend.claim_jobs("q", "a", 10, shape=shape) == []
    clock.advance(0.001)  # the first starts are exactly one period old: out of the window
    assert len(backend.claim_jobs("q", "a", 10, shape=shape)) == 2


def test_a_hold_ends_at_its_time_on_the_backends_clock() -> None:
    backend, clock = make()
    fill(backend, {})
    backend.hold_queue("q", 5.0)
    clock.advance(4.999)
    assert backend.claim_jobs("q", "a", 1) == []
    clock.advance(0.001)
    assert len(backend.claim_jobs("q", "a", 1)) == 1


def test_partition_text_follows_json_as_postgres_gives_it() -> None:
    assert partition_value({"t": "acme"}, "t", task=False) == "acme"
    assert partition_value({"t": 7}, "t", task=False) == "7"
    assert partition_value({"t": 1.5}, "t", task=False) == "1.5"
    assert partition_value({"t": True}, "t", task=False) == "true"
    assert partition_value({"t": None}, "t", task=False) == ""
    assert partition_value({}, "t", task=False) == ""
    assert partition_value({"t.x": "dotted"}, "t.x", task=False) == "dotted"  # a literal key
    envelope = {"args": [{"t": "p"}], "kwargs": {"input": {"t": "i"}}}
    assert partition_value(envelope, "t", task=True) == "p"
    assert partition_value({"args": [None], "kwargs": {"input": {"t": "i"}}}, "t", task=True) == (
        "i"
    )
    assert partition_value({"t": "top", "args": [], "kwargs": {}}, "t", task=True) == ""


def test_numbers_and_their_text_share_a_partition() -> None:
    backend, _ = make()
    shape = Queue(partition_by="t", partition_limit=1)
    fill(backend, {"t": 7}, {"t": "7"}, {"t": 8})
    assert len(backend.claim_jobs("q", "a", 10, shape=shape)) == 2


def test_windows_of_partitions_no_longer_claimed_are_swept() -> None:
    backend, clock = make()
    shape = Queue(partition_by="t", partition_rate_limit=(1, 1.0))
    fill(backend, *[{"t": f"p{n}"} for n in range(50)])
    assert len(backend.claim_jobs("q", "a", 100, shape=shape)) == 50
    assert len(backend._controls._windows) == 50

    clock.advance(2.0)
    fill(backend, {"t": "late"})
    assert len(backend.claim_jobs("q", "a", 100, shape=shape)) == 1
    assert list(backend._controls._windows) == [("q", "late")]


def test_switching_between_plain_and_partitioned_claims_keeps_every_job_once() -> None:
    backend, _ = make()
    fill(backend, *[{"t": f"p{n % 3}", "n": n} for n in range(30)])
    seen: list[int] = []
    for number in range(12):
        shape = Queue(partition_by="t") if number % 2 else None
        jobs = backend.claim_jobs("q", "a", 3, shape=shape)
        seen.extend(job.id for job in jobs)
        if number == 5:  # back to available: pushed to whichever index holds the queue now
            backend.fail_job(jobs[0].ref, {"kind": "X"}, retry_in=0)
            backend.stage_jobs()
            seen.remove(jobs[0].id)
    seen.extend(job.id for job in backend.claim_jobs("q", "a", 100))
    assert sorted(seen) == list(range(1, 31))


def test_bad_hold_and_queue_names_are_refused() -> None:
    backend, _ = make()
    with pytest.raises(DefinitionError, match="seconds must be a finite number"):
        backend.hold_queue("q", float("nan"))
    with pytest.raises(DefinitionError, match="seconds must be a finite number"):
        backend.hold_queue("q", True)
    with pytest.raises(DefinitionError):
        backend.pause_queue("bad name!")
    assert backend.queue_controls() == []


def test_close_drops_the_controls() -> None:
    backend, _ = make()
    backend.pause_queue("q")
    backend.close()
    with pytest.raises(BackendError):
        backend.queue_controls()


def test_a_long_partition_key_is_cut_like_the_sql_backends_cut_it() -> None:
    long = "k" * 300
    assert partition_value({"t": long}, "t", task=False) == "k" * 255
