"""A job or step carrying markup shows it as text: nothing it holds runs in the page."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from tests.browser.conftest import Site
from tests.browser.flows import HOSTILE
from tests.browser.pages import all_css, css, open_page, pwned

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver

#: Elements the hostile strings would have created had they been parsed as markup.
INJECTED = "img[onerror], img[src='x'], script:not([src])"


def assert_inert(driver: WebDriver) -> None:
    assert pwned(driver) is None, "markup from the database ran in the page"
    assert not all_css(driver, INJECTED), [
        e.get_attribute("outerHTML") for e in all_css(driver, INJECTED)
    ]


def test_hostile_job_args_show_as_text(signed_in: WebDriver, site: Site) -> None:
    open_page(signed_in, site.url(f"/jobs/{site.seeded.hostile_args_job}"), "#job-args")
    assert json.loads(css(signed_in, "#job-args").text) == {"x": HOSTILE}
    assert json.loads(css(signed_in, "#job-meta").text) == {"note": HOSTILE}
    assert_inert(signed_in)

    open_page(signed_in, site.url("/jobs?queue=mail"), "tr[data-job-id]")
    row = css(signed_in, f"tr[data-job-id='{site.seeded.hostile_args_job}']")
    assert "window.__pwned=1" in row.text  # the args' preview, as text
    assert_inert(signed_in)


def test_hostile_job_error_shows_as_text(signed_in: WebDriver, site: Site) -> None:
    open_page(signed_in, site.url(f"/jobs/{site.seeded.hostile_error_job}"), "section.job-error")
    error = css(signed_in, "section.job-error")
    assert (
        f"RuntimeError: boom: {HOSTILE}" in error.find_element("css selector", "pre.traceback").text
    )
    assert_inert(signed_in)


def test_hostile_step_error_shows_as_text(signed_in: WebDriver, site: Site) -> None:
    open_page(signed_in, site.url(f"/runs/{site.seeded.failed_run}"), "svg#run-graph")
    page = css(signed_in, "body").text
    assert f"step broke on {HOSTILE}" in page  # the step's error
    assert f'"note": "{HOSTILE}"' in page  # the run's input
    assert_inert(signed_in)

    open_page(signed_in, site.url("/runs?flow=browser_fragile"), "tr[data-run-id]")
    assert {row.get_attribute("data-run-id") for row in all_css(signed_in, "tr[data-run-id]")} >= {
        site.seeded.failed_run
    }
    assert_inert(signed_in)
