"""The dashboard's actions (POST): retry, cancel or delete a job; pause or resume a queue;
cancel, resume, restart or signal a run; sign in and out.

Every action is checked in the same order: same origin, actions enabled, an authenticated
caller, a CSRF token matching the session (not asked of Bearer callers: a browser cannot
send that header to another site). Then the library's own operation runs, and the browser
is sent back (303) to the page with a one-time message saying what happened.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from pgflow.dashboard.auth import same_origin
from pgflow.errors import PgflowError

if TYPE_CHECKING:
    from pgflow.dashboard.app import Dashboard

__all__ = ["action_routes"]

logger = logging.getLogger("pgflow.dashboard")

#: The result of an action: where to go back to, and what to tell.
Outcome = tuple[str, str]
Perform = Callable[[dict[str, Any], FormData], Outcome]


def action_routes(board: Dashboard) -> list[Route]:
    actions = Actions(board)
    table: list[tuple[str, str, Perform]] = [
        ("/jobs/{job_id}/retry", "retry", actions.retry),
        ("/jobs/{job_id}/cancel", "cancel", actions.cancel),
        ("/jobs/{job_id}/delete", "delete", actions.delete),
        ("/queues/{name}/pause", "pause", actions.pause),
        ("/queues/{name}/resume", "resume", actions.resume),
        ("/runs/{run_id}/cancel", "run-cancel", actions.run_cancel),
        ("/runs/{run_id}/resume", "run-resume", actions.run_resume),
        ("/runs/{run_id}/restart", "run-restart", actions.run_restart),
        ("/runs/{run_id}/signal", "run-signal", actions.run_signal),
    ]
    routes = [
        Route(path, actions.endpoint(name, perform), methods=["POST"], name=name)
        for path, name, perform in table
    ]
    routes += [
        Route("/login", actions.login, methods=["POST"], name="login-post"),
        Route("/logout", actions.logout, methods=["POST"], name="logout"),
    ]
    return routes


def _job_id(params: dict[str, Any]) -> int:
    raw = str(params["job_id"])
    if not raw.isdigit() or len(raw) > 18:
        raise PgflowError(f"{raw!r} is not a job id")
    return int(raw)


#: Path parameters as pgflow's log fields (a record's own "name" must not be overwritten).
_LOG_FIELDS = {"job_id": "job_id", "name": "queue", "run_id": "workflow_id"}


def _log_fields(params: dict[str, Any]) -> dict[str, str]:
    return {_LOG_FIELDS[key]: str(value) for key, value in params.items() if key in _LOG_FIELDS}


def _refused(status: int, message: str) -> Response:
    from pgflow.dashboard.rendering import secure

    return secure(PlainTextResponse(message, status_code=status))


class Actions:
    """The POST handlers, bound to one dashboard."""

    def __init__(self, board: Dashboard) -> None:
        self.board = board

    def endpoint(self, name: str, perform: Perform) -> Callable[[Request], Any]:
        async def handle(request: Request) -> Response:
            board = self.board
            if not same_origin(request):
                return _refused(403, "refused: this request comes from another site")
            if not board.access.allow_actions:
                return _refused(403, "actions are disabled on this dashboard (--allow-actions)")
            session = board.session(request)
            if not board.access.authenticated(request, session):
                return _refused(403, "sign in to act on this dashboard")
            form = await request.form()
            if not board.access.bearer(request) and not board.sessions.csrf_ok(
                session, form.get("csrf_token")
            ):
                return _refused(403, "refused: missing or wrong CSRF token; reload the page")
            params = dict(request.path_params)
            try:
                back, message = await run_in_threadpool(perform, params, form)
                ok = True
            except PgflowError as exc:
                back, message, ok = self._back(name, params), str(exc), False
            finally:
                board.read.cache.clear()
            logger.info(
                "dashboard action %s: %s",
                name,
                message,
                extra={"action": name, "ok": ok, **_log_fields(params)},
            )
            return board.redirect(request, back, message, ok)

        handle.__name__ = f"action_{name.replace('-', '_')}"
        return handle

    @staticmethod
    def _back(name: str, params: dict[str, Any]) -> str:
        from urllib.parse import quote

        if "job_id" in params:
            return f"/jobs/{quote(str(params['job_id']), safe='')}"
        if "name" in params:
            return f"/queues/{quote(str(params['name']), safe='')}"
        return f"/runs/{quote(str(params.get('run_id', '')), safe='')}"

    # --- jobs ------------------------------------------------------------------------------

    def retry(self, params: dict[str, Any], form: FormData) -> Outcome:
        job = self.board.pgflow.retry(_job_id(params))
        if job is None:
            raise PgflowError(f"no job {params['job_id']}")
        return self._back("retry", params), f"job {job.id} is {job.state.value}"

    def cancel(self, params: dict[str, Any], form: FormData) -> Outcome:
        job = self.board.pgflow.cancel(_job_id(params))
        if job is None:
            raise PgflowError(f"no job {params['job_id']}")
        if job.state.value == "executing":
            return self._back("cancel", params), f"job {job.id}: cancellation requested"
        return self._back("cancel", params), f"job {job.id} is {job.state.value}"

    def delete(self, params: dict[str, Any], form: FormData) -> Outcome:
        job_id = _job_id(params)
        if not self.board.read.inspection.delete_job(job_id):
            raise PgflowError(f"no job {job_id}")
        return "/jobs", f"job {job_id} deleted"

    # --- queues ----------------------------------------------------------------------------

    def pause(self, params: dict[str, Any], form: FormData) -> Outcome:
        self.board.pgflow.pause_queue(params["name"])
        return self._back("pause", params), f"queue {params['name']} paused"

    def resume(self, params: dict[str, Any], form: FormData) -> Outcome:
        self.board.pgflow.resume_queue(params["name"])
        return self._back("resume", params), f"queue {params['name']} resumed"

    # --- runs ------------------------------------------------------------------------------

    def run_cancel(self, params: dict[str, Any], form: FormData) -> Outcome:
        run = self.board.pgflow.cancel_run(params["run_id"])
        return self._back("", params), f"run {run.workflow_id} is {run.state.value}"

    def run_resume(self, params: dict[str, Any], form: FormData) -> Outcome:
        handle = self.board.pgflow.resume_run(params["run_id"])
        return self._back("", params), f"run {handle.workflow_id} resumed"

    def run_restart(self, params: dict[str, Any], form: FormData) -> Outcome:
        from urllib.parse import quote

        from_step = str(form.get("from_step") or "").strip() or None
        handle = self.board.pgflow.restart_run(params["run_id"], from_step=from_step)
        return (
            f"/runs/{quote(handle.workflow_id, safe='')}",
            f"run {params['run_id']} restarted as {handle.workflow_id}",
        )

    def run_signal(self, params: dict[str, Any], form: FormData) -> Outcome:
        name = str(form.get("name") or "").strip()
        if not name:
            raise PgflowError("a signal needs the name of the wait step it is for")
        text = str(form.get("payload") or "").strip() or "null"
        try:
            payload = json.loads(text)
        except ValueError as exc:
            raise PgflowError(f"the signal's payload is not JSON: {exc}") from None
        except RecursionError:  # nested deeper than the parser recurses: no action takes it
            raise PgflowError("the signal's payload is not JSON: nested too deeply") from None
        delivered = self.board.pgflow.signal(params["run_id"], name, payload)
        verb = "delivered to" if delivered else "kept for"
        return self._back("", params), f"signal {verb} step {name}"

    # --- signing in ------------------------------------------------------------------------

    async def login(self, request: Request) -> Response:
        board = self.board
        if not same_origin(request):
            return _refused(403, "refused: this request comes from another site")
        if not board.access.can_sign_in:
            return _refused(404, "this dashboard has no token to sign in with")
        form = await request.form()
        session = board.session(request)
        if not board.sessions.csrf_ok(session, form.get("csrf_token")):
            return _refused(403, "refused: missing or wrong CSRF token; reload the page")
        if not board.access.token_matches(form.get("token")):
            logger.warning("dashboard sign-in refused: wrong token", extra={"action": "login"})
            return board.page(request, "login.html", status=403, next="/", wrong=True)
        target = str(form.get("next") or "/")
        if not target.startswith("/") or target.startswith("//"):
            target = "/"  # only paths of this dashboard: no open redirect
        response = board.redirect(request, target, "signed in")
        board.set_session(request, response, board.sessions.new(signed_in=True))
        return response

    async def logout(self, request: Request) -> Response:
        board = self.board
        if not same_origin(request):
            return _refused(403, "refused: this request comes from another site")
        form = await request.form()
        if not board.sessions.csrf_ok(board.session(request), form.get("csrf_token")):
            return _refused(403, "refused: missing or wrong CSRF token; reload the page")
        response = board.redirect(request, "/", "signed out")
        board.set_session(request, response, board.sessions.new(signed_in=False))
        return response
