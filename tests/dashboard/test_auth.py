"""Who may act: read-only by default, actions only for an authenticated caller (token login,
Bearer, the authorize hook), every browser POST with the session's CSRF token and from the
dashboard's own origin. Access rules do not depend on the store: memory only."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from starlette.requests import Request
from starlette.testclient import TestClient

import pgflow
from pgflow.dashboard import create_app
from pgflow.errors import DefinitionError
from pgflow.records import JobState
from pgflow_backends.memory import InMemoryBackend
from tests.dashboard import flows
from tests.dashboard.conftest import TOKEN, csrf_of

EVIL = "http://evil.test"


@pytest.fixture
def app() -> Iterator[pgflow.Pgflow]:
    with pgflow.Pgflow(InMemoryBackend()) as made:
        yield made


@pytest.fixture
def job(app: pgflow.Pgflow) -> int:
    return app.insert(flows.Idle.new({"to": "x"})).id


def _client(app: pgflow.Pgflow, **options: object) -> TestClient:
    return TestClient(create_app(app, cache_seconds=0, **options), base_url="http://dash.test")


def _login(browser: TestClient, token: str = TOKEN) -> int:
    form = browser.get("/login")
    response = browser.post(
        "/login",
        data={"token": token, "csrf_token": csrf_of(form.text), "next": "/"},
        follow_redirects=False,
    )
    return response.status_code


def _cancel(browser: TestClient, job: int, csrf: str | None, **headers: str) -> int:
    data = {} if csrf is None else {"csrf_token": csrf}
    response = browser.post(
        f"/jobs/{job}/cancel", data=data, headers=headers, follow_redirects=False
    )
    return response.status_code


def _state(app: pgflow.Pgflow, job: int) -> JobState:
    found = app.get_job(job)
    assert found is not None
    return found.state


def test_read_only_by_default_refuses_every_action(app: pgflow.Pgflow, job: int) -> None:
    with _client(app) as browser:
        page = browser.get(f"/jobs/{job}").text
        assert "data-action" not in page
        assert "read-only" in page
        csrf = csrf_of(browser.get("/").text) if "csrf_token" in page else "x"
        for path in (f"/jobs/{job}/cancel", f"/jobs/{job}/delete", "/queues/mail/pause"):
            assert browser.post(path, data={"csrf_token": csrf}).status_code == 403
        assert browser.get("/login").status_code == 404  # no token: nothing to sign in with
    assert _state(app, job) is JobState.AVAILABLE


def test_actions_need_a_way_to_authenticate(app: pgflow.Pgflow) -> None:
    with pytest.raises(DefinitionError, match="allow_actions needs"):
        create_app(app, allow_actions=True)
    with pytest.raises(DefinitionError, match="at least 8"):
        create_app(app, allow_actions=True, token="short")
    with pytest.raises(DefinitionError, match="protect_reads needs"):
        create_app(app, protect_reads=True)


def test_token_login_then_csrf_protected_actions(app: pgflow.Pgflow, job: int) -> None:
    with _client(app, allow_actions=True, token=TOKEN) as browser:
        anonymous = browser.get(f"/jobs/{job}").text
        assert "data-action" not in anonymous  # actions on, but nobody signed in
        assert _cancel(browser, job, csrf_of(_login_form(browser))) == 403
        assert _login(browser, "wrong-token-xyz") == 403
        assert _login(browser) == 303
        page = browser.get(f"/jobs/{job}").text
        assert 'data-action="cancel"' in page
        assert 'data-action="retry"' in page and 'data-action="delete"' in page
        csrf = csrf_of(page.split('class="actions"', 1)[1])
        assert _cancel(browser, job, None) == 403  # missing
        assert _cancel(browser, job, "forged") == 403  # wrong
        assert _state(app, job) is JobState.AVAILABLE
        done = browser.post(f"/jobs/{job}/cancel", data={"csrf_token": csrf})
        assert done.status_code == 200  # followed the 303 back to the job
        assert done.url.path == f"/jobs/{job}"
        assert 'class="flash ok"' in done.text and "cancelled" in done.text
    assert _state(app, job) is JobState.CANCELLED


def test_a_csrf_token_of_another_session_is_refused(app: pgflow.Pgflow, job: int) -> None:
    with _client(app, allow_actions=True, token=TOKEN, secret="s" * 32) as other:
        other_csrf = csrf_of(_login_form(other))
    with _client(app, allow_actions=True, token=TOKEN, secret="s" * 32) as browser:
        assert _login(browser) == 303
        assert _cancel(browser, job, other_csrf) == 403
    assert _state(app, job) is JobState.AVAILABLE


def _login_form(browser: TestClient) -> str:
    return browser.get("/login").text


def test_cross_origin_posts_are_refused(app: pgflow.Pgflow, job: int) -> None:
    with _client(app, allow_actions=True, token=TOKEN) as browser:
        assert _login(browser) == 303
        csrf = csrf_of(browser.get(f"/jobs/{job}").text)
        assert _cancel(browser, job, csrf, origin=EVIL) == 403
        assert _cancel(browser, job, csrf, origin="null") == 403
        assert _cancel(browser, job, csrf, referer=f"{EVIL}/page") == 403
        assert _cancel(browser, job, csrf, **{"sec-fetch-site": "cross-site"}) == 403
        assert _state(app, job) is JobState.AVAILABLE
        assert _cancel(browser, job, csrf, origin="http://dash.test") == 303
    assert _state(app, job) is JobState.CANCELLED


def test_a_login_from_another_site_is_refused(app: pgflow.Pgflow) -> None:
    with _client(app, allow_actions=True, token=TOKEN) as browser:
        csrf = csrf_of(browser.get("/login").text)
        refused = browser.post(
            "/login",
            data={"token": TOKEN, "csrf_token": csrf},
            headers={"origin": EVIL},
            follow_redirects=False,
        )
        assert refused.status_code == 403


def test_bearer_token_acts_without_a_session(app: pgflow.Pgflow, job: int) -> None:
    with _client(app, allow_actions=True, token=TOKEN) as api:
        wrong = {"authorization": "Bearer not-the-token"}
        assert api.post(f"/jobs/{job}/cancel", headers=wrong).status_code == 403
        right = {"authorization": f"Bearer {TOKEN}"}
        response = api.post(f"/jobs/{job}/cancel", headers=right, follow_redirects=False)
        assert response.status_code == 303
    assert _state(app, job) is JobState.CANCELLED


def test_authorize_hook_for_mounting_applications(app: pgflow.Pgflow, job: int) -> None:
    def admins(request: Request) -> bool:
        return request.headers.get("x-user") == "admin"

    with _client(app, authorize=admins, allow_actions=True) as browser:
        assert "data-action" not in browser.get(f"/jobs/{job}").text
        page = browser.get(f"/jobs/{job}", headers={"x-user": "admin"}).text
        assert 'data-action="cancel"' in page
        csrf = csrf_of(page.split('class="actions"', 1)[1])
        assert _cancel(browser, job, csrf) == 403  # not approved by the hook
        assert _cancel(browser, job, None, **{"x-user": "admin"}) == 403  # no CSRF token
        assert _cancel(browser, job, csrf, **{"x-user": "admin"}) == 303
        assert browser.get("/login").status_code == 404  # no token: no login form
    assert _state(app, job) is JobState.CANCELLED


def test_logout_ends_the_session(app: pgflow.Pgflow, job: int) -> None:
    with _client(app, allow_actions=True, token=TOKEN) as browser:
        assert _login(browser) == 303
        page = browser.get("/").text
        assert 'id="logout-submit"' in page
        out = browser.post("/logout", data={"csrf_token": csrf_of(page)}, follow_redirects=False)
        assert out.status_code == 303
        after = browser.get(f"/jobs/{job}").text
        assert "data-action" not in after
        assert _cancel(browser, job, csrf_of(_login_form(browser))) == 403
    assert _state(app, job) is JobState.AVAILABLE


def test_a_tampered_session_cookie_is_a_new_anonymous_session(app: pgflow.Pgflow) -> None:
    with _client(app, allow_actions=True, token=TOKEN) as browser:
        assert _login(browser) == 303
        cookie = browser.cookies["pgflow_session"]
        body, signature = cookie.split(".")
        browser.cookies.set("pgflow_session", body + "." + signature[::-1], domain="dash.test")
        assert "data-action" not in browser.get("/").text


def test_login_redirects_only_within_the_dashboard(app: pgflow.Pgflow) -> None:
    with _client(app, allow_actions=True, token=TOKEN) as browser:
        csrf = csrf_of(browser.get("/login").text)
        response = browser.post(
            "/login",
            data={"token": TOKEN, "csrf_token": csrf, "next": "//evil.test/x"},
            follow_redirects=False,
        )
        assert response.status_code == 303
        assert response.headers["location"] == "/"
        cookie = response.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")


def test_protect_reads_asks_every_page_for_a_sign_in(app: pgflow.Pgflow, job: int) -> None:
    with _client(app, token=TOKEN, protect_reads=True) as browser:
        response = browser.get(f"/jobs/{job}", follow_redirects=False)
        assert response.status_code == 303
        assert response.headers["location"] == "/login"
        assert browser.get("/metrics", follow_redirects=False).status_code == 303
        assert browser.get("/healthz").status_code == 200
        assert browser.get("/static/dashboard.css").status_code == 200
        bearer = {"authorization": f"Bearer {TOKEN}"}
        assert browser.get(f"/jobs/{job}", headers=bearer).status_code == 200
        assert _login(browser) == 303
        assert browser.get(f"/jobs/{job}").status_code == 200
