"""`create_app`: the dashboard as an ASGI application (Starlette), standalone or mounted.

One `Dashboard` object holds what every request needs: the store and its read model, the
access rules and session signer, the renderer, and an unstarted `pgflow.Pgflow` whose
operations (retry, cancel, pause, resume, cancel/resume/restart runs, signal) the actions
call, so the dashboard changes nothing the library would not.
"""

from __future__ import annotations

import importlib
import logging
import secrets
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from pgflow.app import Pgflow
from pgflow.backend import Backend
from pgflow.dashboard.auth import SESSION_COOKIE, Access, Session, Sessions
from pgflow.dashboard.readmodel import ReadModel
from pgflow.dashboard.rendering import Renderer, secure
from pgflow.errors import BackendError, DefinitionError
from pgflow.inspection import inspection_for

__all__ = ["Dashboard", "create_app"]

logger = logging.getLogger("pgflow.dashboard")

STATIC = Path(__file__).parent / "static"
FLASH_COOKIE = "pgflow_flash"
#: Paths served to everyone even when reads are protected (the login form needs its assets).
PUBLIC_PATHS = ("/login", "/static/", "/healthz")


class Dashboard:
    """Everything a request of the dashboard needs, shared by its handlers."""

    def __init__(
        self,
        pgflow: Pgflow,
        *,
        access: Access,
        sessions: Sessions,
        cache_seconds: float,
        title: str,
    ) -> None:
        self.pgflow = pgflow
        self.backend: Backend = pgflow.backend
        self.access = access
        self.sessions = sessions
        self.read = ReadModel(self.backend, inspection_for(self.backend), cache_seconds)
        self.renderer = Renderer()
        self.title = title
        if cache_seconds > 0:
            threading.Thread(
                target=self.read.warm, name="pgflow-dashboard-warm", daemon=True
            ).start()

    # --- per request -----------------------------------------------------------------------

    @staticmethod
    def root(request: Request) -> str:
        """The mount point's path ("" at the top), which every link starts with."""
        return str(request.scope.get("root_path", "")).rstrip("/")

    @staticmethod
    def session(request: Request) -> Session | None:
        found: Session | None = getattr(request.state, "session", None)
        return found

    def context(self, request: Request, **values: Any) -> dict[str, Any]:
        """What every template gets: links, who is there, what they may do, the flash."""
        session = self.session(request)
        flash = self.sessions.unseal("flash", request.cookies.get(FLASH_COOKIE))
        return {
            "root": self.root(request),
            "title": self.title,
            "request_path": request.url.path,
            "csrf_token": "" if session is None else self.sessions.csrf_token(session),
            "signed_in": self.access.authenticated(request, session),
            "can_sign_in": self.access.can_sign_in,
            "actions_enabled": self.access.allow_actions,
            "can_act": self.access.may_act(request, session),
            "flash": flash,
            **values,
        }

    def page(self, request: Request, template: str, status: int = 200, **values: Any) -> Response:
        fragment = request.query_params.get("fragment") == "live"
        response = self.renderer.page(
            template, self.context(request, **values), fragment=fragment, status=status
        )
        if not fragment and FLASH_COOKIE in request.cookies:
            response.delete_cookie(FLASH_COOKIE, path=self.cookie_path(request))
        return response

    def cookie_path(self, request: Request) -> str:
        return self.root(request) or "/"

    def redirect(
        self, request: Request, path: str, message: str | None = None, ok: bool = True
    ) -> Response:
        """303 to `path` (under the mount root), with a one-time message for that page."""
        response = RedirectResponse(self.root(request) + path, status_code=303)
        if message is not None:
            response.set_cookie(
                FLASH_COOKIE,
                self.sessions.seal("flash", {"message": message, "ok": ok}),
                path=self.cookie_path(request),
                httponly=True,
                samesite="strict",
                secure=request.url.scheme == "https",
            )
        return secure(response)

    def set_session(self, request: Request, response: Response, session: Session) -> None:
        request.state.session = session
        request.state.session_set = True
        response.set_cookie(
            SESSION_COOKIE,
            self.sessions.encode(session),
            max_age=int(self.sessions.lifetime),
            path=self.cookie_path(request),
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )


class SessionMiddleware(BaseHTTPMiddleware):
    """Reads the session cookie (giving a new browser an anonymous session, whose id its
    CSRF tokens derive from), enforces `protect_reads`, and adds the security headers."""

    def __init__(self, app: Any, dashboard: Dashboard) -> None:
        super().__init__(app)
        self.dashboard = dashboard

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        board = self.dashboard
        session = board.sessions.decode(request.cookies.get(SESSION_COOKIE))
        fresh = session is None
        if session is None:
            session = board.sessions.new(signed_in=False)
        request.state.session = session
        path = request.url.path[len(board.root(request)) :] or "/"
        if not path.startswith(PUBLIC_PATHS) and not board.access.may_read(request, session):
            if request.method == "GET" and board.access.can_sign_in:
                response: Response = RedirectResponse(board.root(request) + "/login", 303)
            else:
                response = PlainTextResponse("sign in to read this dashboard", 401)
        else:
            response = await call_next(request)
        if fresh and not getattr(request.state, "session_set", False):
            board.set_session(request, response, session)
        return secure(response, private=False)


def _open(backend_or_url: Any) -> Pgflow:
    """An unstarted Pgflow on the store: its operations are the dashboard's actions."""
    if isinstance(backend_or_url, Pgflow):
        return backend_or_url
    return Pgflow(backend_or_url)


def create_app(
    backend_or_url: Any,
    authorize: Callable[[Request], bool] | None = None,
    allow_actions: bool = False,
    *,
    token: str | None = None,
    secret: bytes | str | None = None,
    protect_reads: bool = False,
    imports: Iterable[str] = (),
    flows: Iterable[Any] = (),
    cache_seconds: float = 5.0,
    title: str = "pgflow",
) -> Starlette:
    """The dashboard as an ASGI app, for `uvicorn` or to mount in a Starlette/FastAPI app.

    `backend_or_url`: a database URL, an SQLAlchemy Engine, a backend or a `pgflow.Pgflow`.
    Read-only unless `allow_actions`; actions then need an authenticated caller: one whose
    `authorize(request)` is true, or who sent `token` (login form, or a Bearer header).
    `protect_reads` asks the same of every page. `secret` signs session cookies (random per
    process by default: sessions end with it). `imports` (modules) and `flows` make flow
    definitions known, so failed runs can be resumed and finished ones restarted here.
    `cache_seconds`: how long counts and throughput are reused between requests.
    """
    if allow_actions and token is None and authorize is None:
        raise DefinitionError(
            "create_app: allow_actions needs a way to authenticate callers: token=... "
            "and/or authorize=..."
        )
    if protect_reads and token is None and authorize is None:
        raise DefinitionError("create_app: protect_reads needs token=... and/or authorize=...")
    if token is not None and (not isinstance(token, str) or len(token) < 8):
        raise DefinitionError("create_app: token must be a string of at least 8 characters")
    if authorize is not None and not callable(authorize):
        raise DefinitionError("create_app: authorize must be a callable (request) -> bool")
    if (
        isinstance(cache_seconds, bool)
        or not isinstance(cache_seconds, (int, float))
        or (cache_seconds < 0)
    ):
        raise DefinitionError(f"create_app: cache_seconds must be >= 0, got {cache_seconds!r}")
    for module in imports:
        importlib.import_module(module)
    _register(flows)
    raw_secret = secret.encode() if isinstance(secret, str) else secret
    dashboard = Dashboard(
        _open(backend_or_url),
        access=Access(allow_actions, token, authorize, protect_reads),
        sessions=Sessions(raw_secret or secrets.token_bytes(32)),
        cache_seconds=float(cache_seconds),
        title=title,
    )
    from pgflow.dashboard.actions import action_routes
    from pgflow.dashboard.pages import page_routes

    routes: list[Route | Mount] = [
        *page_routes(dashboard),
        *action_routes(dashboard),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]

    async def store_unavailable(request: Request, exc: Exception) -> Response:
        """The store failed (down, unreachable, not migrated): say so, 503, no traceback."""
        logger.warning("dashboard: the store failed: %s", exc, extra={"path": request.url.path})
        return dashboard.renderer.page(
            "error.html",
            {
                **dashboard.context(request),
                "heading": "The store is unavailable",
                "message": str(exc),
            },
            status=503,
        )

    app = Starlette(
        routes=routes,
        middleware=[Middleware(SessionMiddleware, dashboard=dashboard)],
        exception_handlers={BackendError: store_unavailable},
    )
    app.state.dashboard = dashboard
    return app


def _register(flows: Iterable[Any]) -> None:
    from pgflow.definition import resolve_workflow
    from pgflow.graph.registry import flows as registry

    for flow in flows:
        registry.add_workflow(resolve_workflow(flow))
