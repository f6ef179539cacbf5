"""HTML out: the Jinja environment (autoescape on for every template), the headers every
response carries, and the few filters the templates use.

Pages hold job data, so they are never cached (`no-store`); the Content-Security-Policy
allows scripts and styles from the dashboard's own static files only (no inline script),
and no site may frame the dashboard.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlencode

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from starlette.responses import HTMLResponse, Response

__all__ = ["SECURITY_HEADERS", "Renderer", "secure"]

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


def secure(response: Response, *, private: bool = True) -> Response:
    """Add the security headers (and no-store for pages holding job data)."""
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    if private:
        response.headers["Cache-Control"] = "no-store"
    return response


def _when(value: datetime | None) -> str:
    if value is None:
        return "—"
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _pretty(value: Any) -> str:
    """JSON for reading: indented, keys in stored order, non-ASCII kept."""
    return json.dumps(value, indent=2, ensure_ascii=False, default=str)


def _compact(value: Any) -> str:
    """JSON on one line, for previews in tables (escaped like any text by the template)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


def _seconds(start: datetime | None, end: datetime | None) -> str:
    if start is None or end is None:
        return "—"
    delta = (end - start).total_seconds()
    return f"{delta * 1000:.0f} ms" if delta < 1 else f"{delta:.1f} s"


def _part(value: object) -> str:
    """One URL path segment (a queue name, a run id): every reserved character quoted."""
    return quote(str(value), safe="")


def _query(values: dict[str, Any]) -> str:
    return urlencode({key: value for key, value in values.items() if value not in (None, "")})


class Renderer:
    """Renders the package's templates into responses."""

    def __init__(self) -> None:
        self.env = Environment(
            loader=PackageLoader("pgflow.dashboard", "templates"),
            autoescape=select_autoescape(default=True, default_for_string=True),
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.filters.update(
            when=_when, pretty=_pretty, compact=_compact, part=_part, query=_query
        )
        self.env.globals.update(duration=_seconds)

    def page(
        self, template: str, context: dict[str, Any], *, fragment: bool = False, status: int = 200
    ) -> Response:
        """The whole page, or with `fragment` only its content block (what live updates
        swap in)."""
        compiled = self.env.get_template(template)
        if fragment:
            block = compiled.blocks["content"]
            html = "".join(block(compiled.new_context(context)))
        else:
            html = compiled.render(context)
        return secure(HTMLResponse(html, status_code=status))
