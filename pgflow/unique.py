"""The unique key of a job, computed the same way by every backend.

Two inserts are duplicates when their keys are equal; a backend stores the key in a unique
column (or index) so that the check is race-free. Computing it in Python keeps the rule in one
place: worker, queue, the chosen args, and the period bucket the insert falls in.
"""

from __future__ import annotations

import hashlib
import json
import math
from datetime import datetime
from typing import Any

from pgflow.errors import DefinitionError
from pgflow.records import NewJob
from pgflow.serialization import dumps


def unique_key(new_job: NewJob, now: datetime) -> str | None:
    """The sha256 hex key of `new_job` at `now` (the backend's clock), or None if not unique.

    With `keys`, only those args count (a missing key differs from a key set to null); with a
    `period`, the key includes floor(now / period), so a new period admits a new job.
    Raises SerializationError naming the key when the args are not JSON.
    """
    spec = new_job.unique
    if spec is None:
        return None
    if now.tzinfo is None:
        raise ValueError(f"unique_key needs a timezone-aware now, got {now!r}")
    args: Any
    if spec.keys is None:
        args = new_job.args
    else:
        args = [[key, key in new_job.args, new_job.args.get(key)] for key in sorted(spec.keys)]
    bucket: int | None = None
    if spec.period is not None:
        if not spec.period > 0 or not math.isfinite(spec.period):
            raise DefinitionError(
                f"unique period must be a positive number of seconds, got {spec.period!r}"
            )
        bucket = math.floor(now.timestamp() / spec.period)
    dumps(args, what="args")  # raises SerializationError naming the offending key
    canonical = json.dumps(
        [new_job.worker, new_job.queue, args, bucket, spec.period, spec.scope],
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()
