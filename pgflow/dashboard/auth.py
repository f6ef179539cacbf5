"""Who may act on the dashboard: sessions in a signed cookie, the token, the `authorize` hook,
CSRF tokens tied to the session, and the same-origin check on every POST.

Reading needs no sign-in unless the dashboard is told so (`protect_reads`); an action needs
`allow_actions` and an authenticated caller. A browser signs in with the token through the
login form, which gives it a session cookie (HttpOnly, SameSite=Strict, signed with
HMAC-SHA256); an API client sends `Authorization: Bearer TOKEN`; an application that mounts
the dashboard behind its own login passes `authorize(request) -> bool`. Every browser POST
carries a CSRF token derived from the session id (a new id at sign-in), and a request whose
Origin or Referer names another site is refused before anything else.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import attrs
from starlette.requests import Request

__all__ = ["Access", "Session", "Sessions"]

SESSION_COOKIE = "pgflow_session"
#: A session (signed in or not) lasts this long without a new sign-in.
SESSION_SECONDS = 12 * 3600


@attrs.frozen
class Session:
    """A browser's session: a random id (the CSRF token derives from it), signed in or not."""

    sid: str
    signed_in: bool
    expires: float


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Sessions:
    """Signs and reads session cookies and the CSRF tokens of sessions, with one secret."""

    def __init__(self, secret: bytes, lifetime: float = SESSION_SECONDS) -> None:
        if len(secret) < 16:
            raise ValueError("the dashboard's session secret must be at least 16 bytes")
        self._secret = secret
        self.lifetime = lifetime

    def _sign(self, purpose: str, payload: bytes) -> bytes:
        return hmac.new(self._secret, purpose.encode() + b"\0" + payload, hashlib.sha256).digest()

    def new(self, *, signed_in: bool) -> Session:
        return Session(secrets.token_urlsafe(18), signed_in, time.time() + self.lifetime)

    def seal(self, purpose: str, data: dict[str, Any]) -> str:
        """`data` as cookie text, signed for `purpose` (readable, not forgeable)."""
        payload = json.dumps(data, separators=(",", ":")).encode()
        return f"{_b64(payload)}.{_b64(self._sign(purpose, payload))}"

    def unseal(self, purpose: str, value: str | None) -> dict[str, Any] | None:
        """What `seal(purpose, ...)` wrote; None when absent, forged or malformed."""
        if not value or value.count(".") != 1:
            return None
        body, signature = value.split(".")
        try:
            payload, mac = _unb64(body), _unb64(signature)
        except ValueError:
            return None
        if not hmac.compare_digest(mac, self._sign(purpose, payload)):
            return None
        try:
            data = json.loads(payload)
        except (ValueError, RecursionError):
            return None
        return data if isinstance(data, dict) else None

    def encode(self, session: Session) -> str:
        return self.seal(
            "session", {"sid": session.sid, "in": session.signed_in, "exp": session.expires}
        )

    def decode(self, value: str | None) -> Session | None:
        """The session a cookie holds; None when absent, forged, malformed or expired."""
        data = self.unseal("session", value)
        if data is None:
            return None
        try:
            session = Session(str(data["sid"]), bool(data["in"]), float(data["exp"]))
        except (ValueError, KeyError, TypeError):
            return None
        return session if session.expires > time.time() else None

    def csrf_token(self, session: Session) -> str:
        return _b64(self._sign("csrf", session.sid.encode()))

    def csrf_ok(self, session: Session | None, token: object) -> bool:
        if session is None or not isinstance(token, str) or not token:
            return False
        return hmac.compare_digest(token, self.csrf_token(session))


def _host_of(url: str) -> str | None:
    """The host[:port] of an absolute URL. Schemes are not compared: behind a proxy that
    ends TLS the app sees http while the browser says https."""
    parts = urlsplit(url)
    if not parts.scheme or not parts.netloc:
        return None
    return parts.netloc.lower()


@attrs.frozen
class Access:
    """The dashboard's access rules (see the module docstring)."""

    allow_actions: bool
    token: str | None
    authorize: Callable[[Request], bool] | None
    protect_reads: bool = False

    def token_matches(self, candidate: object) -> bool:
        if self.token is None or not isinstance(candidate, str) or not candidate:
            return False
        return hmac.compare_digest(candidate.encode(), self.token.encode())

    def bearer(self, request: Request) -> bool:
        """True when the request carries `Authorization: Bearer <the token>`."""
        header = request.headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        return scheme.lower() == "bearer" and self.token_matches(value.strip())

    def authenticated(self, request: Request, session: Session | None) -> bool:
        if self.bearer(request):
            return True
        if session is not None and session.signed_in:
            return True
        return self.authorize is not None and bool(self.authorize(request))

    def may_read(self, request: Request, session: Session | None) -> bool:
        return not self.protect_reads or self.authenticated(request, session)

    def may_act(self, request: Request, session: Session | None) -> bool:
        return self.allow_actions and self.authenticated(request, session)

    @property
    def can_sign_in(self) -> bool:
        """The login form is offered only where a token exists to sign in with."""
        return self.token is not None


def same_origin(request: Request) -> bool:
    """False when the browser says the request comes from another site (Sec-Fetch-Site,
    Origin, or else Referer); True when it says nothing (not a browser, or an old one)."""
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return False
    own = request.headers.get("host", request.url.netloc).lower()
    origin = request.headers.get("origin")
    if origin is not None:
        return origin != "null" and _host_of(origin) == own
    referer = request.headers.get("referer")
    if referer is not None:
        return _host_of(referer) == own
    return True
