"""PostgreSQL: a partitioned claim as one pipelined exchange (see partition_claims).

BEGIN; the planner settings and the queue's advisory lock; the keying (see KEYING); one
statement that computes the budget (pause, holds, global limit, rate window), walks the
partitions, claims, moves the cursor and records the starts; COMMIT. Each statement reads
what the earlier ones wrote: its snapshot is taken when it starts.
"""

from __future__ import annotations

import functools
import re

from pgflow_backends.sql.partition_claims import PG_INDEX_ONLY, pg_pick_sql
from pgflow_backends.sql.queue_statements import pg_partition_sql

__all__ = ["KEYING", "SETTINGS_AND_LOCK", "partitioned_claim_sql", "positional"]

_UNFINISHED = "state IN ('available', 'scheduled', 'retryable', 'executing')"
_KEY = pg_partition_sql("args", "workflow_id", "%(p_key)s")
#: The keying, one statement, each part doing nothing unless due: every unfinished job of
#: the queue when it was keyed by another args key (or never); else the jobs inserted since
#: the last claim (ids above keyed_through up to the newest, read from the primary key) and, every
#: SWEEP_SECONDS, the available ones below it still without a key (inserts that committed
#: late). Then the control row records what was done, as of this statement's snapshot.
KEYING = f"""
WITH c AS MATERIALIZED (
    SELECT keyed_by, keyed_through, swept_at FROM pgflow_queue_controls
    WHERE queue = %(p_queue)s
),
due AS MATERIALIZED (
    SELECT NOT EXISTS (SELECT 1 FROM c WHERE keyed_by = %(p_key)s) AS rekey,
           (SELECT keyed_through FROM c WHERE keyed_by = %(p_key)s) AS through,
           (SELECT max(id) FROM pgflow_jobs) AS newest,
           EXISTS (SELECT 1 FROM c WHERE keyed_by = %(p_key)s AND (
                       swept_at IS NULL
                       OR swept_at <= clock_timestamp() - make_interval(secs => %(p_sweep)s)))
               AS sweep
),
all_keyed AS (
    UPDATE pgflow_jobs SET partition_key = {_KEY}
    WHERE (SELECT rekey FROM due) AND queue = %(p_queue)s AND {_UNFINISHED}
),
new_keyed AS (
    UPDATE pgflow_jobs SET partition_key = {_KEY}
    WHERE (SELECT newest > through FROM due)
      -- The new jobs by primary key, then theirs of the queue (OFFSET 0: no test moves
      -- into the scan, so no other index serves it): matched against the queue's index,
      -- the list would be looked for among every job of the queue.
      AND id = ANY (ARRAY(
              SELECT f.id FROM (
                  SELECT j.id, j.queue, j.partition_key, j.state FROM pgflow_jobs AS j
                  WHERE j.id > (SELECT through FROM due)
                    AND j.id <= (SELECT newest FROM due) OFFSET 0) AS f
              WHERE f.queue = %(p_queue)s AND f.partition_key IS NULL
                AND f.{_UNFINISHED}))
      AND partition_key IS NULL AND {_UNFINISHED}
),
swept AS (
    UPDATE pgflow_jobs SET partition_key = {_KEY}
    WHERE (SELECT sweep FROM due) AND queue = %(p_queue)s AND state = 'available'
      AND partition_key IS NULL AND id <= (SELECT through FROM due)
)
INSERT INTO pgflow_queue_controls
    (queue, paused, keyed_by, keyed_through, swept_at, updated_at)
SELECT %(p_queue)s, false, %(p_key)s,
       CASE WHEN rekey THEN COALESCE(newest, 0) ELSE GREATEST(through, newest) END,
       CASE WHEN rekey OR sweep THEN clock_timestamp() ELSE (SELECT swept_at FROM c) END,
       now()
FROM due WHERE rekey OR sweep OR newest > through
ON CONFLICT (queue) DO UPDATE SET
    keyed_by = excluded.keyed_by, keyed_through = excluded.keyed_through,
    swept_at = excluded.swept_at, updated_at = excluded.updated_at
"""
#: The planner settings of PG_INDEX_ONLY (a pipeline sends no multi-statement string), and
#: the queue's lock after them. The statements are prepared by the driver after a few runs:
#: planned once, then (no plan depends on the values) reused.
SETTINGS_AND_LOCK = (
    "SELECT "
    + ", ".join(
        f"set_config('{name}', 'off', true)"
        for name in re.findall(r"SET LOCAL (\w+) = off", PG_INDEX_ONLY)
    )
    + ", set_config('plan_cache_mode', 'force_generic_plan', true)"
    + ", pg_advisory_xact_lock(%(p_class)s, hashtext(%(p_queue)s))"
)


#: The jobs a shaped claim may start now: its slots, less what the global limit's executing
#: jobs and the rate window's recorded starts leave (a %-template, like the statements).
QUEUE_BUDGET = """GREATEST(0, LEAST(
            %%(p_limit)s::INTEGER,
            CASE WHEN %%(p_global)s::INTEGER IS NULL THEN %%(p_limit)s::INTEGER
                 ELSE %%(p_global)s::INTEGER - (
                     SELECT count(*) FROM pgflow_jobs
                     WHERE queue = %%(p_queue)s AND state = 'executing') END,
            CASE WHEN %%(p_allowed)s::INTEGER IS NULL THEN %%(p_limit)s::INTEGER
                 ELSE %%(p_allowed)s::INTEGER - (
                     SELECT count(*) FROM pgflow_rate_starts
                     WHERE queue = %%(p_queue)s
                       AND started_at >= clock.at - make_interval(secs => %%(p_period)s::FLOAT8)
                 ) END))"""


_CLAIM = (
    """
WITH clock AS MATERIALIZED (SELECT clock_timestamp() AS at),
budget AS MATERIALIZED (
    SELECT clock.at, c.cursor, CASE
        WHEN c.paused OR c.hold_until > clock.at THEN 0
        ELSE """
    + QUEUE_BUDGET
    + """
        END AS n
    FROM clock JOIN pgflow_queue_controls AS c ON c.queue = %%(p_queue)s
),
picked AS MATERIALIZED (
    %(pick)s
),
claimed AS (
    UPDATE pgflow_jobs
    SET state = 'executing', attempt = pgflow_jobs.attempt + 1,
        attempted_at = (SELECT at FROM budget), reserved_by = %%(p_instance)s
    -- Joined: each claimed row carries its rank for the cursor (matching the claimed ids
    -- against the picked ones cost as much as the walk).
    FROM picked
    WHERE (%%(p_incarnation)s::VARCHAR = '' OR EXISTS (
              SELECT 1 FROM pgflow_instances
              WHERE instance_id = %%(p_instance)s AND incarnation = %%(p_incarnation)s
              FOR KEY SHARE))
      AND pgflow_jobs.id = picked.id
      -- Taken meanwhile by a claim that does not shape the queue: skipped.
      AND COALESCE(pgflow_jobs.state, '') = 'available'
      AND set_config('synchronous_commit', 'off', true) IS NOT NULL
    RETURNING %(returning)s, pgflow_jobs.partition_key, picked.rnk, picked.wrapped
),
moved AS (
    -- The last job served (its round, then whether past the wrap, then its partition).
    UPDATE pgflow_queue_controls SET
        cursor = (SELECT partition_key FROM claimed
                  ORDER BY rnk DESC, wrapped DESC, partition_key DESC LIMIT 1),
        updated_at = now()
    WHERE queue = %%(p_queue)s AND EXISTS (SELECT 1 FROM claimed)
),
pruned AS (
    DELETE FROM pgflow_rate_starts
    WHERE %%(p_longest)s::FLOAT8 IS NOT NULL AND queue = %%(p_queue)s
      AND started_at < (SELECT at FROM budget) - make_interval(secs => %%(p_longest)s::FLOAT8)
      AND EXISTS (SELECT 1 FROM claimed)
),
recorded AS (
    INSERT INTO pgflow_rate_starts (queue, partition, started_at)
    SELECT %%(p_queue)s,
           CASE WHEN %%(p_prate_allowed)s::INTEGER IS NULL THEN '' ELSE partition_key END,
           (SELECT at FROM budget)
    FROM claimed WHERE %%(p_longest)s::FLOAT8 IS NOT NULL
)
SELECT claimed.*, (SELECT cursor FROM budget) FROM claimed
"""
)


@functools.cache
def partitioned_claim_sql(per_limit: bool, per_rate: bool, returning: str) -> str:
    """The claim statement for a shape (`returning`: the plain claim's RETURNING columns).
    Rows: the claim columns, the job's partition, its round and whether it came after the
    wrap, the cursor the claim started after."""
    pick = pg_pick_sql(
        per_limit,
        per_rate,
        limit="(SELECT n FROM budget)",
        at="(SELECT at FROM budget)",
        cursor="(SELECT CAST(cursor AS TEXT) FROM budget)",
    )
    # The walk's own ORDER BY ... LIMIT keeps its ids; the claim needs their ranks too.
    pick = pick.replace(
        "SELECT id FROM candidates ORDER BY", "SELECT id, k, wrapped, rnk FROM candidates ORDER BY"
    )
    pick = re.sub(r":(p_\w+)", r"%(\1)s", pick)
    return _CLAIM % {"pick": pick, "returning": returning}


@functools.cache
def positional(statement: str) -> tuple[str, tuple[str, ...]]:
    """`statement` with $1, $2, ... for its %(name)s parameters, and the names in that order:
    for a RawCursor, which sends it as it is (psycopg parses a statement this long for its
    parameters on every run: it caches only shorter ones)."""
    names: list[str] = []

    def number(match: re.Match[str]) -> str:
        if match.group(1) not in names:
            names.append(match.group(1))
        return f"${names.index(match.group(1)) + 1}"

    converted = re.sub(r"%\((\w+)\)s", number, statement).replace("%%", "%")
    return converted, tuple(names)
