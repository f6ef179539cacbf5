"""How long a SQL backend's claim counts a rate window: its period plus a margin.

A claim records its starts at the database's clock, but each job's perform begins some
milliseconds later, by a delay that varies from claim to claim and process to process. Were
claims spaced exactly one period apart, a window measured on perform start times could hold
the starts of two claims. Counting the starts of the period plus a margin keeps consecutive
full claims that much further apart, so perform start times keep the limit too, unless their
delays differ by more than the margin. The margin is small so that the throughput it costs
is too (at most RATE_MARGIN_SHARE). The memory backend, in one process, counts exactly.
"""

from __future__ import annotations

__all__ = ["RATE_MARGIN_SECONDS", "RATE_MARGIN_SHARE", "counted_window"]

#: The margin: this share of the period ...
RATE_MARGIN_SHARE = 0.015
#: ... but never more than this many seconds (a long window needs no more).
RATE_MARGIN_SECONDS = 0.025


def counted_window(period: float) -> float:
    """The seconds of recorded starts a claim counts against a window of `period`."""
    return period + min(period * RATE_MARGIN_SHARE, RATE_MARGIN_SECONDS)
