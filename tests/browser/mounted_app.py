"""A host application with the dashboard mounted at /pgflow behind the host's own sign-in
(the `authorize` hook), served by uvicorn in the browser tests: `PGFLOW_URL` names the store.

The host's "sign-in" is a bare cookie, standing in for whatever login an application has;
the dashboard only asks the hook whether this request may act.
"""

from __future__ import annotations

import os

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route

from pgflow.dashboard import create_app

USER_COOKIE = "host_user"


def is_operator(request: Request) -> bool:
    """The host's rule for who may act on the dashboard."""
    return request.cookies.get(USER_COOKIE) == "operator"


async def home(request: Request) -> Response:
    return HTMLResponse('<h1 id="host">Host</h1><a id="to-dashboard" href="/pgflow/">Jobs</a>')


async def sign_in(request: Request) -> Response:
    response = RedirectResponse("/pgflow/", status_code=303)
    response.set_cookie(USER_COOKIE, "operator", httponly=True, samesite="lax")
    return response


app = Starlette(
    routes=[
        Route("/", home),
        Route("/signin", sign_in),
        Mount(
            "/pgflow",
            app=create_app(
                os.environ["PGFLOW_URL"],
                authorize=is_operator,
                allow_actions=True,
                imports=["tests.browser.flows"],
                # Counts reused for 1 s (5 s by default), so the live-count test waits little.
                cache_seconds=1.0,
            ),
        ),
    ]
)
