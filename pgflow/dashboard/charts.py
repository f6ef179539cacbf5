"""The overview's small throughput chart: one bar a minute, completed over failed, as SVG.

Drawn on the server (no chart library, no script), with classes the stylesheet colours, so
the Content-Security-Policy needs no inline styles.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from markupsafe import Markup, escape

__all__ = ["throughput_chart"]

BAR_WIDTH = 2
HEIGHT = 24


def throughput_chart(buckets: Sequence[tuple[datetime, int, int]], queue: str) -> Markup:
    """Bars of completed (class "done") and failed (class "failed") jobs per bucket."""
    peak = max((done + failed for _, done, failed in buckets), default=0)
    width = BAR_WIDTH * max(len(buckets), 1)
    done_total = sum(done for _, done, _ in buckets)
    failed_total = sum(failed for _, _, failed in buckets)
    label = f"{queue}: {done_total} completed, {failed_total} failed in the last hour"
    parts = [
        f'<svg class="throughput" viewBox="0 0 {width} {HEIGHT}" width="{width}" '
        f'height="{HEIGHT}" role="img" aria-label="{escape(label)}">',
        f"<title>{escape(label)}</title>",
    ]
    for index, (start, done, failed) in enumerate(buckets):
        if peak == 0 or done + failed == 0:
            continue
        x = index * BAR_WIDTH
        done_h = round(HEIGHT * done / peak, 2)
        failed_h = round(HEIGHT * failed / peak, 2)
        when = escape(start.strftime("%H:%M"))
        if done:
            parts.append(
                f'<rect class="done" x="{x}" y="{HEIGHT - done_h}" width="{BAR_WIDTH}" '
                f'height="{done_h}"><title>{when}: {done} completed</title></rect>'
            )
        if failed:
            parts.append(
                f'<rect class="failed" x="{x}" y="{HEIGHT - done_h - failed_h}" '
                f'width="{BAR_WIDTH}" height="{failed_h}"><title>{when}: {failed} failed'
                "</title></rect>"
            )
    parts.append("</svg>")
    return Markup("".join(parts))
