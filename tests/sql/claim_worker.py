"""Run as a separate process by the claim-race tests: claim until the queue is empty.

Prints the claimed job ids, one per line, so the parent can check that each job went to
exactly one process. It opens its backend, then waits for the file GO to exist, so that all
racers start claiming together. Usage: python claim_worker.py URL INSTANCE_ID GO
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from pgflow.registry import backend_from_url


def main() -> None:
    url, instance_id, go = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    backend = backend_from_url(url)
    Path(f"{go}.{instance_id}.ready").touch()
    deadline = time.monotonic() + 60
    while not go.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    claimed: list[int] = []
    empty_rounds = 0
    try:
        while empty_rounds < 3:
            jobs = backend.claim_jobs("race", instance_id, 7)
            if not jobs:
                empty_rounds += 1
                continue
            empty_rounds = 0
            claimed.extend(job.id for job in jobs)
            time.sleep(0.002)  # "work", so that the racers interleave
            backend.complete_jobs([job.ref for job in jobs])
    finally:
        backend.close()
    sys.stdout.write("".join(f"{job_id}\n" for job_id in claimed))


if __name__ == "__main__":
    main()
