"""With JavaScript turned off the dashboard still reads and acts: pages are server-rendered
HTML and actions plain form posts (the script only keeps pages current and asks to confirm)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

import pgflow
from tests.browser.conftest import Site
from tests.browser.pages import act, css, log_in, open_page

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver


@pytest.fixture
def no_script(chromium_without_script: WebDriver, site: Site) -> Iterator[WebDriver]:
    chromium_without_script.execute_cdp_cmd("Network.clearBrowserCookies", {})
    yield chromium_without_script


def test_pages_read_without_script(no_script: WebDriver, site: Site) -> None:
    # The script really is off: an inline handler would not run, nor does the page's own.
    no_script.get("data:text/html,<body><script>document.title='ran'</script></body>")
    assert no_script.title != "ran"

    open_page(no_script, site.url("/"), "tr[data-queue='mail'] td[data-state='available']")
    open_page(no_script, site.url(f"/jobs/{site.seeded.failed_job}"), "section.job-error")
    assert "RuntimeError: boom: shown" in css(no_script, "pre.traceback").text
    open_page(no_script, site.url(f"/runs/{site.seeded.map_run}"), "svg#run-graph")
    assert "3/3" in css(no_script, "g.step[data-step='double']").text


def test_sign_in_and_act_without_script(no_script: WebDriver, site: Site) -> None:
    job_id = site.seeded.noscript_job
    log_in(no_script, site.url("/login"), site.token)
    act(no_script, site.url(f"/jobs/{job_id}"), "cancel")
    job = site.app.get_job(job_id)
    assert job is not None and job.state is pgflow.JobState.CANCELLED
