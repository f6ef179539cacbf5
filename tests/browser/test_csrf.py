"""A page on another origin that makes the signed-in browser POST an action to the dashboard
is refused, even when it carries a valid CSRF token, and changes nothing."""

from __future__ import annotations

import html
import http.server
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

import pgflow
from tests.browser.conftest import Site
from tests.browser.harness import free_port
from tests.browser.pages import all_css, await_true, css, open_page

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver


class AttackerPages:
    """A second loopback origin serving one page: a form that submits itself on load."""

    def __init__(self) -> None:
        self.page = b""
        pages = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(pages.page)))
                self.end_headers()
                self.wfile.write(pages.page)

            def log_message(self, format: str, *args: object) -> None:
                return None

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.origin = f"http://127.0.0.1:{self.server.server_address[1]}"

    def auto_submit(self, action: str, fields: dict[str, str]) -> str:
        """Serve a form posting `fields` to `action` as soon as it loads; return its URL."""
        inputs = "".join(
            f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">'
            for k, v in fields.items()
        )
        self.page = (
            "<!doctype html><title>You won a prize</title>"
            f'<form id="f" method="post" action="{html.escape(action)}">{inputs}</form>'
            "<script>document.getElementById('f').submit()</script>"
        ).encode()
        return f"{self.origin}/prize.html"


@pytest.fixture
def attacker() -> Iterator[AttackerPages]:
    pages = AttackerPages()
    pages.thread.start()
    try:
        yield pages
    finally:
        pages.server.shutdown()
        pages.server.server_close()
        pages.thread.join(timeout=5)


@pytest.mark.parametrize("token", ["stolen", "missing"])
def test_cross_origin_post_is_refused(
    signed_in: WebDriver, site: Site, attacker: AttackerPages, token: str
) -> None:
    job_id = site.seeded.csrf_job
    page = site.url(f"/jobs/{job_id}")
    open_page(signed_in, page, "button[data-action='cancel']")
    fields = {}
    if token == "stolen":
        # The strongest forgery: the session's own CSRF token (as if it had leaked), so only
        # the Origin check stands between the page and the action.
        fields["csrf_token"] = (
            css(signed_in, "form input[name='csrf_token']").get_attribute("value") or ""
        )
        assert fields["csrf_token"]
    target = site.url(f"/jobs/{job_id}/cancel")
    signed_in.get(attacker.auto_submit(target, fields))
    await_true(
        signed_in,
        lambda d: d.current_url == target,
        "the forged form to be submitted to the dashboard",
    )
    job = site.app.get_job(job_id)
    assert job is not None and job.state is pgflow.JobState.AVAILABLE, job
    assert "refused" in css(signed_in, "body").text.lower()
    # The session is intact (its own page still offers the action): the refusal above
    # was the origin's doing.
    open_page(signed_in, page, "button[data-action='cancel']")


def test_cross_origin_sign_in_is_refused(
    browser: WebDriver, site: Site, attacker: AttackerPages
) -> None:
    """Login CSRF: another site must not sign the browser in, even with the right token."""
    target = site.url("/login")
    browser.get(attacker.auto_submit(target, {"token": site.token}))
    await_true(browser, lambda d: d.current_url == target, "the forged sign-in to be submitted")
    assert "refused" in css(browser, "body").text.lower()
    open_page(browser, site.url(f"/jobs/{site.seeded.failed_job}"), "#job-state")
    assert not all_css(browser, "button[data-action]")
