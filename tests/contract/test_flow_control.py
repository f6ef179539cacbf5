"""Flow control (issue 12) as every backend keeps it: pause and hold, global limits, sliding
rate windows, partitions served round robin with per-partition limits, and what status reads.

Claims are driven directly (claim_jobs / complete_jobs); windows are tiny and waits are
bounded polls, so each test is quick and can fail.
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

import pytest

from pgflow.backend import Backend
from pgflow.queue_config import Queue
from pgflow.records import InstanceInfo, Job, JobState, NewJob, TaskKey

from .support import WORKER, new

Q = "flow"


def fill(backend: Backend, count: int, queue: str = Q, **args: Any) -> list[Job]:
    """Insert `count` jobs with these args."""
    return backend.insert_jobs([new(queue=queue, args=dict(args)) for _ in range(count)])


def by_tenant(backend: Backend, counts: dict[str, int], queue: str = Q) -> None:
    """Insert counts[t] jobs with args {"tenant": t}, tenant after tenant."""
    backend.insert_jobs(
        [new(queue=queue, args={"tenant": t}) for t, n in counts.items() for _ in range(n)]
    )


def claim(
    backend: Backend,
    shape: Queue | None,
    limit: int = 10,
    instance: str = "node-a",
    incarnation: str = "",
) -> list[Job]:
    return backend.claim_jobs(Q, instance, limit, incarnation, shape=shape)


def tenants(jobs: Sequence[Job]) -> list[str]:
    return [job.args.get("tenant", "") for job in jobs]


def finish(backend: Backend, jobs: Sequence[Job]) -> None:
    if jobs:
        assert len(backend.complete_jobs([job.ref for job in jobs])) == len(jobs)


def poll(condition: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(0.01)


def control_of(backend: Backend, queue: str = Q) -> Any:
    found = [c for c in backend.queue_controls() if c.queue == queue]
    assert len(found) == 1, f"expected one control of {queue!r}, got {found!r}"
    return found[0]


def worst_window(times: Sequence[datetime], period: float) -> int:
    """The most starts in any half-open window [t, t + period)."""
    ordered = sorted(times)
    span = timedelta(seconds=period)
    worst = 0
    for i, start in enumerate(ordered):
        inside = sum(1 for t in ordered[i:] if t < start + span)
        worst = max(worst, inside)
    return worst


# -- pause and resume --------------------------------------------------------------------------


def test_pause_blocks_plain_and_shaped_claims_and_resume_wakes_and_releases(
    backend: Backend,
) -> None:
    fill(backend, 2)
    fill(backend, 1, queue="other")
    backend.pause_queue(Q)

    assert claim(backend, None) == []
    assert claim(backend, Queue(global_limit=5)) == []
    assert claim(backend, Queue(partition_by="tenant")) == []
    assert len(backend.claim_jobs("other", "node-a", 10)) == 1  # only that queue is paused
    fill(backend, 1)  # inserted meanwhile: waits too
    assert claim(backend, None) == []
    paused = control_of(backend)
    assert paused.paused and paused.paused_at is not None

    listener = backend.listener()
    try:
        backend.resume_queue(Q)
        assert Q in listener.wait(5.0)
    finally:
        listener.close()
    assert not control_of(backend).paused
    assert len(claim(backend, None)) == 3


def test_pause_leaves_running_jobs_alone(backend: Backend) -> None:
    fill(backend, 2)
    running = claim(backend, None, limit=1)
    backend.pause_queue(Q)
    backend.pause_queue(Q)  # twice is fine

    assert backend.complete_jobs([job.ref for job in running]) == [running[0].id]
    assert claim(backend, Queue(global_limit=3)) == []
    backend.resume_queue(Q)
    assert len(claim(backend, Queue(global_limit=3))) == 1


# -- holds -------------------------------------------------------------------------------------


def test_a_hold_blocks_every_claim_until_its_time(backend: Backend) -> None:
    fill(backend, 3)
    started = time.monotonic()
    backend.hold_queue(Q, 0.8)  # long enough that the claims below come before its end

    assert claim(backend, None) == []
    assert claim(backend, Queue(rate_limit=(10, 1.0))) == []
    got: list[Job] = []

    def claimed() -> bool:
        got.extend(claim(backend, None))
        return bool(got)

    poll(claimed, "the hold to end")
    assert time.monotonic() - started >= 0.75
    assert len(got) == 3


def test_a_shorter_later_hold_does_not_shorten_a_hold_and_a_longer_one_extends_it(
    backend: Backend,
) -> None:
    fill(backend, 1)
    backend.hold_queue(Q, 30.0)
    first = control_of(backend).hold_until
    assert first is not None

    backend.hold_queue(Q, 0.01)
    assert control_of(backend).hold_until == first
    time.sleep(0.05)  # well past the short hold
    assert claim(backend, None) == []
    assert claim(backend, Queue(global_limit=2)) == []

    backend.hold_queue(Q, 60.0)
    later = control_of(backend).hold_until
    assert later is not None and later >= first + timedelta(seconds=25)


def test_a_held_partition_is_skipped_while_the_others_are_served(backend: Backend) -> None:
    shape = Queue(partition_by="tenant")
    by_tenant(backend, {"a": 3, "b": 2, "c": 2})
    backend.hold_queue(Q, 30.0, partition="a")
    backend.hold_queue(Q, 1.0, partition="a")  # does not shorten it either

    got = claim(backend, shape, limit=10)
    assert sorted(tenants(got)) == ["b", "b", "c", "c"]
    assert claim(backend, shape) == []
    holds = control_of(backend).partition_holds
    assert set(holds) == {"a"}


def test_a_partition_hold_ends(backend: Backend) -> None:
    shape = Queue(partition_by="tenant")
    by_tenant(backend, {"a": 1, "b": 1})
    backend.hold_queue(Q, 0.8, partition="a")
    assert tenants(claim(backend, shape)) == ["b"]
    got: list[Job] = []

    def claimed() -> bool:
        got.extend(claim(backend, shape))
        return bool(got)

    poll(claimed, "the partition hold to end")
    assert tenants(got) == ["a"]


# -- global limit ------------------------------------------------------------------------------


def test_global_limit_caps_executing_across_claimers_and_frees_as_jobs_complete(
    backend: Backend,
) -> None:
    shape = Queue(limit=10, global_limit=3)
    fill(backend, 10)

    first = claim(backend, shape, instance="node-a")
    assert len(first) == 3
    assert claim(backend, shape, instance="node-b") == []

    finish(backend, first[:2])
    second = claim(backend, shape, instance="node-b")
    assert len(second) == 2 and {job.reserved_by for job in second} == {"node-b"}
    assert claim(backend, shape, instance="node-a") == []
    assert backend.queue_stats(Q, shape).executing == 3


def test_global_limit_counts_jobs_claimed_without_a_shape(backend: Backend) -> None:
    fill(backend, 5)
    claim(backend, None, limit=2)
    assert len(claim(backend, Queue(global_limit=3))) == 1


def test_global_limit_holds_under_concurrent_claimers(backend: Backend) -> None:
    shape = Queue(limit=10, global_limit=3)
    fill(backend, 60)
    guard = threading.Lock()
    running = 0
    most = 0
    done: list[int] = []
    failures: list[BaseException] = []

    def claimer(instance: str) -> None:
        nonlocal running, most
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                jobs = claim(backend, shape, instance=instance)
                with guard:  # counted after the claim, uncounted before completion
                    running += len(jobs)
                    most = max(most, running)
                    if len(done) >= 60:
                        return
                time.sleep(0.002)
                with guard:
                    running -= len(jobs)
                    done.extend(job.id for job in jobs)
                finish(backend, jobs)
        except BaseException as exc:  # reported by the test thread
            failures.append(exc)

    threads = [threading.Thread(target=claimer, args=(f"node-{n}",)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=90)
    assert failures == []
    assert sorted(done) == sorted(set(done)) and len(done) == 60
    assert 1 <= most <= 3


# -- rate limit --------------------------------------------------------------------------------


def test_a_rate_window_refuses_starts_beyond_its_allowance(backend: Backend) -> None:
    shape = Queue(rate_limit=(3, 30.0))
    fill(backend, 10)

    got = claim(backend, shape)
    assert len(got) == 3
    finish(backend, got)  # completing does not give starts back
    assert claim(backend, shape) == []
    assert backend.queue_stats(Q, shape).rate_used == 3


def test_rate_limited_starts_never_exceed_a_sliding_window_and_the_next_window_admits(
    backend: Backend,
) -> None:
    allowed, period = 3, 0.25
    shape = Queue(rate_limit=(allowed, period))
    fill(backend, 12)
    times: list[datetime] = []
    sizes: list[int] = []

    def drained() -> bool:
        jobs = claim(backend, shape, limit=10)
        if jobs:
            sizes.append(len(jobs))
            times.extend(job.attempted_at for job in jobs if job.attempted_at is not None)
            finish(backend, jobs)
        return len(times) >= 12

    poll(drained, "12 rate-limited starts")
    assert len(times) == 12
    assert max(sizes) <= allowed
    assert worst_window(times, period) <= allowed
    assert max(times) - min(times) >= timedelta(seconds=period * 3)


def test_rate_windows_hold_across_concurrent_claimers(backend: Backend) -> None:
    allowed, period = 5, 0.2
    shape = Queue(rate_limit=(allowed, period))
    fill(backend, 30)
    guard = threading.Lock()
    times: list[datetime] = []
    failures: list[BaseException] = []

    def claimer(instance: str) -> None:
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                jobs = claim(backend, shape, instance=instance)
                finish(backend, jobs)
                with guard:
                    times.extend(job.attempted_at for job in jobs if job.attempted_at)
                    if len(times) >= 30:
                        return
                time.sleep(0.005)
        except BaseException as exc:  # reported by the test thread
            failures.append(exc)

    threads = [threading.Thread(target=claimer, args=(f"node-{n}",)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=90)
    assert failures == []
    assert len(times) == 30
    assert worst_window(times, period) <= allowed


# -- partitions --------------------------------------------------------------------------------


@pytest.mark.parametrize("quiet", ["a-quiet", "z-quiet"])
def test_a_single_job_is_not_starved_by_a_partition_of_500(backend: Backend, quiet: str) -> None:
    shape = Queue(partition_by="tenant")
    by_tenant(backend, {"noisy": 500, quiet: 1})

    assert sorted(tenants(claim(backend, shape, limit=2))) == sorted(["noisy", quiet])


def test_rounds_continue_until_the_budget_is_used(backend: Backend) -> None:
    shape = Queue(partition_by="tenant")
    by_tenant(backend, {"noisy": 500, "quiet": 1})

    got = tenants(claim(backend, shape, limit=100))
    assert Counter(got) == {"noisy": 99, "quiet": 1}


def test_within_a_partition_claims_go_by_priority_then_schedule_then_id(
    backend: Backend,
) -> None:
    shape = Queue(partition_by="tenant")
    backend.insert_jobs(
        [new(queue=Q, args={"tenant": "a", "p": p}, priority=p) for p in (0, 5, 1, 5)]
    )
    order = [claim(backend, shape, limit=1)[0] for _ in range(4)]
    assert [job.args["p"] for job in order] == [5, 5, 1, 0]
    assert order[0].id < order[1].id


def test_the_cursor_rotates_so_every_partition_is_served_within_p_over_budget_claims(
    backend: Backend,
) -> None:
    shape = Queue(partition_by="tenant")
    names = [f"t{n}" for n in range(7)]
    by_tenant(backend, dict.fromkeys(names, 10))
    budget = 3
    rounds = math.ceil(len(names) / budget)
    served: list[list[str]] = []
    for _ in range(12):
        jobs = claim(backend, shape, limit=budget)
        assert len(jobs) == budget and len(set(tenants(jobs))) == budget
        served.append(tenants(jobs))
        finish(backend, jobs)

    for start in range(len(served) - rounds + 1):
        window = {name for claimed in served[start : start + rounds] for name in claimed}
        assert window == set(names), f"claims {start}..{start + rounds - 1} served {window}"


def test_partition_limit_keeps_one_executing_per_key_among_100(backend: Backend) -> None:
    shape = Queue(partition_by="tenant", partition_limit=1)
    names = [f"k{n:03}" for n in range(100)]
    by_tenant(backend, dict.fromkeys(names, 3))

    first = claim(backend, shape, limit=1000)
    assert sorted(tenants(first)) == names
    assert claim(backend, shape, limit=1000) == []

    evens = [job for job in first if int(job.args["tenant"][1:]) % 2 == 0]
    finish(backend, evens)
    again = claim(backend, shape, limit=1000)
    assert sorted(tenants(again)) == sorted(tenants(evens))


def test_partition_limit_holds_under_concurrent_claimers(backend: Backend) -> None:
    shape = Queue(partition_by="tenant", partition_limit=1)
    names = [f"k{n:03}" for n in range(100)]
    by_tenant(backend, dict.fromkeys(names, 2))
    guard = threading.Lock()
    running: Counter[str] = Counter()
    worst = 0
    done: list[int] = []
    failures: list[BaseException] = []

    def claimer(instance: str) -> None:
        nonlocal worst
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                jobs = claim(backend, shape, limit=10, instance=instance)
                with guard:
                    running.update(tenants(jobs))
                    worst = max([worst, *running.values()])
                    if len(done) >= 200:
                        return
                with guard:
                    running.subtract(tenants(jobs))
                    done.extend(job.id for job in jobs)
                finish(backend, jobs)
        except BaseException as exc:  # reported by the test thread
            failures.append(exc)

    threads = [threading.Thread(target=claimer, args=(f"node-{n}",)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=90)
    assert failures == []
    assert len(done) == 200 and len(set(done)) == 200
    assert worst == 1


def test_global_limit_caps_a_partitioned_claim(backend: Backend) -> None:
    shape = Queue(global_limit=2, partition_by="tenant", partition_limit=5)
    by_tenant(backend, {"a": 3, "b": 3, "c": 3})

    assert len(claim(backend, shape, limit=10)) == 2
    assert claim(backend, shape, limit=10) == []


def test_partition_rate_limit_applies_per_key(backend: Backend) -> None:
    shape = Queue(partition_by="tenant", partition_rate_limit=(2, 30.0))
    by_tenant(backend, {"a": 5, "b": 5, "c": 5})

    got = claim(backend, shape, limit=100)
    assert Counter(tenants(got)) == {"a": 2, "b": 2, "c": 2}
    finish(backend, got)
    assert claim(backend, shape, limit=100) == []

    by_tenant(backend, {"d": 3})
    assert tenants(claim(backend, shape, limit=100)) == ["d", "d"]


def test_the_queue_window_and_the_default_partitions_window_stay_apart(
    backend: Backend,
) -> None:
    # The default partition is "": its own window must not be the queue-wide one.
    shape = Queue(rate_limit=(100, 30.0), partition_by="tenant", partition_rate_limit=(2, 30.0))
    fill(backend, 5)  # no tenant: partition ""
    by_tenant(backend, {"a": 5, "b": 5})

    got = claim(backend, shape, limit=100)
    assert Counter(tenants(got)) == {"": 2, "a": 2, "b": 2}
    assert backend.queue_stats(Q, shape).rate_used == 6


def test_the_queue_window_caps_a_partitioned_claim(backend: Backend) -> None:
    shape = Queue(rate_limit=(4, 30.0), partition_by="tenant", partition_rate_limit=(2, 30.0))
    by_tenant(backend, {"a": 5, "b": 5, "c": 5})

    assert len(claim(backend, shape, limit=100)) == 4
    assert claim(backend, shape, limit=100) == []


def test_a_missing_or_null_key_is_the_default_partition(backend: Backend) -> None:
    shape = Queue(partition_by="tenant", partition_limit=1)
    backend.insert_jobs(
        [
            new(queue=Q, args={}),
            new(queue=Q, args={"tenant": None}),
            new(queue=Q, args={"other": "a"}),
            new(queue=Q, args={"tenant": "a"}),
        ]
    )

    got = claim(backend, shape, limit=10)
    assert sorted(job.args.get("tenant") or "" for job in got) == ["", "a"]
    assert backend.queue_stats(Q, shape).partitions[0] == ("", 2, 1)


def test_a_number_key_is_its_text(backend: Backend) -> None:
    shape = Queue(partition_by="tenant", partition_limit=1)
    backend.insert_jobs([new(queue=Q, args={"tenant": t}) for t in (7, "7", 8)])

    assert len(claim(backend, shape, limit=10)) == 2
    assert backend.queue_stats(Q, shape).partitions[0] == ("7", 1, 1)


def test_task_jobs_are_partitioned_by_their_positional_value_or_input(
    backend: Backend,
) -> None:
    shape = Queue(partition_by="tenant", partition_limit=1)

    def task(n: int, args: list[Any], kwargs: dict[str, Any], **extra: Any) -> NewJob:
        envelope = {"fingerprint": "f", "args": args, "kwargs": kwargs, **extra}
        return NewJob(worker=WORKER, queue=Q, args=envelope, task=TaskKey(f"run-{n}", "step"))

    backend.insert_jobs(
        [
            task(1, [{"tenant": "x"}], {}),
            task(2, [], {"input": {"tenant": "y"}}),
            task(3, ["scalar"], {"input": {"tenant": "y"}}),
            task(4, [{"other": 1}], {"input": {"tenant": "x"}}),
            task(5, [], {}, tenant="z"),  # the envelope's own keys are not the step's args
            new(queue=Q, args={"tenant": "x"}),  # a plain job of the same tenant
        ]
    )

    stats = backend.queue_stats(Q, shape)
    assert sorted(stats.partitions) == [("", 1, 0), ("x", 3, 0), ("y", 2, 0)]
    got = claim(backend, shape, limit=10)
    assert len(got) == 3  # one of each partition
    waiting = [p for p in backend.queue_stats(Q, shape).partitions if p[1] > 0]
    assert sorted(waiting) == [("x", 2, 1), ("y", 1, 1)]


def test_a_queue_claimed_with_and_without_partitions_loses_no_job(backend: Backend) -> None:
    shape = Queue(partition_by="tenant")
    by_tenant(backend, {"a": 3, "b": 3})
    seen = [job.id for job in claim(backend, shape, limit=2)]
    seen += [job.id for job in claim(backend, None, limit=2)]
    seen += [job.id for job in claim(backend, Queue(partition_by="other"), limit=1)]
    seen += [job.id for job in claim(backend, shape, limit=10)]
    assert len(seen) == 6 and len(set(seen)) == 6


# -- visibility --------------------------------------------------------------------------------


def test_queue_stats_counts_windows_and_top_partitions(backend: Backend) -> None:
    shape = Queue(global_limit=50, rate_limit=(50, 30.0), partition_by="tenant")
    by_tenant(backend, {"a": 5, "b": 3, "c": 2})
    fill(backend, 1, queue="other")

    got = claim(backend, shape, limit=3)
    assert sorted(tenants(got)) == ["a", "b", "c"]
    backend.pause_queue(Q)

    stats = backend.queue_stats(Q, shape)
    assert (stats.queue, stats.executing, stats.available) == (Q, 3, 7)
    assert stats.rate_used == 3
    assert stats.partitions == (("a", 4, 1), ("b", 2, 1), ("c", 1, 1))
    assert stats.control.paused

    plain = backend.queue_stats(Q)
    assert (plain.executing, plain.available, plain.rate_used, plain.partitions) == (3, 7, None, ())
    other = backend.queue_stats("other")
    assert (other.executing, other.available, other.control.paused) == (0, 1, False)


def test_queue_stats_lists_at_most_ten_partitions_most_available_first(
    backend: Backend,
) -> None:
    shape = Queue(partition_by="tenant")
    by_tenant(backend, {f"t{n:02}": 1 for n in range(12)})
    by_tenant(backend, {"big": 4})

    partitions = backend.queue_stats(Q, shape).partitions
    assert len(partitions) == 10
    assert partitions[0] == ("big", 4, 0)


def test_queue_controls_list_what_was_set(backend: Backend) -> None:
    assert [c.queue for c in backend.queue_controls() if c.queue in (Q, "other")] == []
    backend.pause_queue(Q)
    backend.hold_queue("other", 30.0, partition="t1")

    controls = {c.queue: c for c in backend.queue_controls()}
    assert controls[Q].paused
    assert set(controls["other"].partition_holds) == {"t1"}
    assert not controls["other"].paused


# -- fencing -----------------------------------------------------------------------------------


def test_a_shaped_claim_is_fenced_by_the_incarnation(backend: Backend) -> None:
    shape = Queue(rate_limit=(5, 30.0), partition_by="tenant")
    for incarnation in ("first", "second"):
        backend.register_instance(
            InstanceInfo(instance_id="node-a", hostname="test", pid=1, incarnation=incarnation)
        )
    (job,) = fill(backend, 1, tenant="a")

    assert claim(backend, shape, incarnation="first") == []
    stored = backend.get_job(job.id)
    assert stored is not None and stored.state is JobState.AVAILABLE
    assert backend.queue_stats(Q, shape).rate_used == 0  # a fenced claim starts nothing

    (claimed,) = claim(backend, shape, incarnation="second")
    assert claimed.id == job.id and claimed.reserved_by == "node-a"
    assert backend.queue_stats(Q, shape).rate_used == 1


def test_a_shape_that_shapes_nothing_claims_like_a_plain_claim(backend: Backend) -> None:
    fill(backend, 4)
    assert len(claim(backend, Queue(limit=2), limit=3)) == 3


# -- flow tasks --------------------------------------------------------------------------------


def test_a_flows_task_jobs_are_partitioned_by_the_run_input(backend: Backend) -> None:
    from .test_flow_runs import chain

    shape = Queue(partition_by="tenant", partition_limit=1)
    store: Any = backend  # every bundled backend is a FlowStore
    for n, tenant in enumerate(["x", "x", "y"]):
        store.start_flow_run(
            chain.plan, workflow_id=f"fc-{n}", input={"tenant": tenant}, max_attempts=3
        )

    got = backend.claim_jobs("default", "node-a", 10, shape=shape)
    assert sorted(job.args["args"][0]["tenant"] for job in got) == ["x", "y"]


def test_a_successor_claim_takes_nothing_from_a_paused_queue(backend: Backend) -> None:
    from pgflow.graph.ready import plan_fingerprint
    from pgflow.records import SuccessorClaim, TaskCompletion
    from pgflow.serialization import dumps

    from .test_flow_runs import chain

    store: Any = backend
    store.start_flow_run(chain.plan, workflow_id="fc-paused", input=1, max_attempts=3)
    (first,) = backend.claim_jobs("default", "node-a", 10)
    assert first.task is not None
    backend.pause_queue("default")
    successor = SuccessorClaim(queue="default", instance_id="node-a", limit=5)
    store.complete_tasks(
        [TaskCompletion(first.ref, first.task, dumps(2, what="output"))],
        {plan_fingerprint(chain.plan): chain.plan},
        claim=successor,
    )
    assert successor.claimed == []
    backend.resume_queue("default")
    (second,) = backend.claim_jobs("default", "node-a", 10)
    assert second.task is not None and second.task.step == "second"
