"""Run as a separate process by the shaped-claim race tests: claim with a shape until the
queue is empty, checking after every claim what the database says executes.

Prints "max EXECUTING PER_PARTITION" then the claimed job ids, one per line. It opens its
backend, then waits for the file GO to exist, so that all racers start claiming together.
Usage: python shaped_claim_worker.py URL INSTANCE_ID GO
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from pgflow.queue_config import Queue
from pgflow.registry import backend_from_url

SHAPE = Queue(limit=3, global_limit=4, partition_by="tenant", partition_limit=1)


def main() -> None:
    url, instance_id, go = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    backend = backend_from_url(url)
    Path(f"{go}.{instance_id}.ready").touch()
    deadline = time.monotonic() + 60
    while not go.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    claimed: list[int] = []
    most = most_per_partition = 0
    empty_rounds = 0
    try:
        while empty_rounds < 20:
            jobs = backend.claim_jobs("shaped-race", instance_id, SHAPE.limit, shape=SHAPE)
            stats = backend.queue_stats("shaped-race", SHAPE)
            most = max(most, stats.executing)
            busiest = max((executing for _, _, executing in stats.partitions), default=0)
            most_per_partition = max(most_per_partition, busiest)
            if not jobs:
                empty_rounds += 1
                time.sleep(0.005)
                continue
            empty_rounds = 0
            claimed.extend(job.id for job in jobs)
            time.sleep(0.005)  # "work", so that the racers interleave
            backend.complete_jobs([job.ref for job in jobs])
    finally:
        backend.close()
    sys.stdout.write(f"max {most} {most_per_partition}\n")
    sys.stdout.write("".join(f"{job_id}\n" for job_id in claimed))


if __name__ == "__main__":
    main()
