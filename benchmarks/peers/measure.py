"""The measurements, the same for every peer: inserts, drains, latency, workflows, memory.

Drains are timed from the first to the last job a worker reported done (UDP sink), so
process start-up and imports are out of every system's figure alike; the system's own
completion count is checked afterwards.
"""

from __future__ import annotations

import random
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass

from benchmarks.harness import latency_metrics, quiet_gc
from benchmarks.peers import procs, spec
from benchmarks.peers.sink import Sink

#: Seconds without a single job done before a drain is declared stuck.
STALL_TIMEOUT = 30.0
#: Seconds an enqueue-to-start sample may take (DBOS polls its queues every second).
START_TIMEOUT = 10.0
#: Most seconds a wide drain may run (DBOS, polling once a second, would spend a minute each).
WIDE_BUDGET = 30.0


@dataclass(frozen=True)
class Sizes:
    """How many of each operation a run makes."""

    insert_one: int
    insert_bulk: int
    bulk_batch: int
    drain: int
    latency: int
    latency_warmup: int
    flows_inprocess: int
    flows_distributed: int
    #: Seconds a drain may run; a slower system is timed on the jobs done by then.
    drain_budget: float


FULL = Sizes(2_000, 10_000, 1_000, 10_000, 200, 10, 1_000, 2_000, 60.0)
QUICK = Sizes(200, 2_000, 1_000, 1_000, 20, 3, 100, 200, 12.0)

#: (metric key, label) of every measurement, in the order they are taken.
STEPS: tuple[tuple[str, str], ...] = (
    ("insert_one", "insert one at a time"),
    ("insert_bulk", "insert in bulk"),
    ("flow_inprocess", "3-step workflow in-process"),
    ("drain_1", "drain, 1 worker process"),
    ("drain_2", "drain, 2 worker processes"),
    ("drain_wide_1", f"drain, 1 process x {spec.WIDE_CONCURRENCY} slots"),
    ("drain_wide_2", f"drain, 2 processes x {spec.WIDE_CONCURRENCY} slots"),
    ("latency", "enqueue-to-start latency"),
    ("flow_distributed", "3-step workflow as distributed job"),
)


def run_peer(
    peer: spec.Peer, url: str, sink: Sink, sizes: Sizes, tick: Callable[[str], None]
) -> spec.Outcome:
    """Measure one set-up peer; each failing step becomes a note, never a missing line."""
    outcome = spec.Outcome(peer.name, peer.config)
    actions: dict[str, Callable[[], dict[str, float]]] = {
        "insert_one": lambda: _insert_one(peer, sizes),
        "insert_bulk": lambda: _insert_bulk(peer, sizes),
        "flow_inprocess": lambda: _flow_inprocess(peer, sizes),
        "drain_1": lambda: _drain(peer, url, sink, sizes, 1, outcome),
        "drain_2": lambda: _drain(peer, url, sink, sizes, 2, outcome),
        "drain_wide_1": lambda: _drain(peer, url, sink, sizes, 1, outcome, wide=True),
        "drain_wide_2": lambda: _drain(peer, url, sink, sizes, 2, outcome, wide=True),
        "latency": lambda: _latency(peer, url, sink, sizes),
        "flow_distributed": lambda: _flows_distributed(peer, url, sink, sizes, outcome),
    }
    for key, label in STEPS:
        tick(f"{peer.name}: {label}")
        try:
            outcome.metrics.update(actions[key]())
        except spec.Unsupported as exc:
            outcome.notes[key] = str(exc)
        except Exception as exc:
            traceback.print_exc(file=sys.stderr)
            outcome.notes[key] = f"error: {type(exc).__name__}: {exc}"
    return outcome


def _timed_rate(count: int, work: Callable[[], None]) -> float:
    with quiet_gc():
        started = time.perf_counter_ns()
        work()
        elapsed = time.perf_counter_ns() - started
    return count * 1e9 / elapsed


def _insert_one(peer: spec.Peer, sizes: Sizes) -> dict[str, float]:
    for i in range(10):  # warm up connections and statement caches
        peer.insert_one(-i)

    def work() -> None:
        for i in range(sizes.insert_one):
            peer.insert_one(i)

    return {"insert_one": _timed_rate(sizes.insert_one, work)}


def _insert_bulk(peer: spec.Peer, sizes: Sizes) -> dict[str, float]:
    peer.insert_bulk(0, 10)

    def work() -> None:
        for start in range(0, sizes.insert_bulk, sizes.bulk_batch):
            peer.insert_bulk(start, min(sizes.bulk_batch, sizes.insert_bulk - start))

    return {"insert_bulk": _timed_rate(sizes.insert_bulk, work)}


def _flow_inprocess(peer: spec.Peer, sizes: Sizes) -> dict[str, float]:
    run = peer.workflow_inprocess()
    for _ in range(20):
        run()

    def work() -> None:
        for _ in range(sizes.flows_inprocess):
            run()

    return {"flow_inprocess": _timed_rate(sizes.flows_inprocess, work)}


def _await_done(
    peer: spec.Peer,
    sink: Sink,
    workers: procs.Workers,
    total: int,
    queue: str,
    flows: bool,
    budget: float,
) -> tuple[float, int]:
    """Wait until `total` jobs reported done, or the budget ran out.

    Returns jobs per second from the first to the last reported job, and how many were done.
    """
    last_seen, last_change = -1, time.monotonic()
    started = time.monotonic()
    while sink.done < total:
        workers.check_alive()
        now = time.monotonic()
        if sink.done != last_seen:
            last_seen, last_change = sink.done, now
        elif now - last_change > STALL_TIMEOUT:
            recorded = _recorded(peer, queue, flows)
            raise RuntimeError(
                f"stuck: {sink.done}/{total} reported done, {recorded} recorded completed"
            )
        if now - started > budget and sink.done > 1:
            break
        time.sleep(0.02)
    done = sink.done
    elapsed = sink.last_done_ns - sink.first_done_ns
    return ((done - 1) * 1e9 / elapsed if elapsed > 0 else float("nan")), done


def _budget_note(outcome: spec.Outcome, key: str, done: int, total: int, budget: float) -> None:
    if done < total:
        outcome.notes[key] = (
            f"stopped after the {budget:.0f} s budget: rate over the {done:,} of {total:,} "
            "jobs done by then"
        )


def _recorded(peer: spec.Peer, queue: str, flows: bool) -> str:
    if peer.counts_by_sink():
        return "n/a"
    try:
        return str(peer.flows_completed(queue) if flows else peer.completed(queue))
    except Exception as exc:
        return f"unknown ({exc})"


def _check_recorded(peer: spec.Peer, queue: str, total: int, flows: bool) -> None:
    """The system itself must say every job completed (a worker may ack after running)."""
    if peer.counts_by_sink():
        return
    deadline = time.monotonic() + 10
    while True:
        recorded = peer.flows_completed(queue) if flows else peer.completed(queue)
        if recorded >= total:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {recorded}/{total} jobs recorded completed")
        time.sleep(0.05)


def _drain(
    peer: spec.Peer,
    url: str,
    sink: Sink,
    sizes: Sizes,
    processes: int,
    outcome: spec.Outcome,
    wide: bool = False,
) -> dict[str, float]:
    """Drain pre-inserted no-ops with `processes` workers, CONCURRENCY or (wide) more slots."""
    if wide:
        if peer.wide_drain_skip:
            raise spec.Unsupported(peer.wide_drain_skip)
        key, queue = f"drain_wide_{processes}", spec.WIDE_QUEUES[processes]
        concurrency, budget = spec.WIDE_CONCURRENCY, min(sizes.drain_budget, WIDE_BUDGET)
    else:
        key, queue = f"drain_{processes}", spec.NOOP_QUEUES[processes]
        concurrency, budget = spec.CONCURRENCY, sizes.drain_budget
    total = sizes.drain
    peer.insert_noops(queue, total)
    with procs.workers(peer.module, url, queue, processes, sink, concurrency) as workers:
        rate, done = _await_done(peer, sink, workers, total, queue, flows=False, budget=budget)
        rss = workers.peak_rss_mb()
    _budget_note(outcome, key, done, total, budget)
    if done == total:
        _check_recorded(peer, queue, total, flows=False)
    figures = {key: rate}
    if processes == 1 and not wide:  # the worker's RSS as configured for every other figure
        figures["rss_mb"] = rss
    return figures


def _latency(peer: spec.Peer, url: str, sink: Sink, sizes: Sizes) -> dict[str, float]:
    pauses = random.Random(42)
    latencies: list[int] = []
    with procs.workers(peer.module, url, spec.STAMP_QUEUE, 1, sink) as workers:
        for seq in range(sizes.latency_warmup + sizes.latency):
            peer.insert_stamp(seq, time.time_ns())
            deadline = time.monotonic() + START_TIMEOUT
            while not sink.stamps:
                if time.monotonic() > deadline:
                    workers.check_alive()
                    raise RuntimeError(f"job {seq} did not start within {START_TIMEOUT:.0f} s")
                time.sleep(0.0002)
            got, latency = sink.stamps.popleft()
            if got != seq:
                raise RuntimeError(f"job {got} started while waiting for job {seq}")
            if seq >= sizes.latency_warmup:
                latencies.append(latency)
            time.sleep(pauses.uniform(0.005, 0.015))  # let the worker fall idle
    figures = latency_metrics(latencies)
    return {
        "latency_p50_ms": figures["median_ns"] / 1e6,
        "latency_p95_ms": figures["p95_ns"] / 1e6,
        "latency_p99_ms": figures["p99_ns"] / 1e6,
    }


def _flows_distributed(
    peer: spec.Peer, url: str, sink: Sink, sizes: Sizes, outcome: spec.Outcome
) -> dict[str, float]:
    total = sizes.flows_distributed
    peer.insert_flows(spec.FLOW_QUEUE, total)
    with procs.workers(peer.module, url, spec.FLOW_QUEUE, 1, sink) as workers:
        rate, done = _await_done(
            peer, sink, workers, total, spec.FLOW_QUEUE, flows=True, budget=sizes.drain_budget
        )
    _budget_note(outcome, "flow_distributed", done, total, sizes.drain_budget)
    if done == total:
        _check_recorded(peer, spec.FLOW_QUEUE, total, flows=True)
    return {"flow_distributed": rate}
