"""The graph measurements, the same for every flow system and setting.

Throughput: workers start and report ready (start-up is out of the figure), the parent starts
N runs at once, and the rate is N over the time from when the runs became visible to the
latest completion the system itself recorded. Latency: one run at a time on an idle worker,
from just before the start call to the moment a client sees the result.
"""

from __future__ import annotations

import random
import sys
import time
import traceback
from collections.abc import Callable

from benchmarks.harness import latency_metrics
from benchmarks.peers import graph_procs
from benchmarks.peers.graph_spec import (
    LATENCY_CHAIN,
    MEASUREMENTS,
    WORKLOADS,
    GraphPeer,
    Measurement,
    Outcome,
    Setting,
    Sizes,
    Unsupported,
)

#: Seconds one latency sample may take.
SAMPLE_TIMEOUT = 30.0


def run_setting(
    peer: GraphPeer, url: str, setting: Setting, sizes: Sizes, tick: Callable[[str], None]
) -> Outcome:
    """Every measurement for one setting; a failing one becomes a note, never a missing row."""
    outcome = Outcome(f"{peer.name} ({setting.label})" if setting.label else peer.name)
    outcome.config = setting.config
    for measurement in MEASUREMENTS:
        tick(f"{outcome.system}: {measurement.label}")
        try:
            reason = peer.cannot.get(measurement.key, "")
            if reason:
                raise Unsupported(reason)
            if measurement.key == "latency":
                outcome.metrics.update(_latency(peer, url, setting, sizes))
            else:
                outcome.metrics.update(_throughput(peer, url, setting, sizes, measurement, outcome))
        except Unsupported as exc:
            outcome.notes[measurement.key] = str(exc)
        except Exception as exc:
            traceback.print_exc(file=sys.stderr)
            outcome.notes[measurement.key] = f"error: {type(exc).__name__}: {exc}"
    return outcome


def _throughput(
    peer: GraphPeer,
    url: str,
    setting: Setting,
    sizes: Sizes,
    measurement: Measurement,
    outcome: Outcome,
) -> dict[str, float]:
    workload = WORKLOADS[measurement.workload]
    count = sizes.runs(workload.key)
    argv = peer.worker_command(url, workload, setting)
    with graph_procs.running(argv, measurement.processes, peer.worker_env()) as (procs, logs):
        baseline = peer.finished(workload)[0]
        started = peer.start_runs(workload, count)
        started.baseline = baseline
        deadline = time.monotonic() + sizes.budget_s
        done, last = 0, started.at
        while True:
            graph_procs.check_alive(procs, logs)
            done, last = peer.wait_runs(workload, started, min(deadline, time.monotonic() + 1.0))
            if done >= count or time.monotonic() >= deadline:
                break
    if done <= 0:
        raise RuntimeError(f"no run completed within the {sizes.budget_s:.0f} s budget")
    if done < count:
        outcome.notes[measurement.key] = (
            f"stopped after the {sizes.budget_s:.0f} s budget: rate over the {done:,} of "
            f"{count:,} runs done by then"
        )
    elapsed = max(last - started.at, 1e-6)
    runs_per_s = done / elapsed
    figures = {measurement.key: runs_per_s}
    if workload.map_tasks_per_run:
        figures[f"{measurement.key}_map_tasks"] = runs_per_s * workload.map_tasks_per_run
    return figures


def _latency(peer: GraphPeer, url: str, setting: Setting, sizes: Sizes) -> dict[str, float]:
    workload = LATENCY_CHAIN
    pauses = random.Random(42)
    samples: list[int] = []
    argv = peer.worker_command(url, workload, setting)
    with graph_procs.running(argv, 1, peer.worker_env()) as (procs, logs):
        for i in range(sizes.latency_warmup + sizes.latency_samples):
            graph_procs.check_alive(procs, logs)
            started = time.perf_counter_ns()
            handle = peer.start_one(workload)
            peer.wait_result(handle, SAMPLE_TIMEOUT)
            elapsed = time.perf_counter_ns() - started
            if i >= sizes.latency_warmup:
                samples.append(elapsed)
            time.sleep(pauses.uniform(0.05, 0.1))  # let the worker fall idle again
    figures = latency_metrics(samples)
    return {
        "latency_p50_ms": figures["median_ns"] / 1e6,
        "latency_p99_ms": figures["p99_ns"] / 1e6,
    }
