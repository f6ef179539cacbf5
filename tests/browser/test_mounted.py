"""The dashboard mounted at /pgflow inside a host application (tests/browser/mounted_app.py,
served by uvicorn): its links, forms, static files and live updates stay under the mount,
and the host's own sign-in (the `authorize` hook) decides who may act."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

import pgflow
from tests.browser import flows
from tests.browser.conftest import Site
from tests.browser.harness import Dashboard, start_mounted
from tests.browser.pages import act, all_css, await_true, css, open_page

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver


@pytest.fixture(scope="module")
def mounted(site: Site, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dashboard]:
    """The host application on the site's database."""
    folder = tmp_path_factory.mktemp(f"mounted-{site.kind}")
    server = start_mounted(site.db_url, folder / "host.log")
    try:
        yield server
    finally:
        server.stop()


def test_links_stay_under_the_mount(browser: WebDriver, mounted: Dashboard) -> None:
    open_page(browser, mounted.host_url("/"), "#to-dashboard")
    css(browser, "#to-dashboard").click()
    css(browser, "tr[data-queue='mail'] a").click()
    await_true(browser, lambda d: d.current_url == mounted.url("/queues/mail"), "queue page")
    # The stylesheet came from under the mount too.
    sheets = browser.execute_script("return document.styleSheets.length")
    assert sheets >= 1
    assert all(
        (link.get_attribute("href") or "").startswith(mounted.url("/static/"))
        for link in all_css(browser, "link[rel=stylesheet]")
    )
    assert not all_css(browser, "button[data-action]")  # the host has not signed us in


def test_host_sign_in_authorizes_actions(
    browser: WebDriver, mounted: Dashboard, site: Site
) -> None:
    job_id = site.seeded.mounted_job
    open_page(browser, mounted.host_url("/signin"), "tr[data-queue]")
    assert browser.current_url == mounted.url("/")
    act(browser, mounted.url(f"/jobs/{job_id}"), "cancel", lands_on="/pgflow/jobs/")
    job = site.app.get_job(job_id)
    assert job is not None and job.state is pgflow.JobState.CANCELLED


def test_live_updates_under_the_mount(browser: WebDriver, mounted: Dashboard, site: Site) -> None:
    job_id = site.seeded.mounted_live_job
    open_page(browser, mounted.url(f"/jobs/{job_id}"), "#job-state")
    browser.execute_script("window.__samePage = true")
    site.app.cancel(job_id)
    await_true(
        browser,
        lambda d: css(d, "#job-state").text.strip() == "cancelled",
        "the mounted job page to show the cancel",
    )
    assert browser.execute_script("return window.__samePage === true")


def test_overview_counts_follow_new_jobs(
    browser: WebDriver, mounted: Dashboard, site: Site
) -> None:
    cell = "tr[data-queue='late'] td[data-state='available']"
    open_page(browser, mounted.url("/"), cell)
    shown = css(browser, cell).text.strip()
    browser.execute_script("window.__samePage = true")
    site.app.insert([flows.Mail.new({"to": f"late-{n}@example.com"}, queue="late") for n in (1, 2)])
    # What the database says now; the page may have shown an older count (cached).
    expected = str(site.app.status().count(queue="late", state=pgflow.JobState.AVAILABLE))
    assert shown.replace(",", "") != expected
    await_true(
        browser,
        lambda d: css(d, cell).text.replace(",", "").strip() == expected,
        f"the overview's late/available count to go from {shown} to {expected}",
    )
    assert browser.execute_script("return window.__samePage === true")
