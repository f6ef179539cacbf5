"""Pages follow the database without a reload: a change made behind the page's back shows
within the wait (the page is marked before, and the mark must survive: no navigation).
The overview's counts are checked the same way in test_mounted.py, where they are cached
for 1 s instead of 5."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pgflow
from tests.browser.conftest import Site
from tests.browser.pages import await_true, css, open_page

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver


def mark(driver: WebDriver) -> None:
    driver.execute_script("window.__samePage = true")


def still_same_page(driver: WebDriver) -> bool:
    return bool(driver.execute_script("return window.__samePage === true"))


def test_job_page_follows_the_jobs_state(browser: WebDriver, site: Site) -> None:
    job_id = site.seeded.live_job
    open_page(browser, site.url(f"/jobs/{job_id}"), "#job-state")
    assert css(browser, "#job-state").text.strip() == "available"
    mark(browser)
    cancelled = site.app.cancel(job_id)
    assert cancelled is not None and cancelled.state is pgflow.JobState.CANCELLED
    await_true(
        browser,
        lambda d: css(d, "#job-state").text.strip() == "cancelled",
        "the job page to show the cancel made through the API",
    )
    assert still_same_page(browser), "the page was reloaded instead of updated"
