"""Each page, opened in headless Chromium, shows what was seeded (by the route/markup
contract of docs/dashboard.md), and its links lead where they say."""

from __future__ import annotations

import json
import urllib.request
from typing import TYPE_CHECKING

import pgflow
from tests.browser.conftest import IDLE_QUEUE, Site
from tests.browser.pages import COUNTS_LAG, all_css, await_true, css, open_page

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver

STATES = [state.value for state in pgflow.JobState]


def job_ids(driver: WebDriver) -> set[int]:
    return {
        int(row.get_attribute("data-job-id") or 0) for row in all_css(driver, "tr[data-job-id]")
    }


def run_ids(driver: WebDriver) -> set[str]:
    return {row.get_attribute("data-run-id") or "" for row in all_css(driver, "tr[data-run-id]")}


def shown_counts(driver: WebDriver, queue: str) -> dict[str, int]:
    """The counts by state in the row of `queue` (on the overview or the queue's page)."""
    row = css(driver, f"tr[data-queue='{queue}']")
    return {
        cell.get_attribute("data-state") or "": int(cell.text.strip().replace(",", ""))
        for cell in row.find_elements("css selector", "td[data-state]")
    }


def stored_counts(site: Site, queue: str) -> dict[str, int]:
    status = site.app.status()
    return {state: status.count(queue=queue, state=pgflow.JobState(state)) for state in STATES}


def test_overview_shows_each_queue_with_its_counts_and_chart(
    browser: WebDriver, site: Site
) -> None:
    open_page(browser, site.url("/"), "tr[data-queue='mail']")
    queues = ("default", "mail", "flows")
    # Counts are cached for a few seconds: await the database's (an earlier test may have
    # just changed them), which the page's live updates bring without a reload.
    await_true(
        browser,
        lambda d: all(shown_counts(d, queue) == stored_counts(site, queue) for queue in queues),
        "the overview's counts to be the database's",
        timeout=COUNTS_LAG,
    )
    assert stored_counts(site, "default")["completed"] >= 1
    assert stored_counts(site, "default")["discarded"] >= 2
    assert stored_counts(site, "mail")["available"] >= 4
    for queue in queues:
        chart = f"tr[data-queue='{queue}'] svg.throughput"
        assert all_css(browser, chart), f"no chart for {queue}"

    css(browser, "tr[data-queue='mail'] a[href$='/queues/mail']").click()
    await_true(browser, lambda d: d.current_url.endswith("/queues/mail"), "the queue's page")
    await_true(
        browser,
        lambda d: shown_counts(d, "mail") == stored_counts(site, "mail"),
        "the queue page's counts to be the database's",
        timeout=COUNTS_LAG,
    )
    assert not all_css(browser, "button[data-action]")  # signed out: nothing to click


def test_job_list_filters_by_queue_state_worker_and_args_text(
    browser: WebDriver, site: Site
) -> None:
    seeded = site.seeded
    open_page(browser, site.url("/jobs?queue=mail"), "tr[data-job-id]")
    mail = job_ids(browser)
    assert set(seeded.mail_jobs) <= mail  # test_live may have added some
    assert not mail & {seeded.completed_job, seeded.failed_job, seeded.retry_job}

    open_page(browser, site.url("/jobs?state=completed"), "tr[data-job-id]")
    completed = job_ids(browser)
    assert seeded.completed_job in completed
    assert not completed & {seeded.failed_job, *seeded.mail_jobs}

    open_page(browser, site.url(f"/jobs?worker={pgflow_worker_name('Boom')}"), "tr[data-job-id]")
    assert {seeded.failed_job, seeded.hostile_error_job} <= job_ids(browser)
    assert seeded.completed_job not in job_ids(browser)

    open_page(browser, site.url("/jobs?q=reader-1"), "tr[data-job-id]")
    (only,) = all_css(browser, "tr[data-job-id]")
    only.find_element("css selector", "a[href*='/jobs/']").click()
    css(browser, "#job-args")
    assert "reader-1@example.com" in css(browser, "#job-args").text


def pgflow_worker_name(cls: str) -> str:
    return f"tests.browser.flows.{cls}"


def test_failed_job_shows_every_error_with_its_traceback(browser: WebDriver, site: Site) -> None:
    open_page(browser, site.url(f"/jobs/{site.seeded.failed_job}"), "#job-state")
    assert css(browser, "#job-state").text.strip() == "discarded"
    assert json.loads(css(browser, "#job-args").text) == {"why": "shown"}
    (error,) = all_css(browser, "section.job-error")
    traceback = error.find_element("css selector", "pre.traceback").text
    assert "Traceback (most recent call last)" in traceback
    assert "RuntimeError: boom: shown" in traceback
    assert css(browser, "#job-instance").text.strip() == "browser-seeder"


def test_completed_job_shows_its_result_and_meta(browser: WebDriver, site: Site) -> None:
    open_page(browser, site.url(f"/jobs/{site.seeded.completed_job}"), "#job-state")
    assert css(browser, "#job-state").text.strip() == "completed"
    assert json.loads(css(browser, "#job-result").text) == {"echo": {"greeting": "hello"}}
    assert json.loads(css(browser, "#job-meta").text)["source"] == "browser-test"
    assert not all_css(browser, "section.job-error")


def test_run_list_filters_by_flow_and_state(browser: WebDriver, site: Site) -> None:
    seeded = site.seeded
    open_page(browser, site.url("/runs?flow=browser_fanout"), "tr[data-run-id]")
    fanouts = run_ids(browser)
    assert {seeded.map_run, seeded.child_run} <= fanouts
    assert not fanouts & {seeded.parent_run, seeded.waiting_run, seeded.failed_run}

    open_page(browser, site.url("/runs?state=failed"), "tr[data-run-id]")
    failed = run_ids(browser)
    assert seeded.failed_run in failed
    assert not failed & {seeded.map_run, seeded.waiting_run}

    css(
        browser, f"tr[data-run-id='{seeded.failed_run}'] a[href$='/runs/{seeded.failed_run}']"
    ).click()
    await_true(browser, lambda d: d.current_url.endswith(f"/runs/{seeded.failed_run}"), "run page")
    assert css(browser, "#run-state").text.strip() == "failed"


def step(driver: WebDriver, name: str) -> tuple[str, str]:
    """A step of the run graph: its state and its text."""
    element = css(driver, f"svg#run-graph g.step[data-step='{name}']")
    return element.get_attribute("data-state") or "", element.text


def test_run_graph_shows_map_progress_and_a_timeline(browser: WebDriver, site: Site) -> None:
    open_page(browser, site.url(f"/runs/{site.seeded.map_run}"), "svg#run-graph")
    assert css(browser, "#run-state").text.strip() == "completed"
    state, text = step(browser, "double")
    assert state == "completed"
    assert "3/3" in text
    assert [step(browser, name)[0] for name in ("items", "total")] == ["completed", "completed"]
    assert len(all_css(browser, "ol#run-timeline li")) >= 3


def test_run_graph_links_a_sub_flow_to_its_child_run(browser: WebDriver, site: Site) -> None:
    seeded = site.seeded
    open_page(browser, site.url(f"/runs/{seeded.parent_run}"), "svg#run-graph")
    assert step(browser, "child")[0] == "completed"
    link = css(browser, f"g.step[data-step='child'] a[href$='/runs/{seeded.child_run}']")
    # An SVG <a> is clicked through script: Selenium's native click needs a box it can hit.
    browser.execute_script(
        "arguments[0].dispatchEvent(new MouseEvent('click', {bubbles: true}))", link
    )
    await_true(browser, lambda d: d.current_url.endswith(f"/runs/{seeded.child_run}"), "child")
    assert "4/4" in step(browser, "double")[1]


def test_run_graph_shows_a_wait_for_a_signal(browser: WebDriver, site: Site) -> None:
    open_page(browser, site.url(f"/runs/{site.seeded.waiting_run}"), "svg#run-graph")
    assert css(browser, "#run-state").text.strip() == "running"
    assert step(browser, "draft")[0] == "completed"
    assert step(browser, "approve")[0] == "started"
    assert step(browser, "publish")[0] == "pending"


def test_instances_show_status_leader_and_cron(browser: WebDriver, site: Site) -> None:
    open_page(browser, site.url("/instances"), "tr[data-instance-id='browser-live']")
    live = css(browser, "tr[data-instance-id='browser-live']")
    assert live.get_attribute("data-status") == "online"
    assert IDLE_QUEUE in live.text
    await_true(
        browser,
        lambda d: d.find_elements("css selector", "tr[data-instance-id='browser-live'] .leader"),
        "the live instance to be shown as the leader (it is the only online one)",
    )
    seeder = css(browser, "tr[data-instance-id='browser-seeder']")
    assert seeder.get_attribute("data-status") == "offline"
    assert not seeder.find_elements("css selector", ".leader")
    entry = await_true(
        browser,
        lambda d: d.find_elements("css selector", "table#cron tr[data-cron]"),
        "the live instance's cron entry (the leader enqueues its slot at once)",
    )
    assert len(entry) == 1
    assert site.cron in entry[0].text
    assert "Nightly" in entry[0].text


def test_metrics_and_health_answer(site: Site) -> None:
    with urllib.request.urlopen(site.url("/healthz"), timeout=5) as response:
        assert response.status == 200
    with urllib.request.urlopen(site.url("/metrics"), timeout=5) as response:
        text = response.read().decode()
    mail_available = [
        line
        for line in text.splitlines()
        if line.startswith("pgflow_") and 'queue="mail"' in line and 'state="available"' in line
    ]
    assert mail_available, text
    assert all(float(line.rsplit(" ", 1)[1]) >= 1 for line in mail_available), mail_available
