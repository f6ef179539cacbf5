"""pgflow's web dashboard: queues, jobs, runs and instances, live, with optional actions.

`create_app(backend_or_url, ...)` returns an ASGI app (Starlette) to serve with uvicorn or
to mount in a Starlette or FastAPI application; `pgflow dashboard` serves one. Needs the
`pgflow[dashboard]` extra.
"""

from __future__ import annotations

try:
    import jinja2  # noqa: F401
    import starlette  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        f"pgflow.dashboard needs the dashboard extra ({exc.name} is missing): "
        "pip install 'pgflow[dashboard]'"
    ) from exc

from pgflow.dashboard.app import create_app

__all__ = ["create_app"]
