"""Pages follow the database without a reload: a change made behind the page's back shows
within the wait (the page is marked before, and the mark must survive: no navigation)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pgflow
from tests.browser import flows
from tests.browser.conftest import Site
from tests.browser.pages import COUNTS_LAG, await_true, css, open_page

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


def test_overview_counts_follow_new_jobs(browser: WebDriver, site: Site) -> None:
    cell = "tr[data-queue='mail'] td[data-state='available']"
    open_page(browser, site.url("/"), cell)
    shown = css(browser, cell).text.strip()
    mark(browser)
    site.app.insert([flows.Mail.new({"to": f"late-{n}@example.com"}) for n in range(2)])
    # What the database says now; the page may have shown an older count (cached).
    expected = str(site.app.status().count(queue="mail", state=pgflow.JobState.AVAILABLE))
    assert shown.replace(",", "") != expected
    await_true(
        browser,
        lambda d: css(d, cell).text.replace(",", "").strip() == expected,
        f"the overview's mail/available count to go from {shown} to {expected}",
        timeout=COUNTS_LAG,
    )
    assert still_same_page(browser), "the page was reloaded instead of updated"
