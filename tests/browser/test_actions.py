"""Signing in through the form, and each action clicked in the browser: the database says
what changed (read through pgflow's own API, not the dashboard)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pgflow
from tests.browser import flows
from tests.browser.conftest import Site
from tests.browser.pages import act, all_css, answer_confirm, await_true, css, open_page

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver


def test_signed_out_pages_offer_no_actions(browser: WebDriver, site: Site) -> None:
    open_page(browser, site.url(f"/jobs/{site.seeded.failed_job}"), "#job-state")
    assert not all_css(browser, "button[data-action]")
    open_page(browser, site.url(f"/runs/{site.seeded.waiting_run}"), "#run-state")
    assert not all_css(browser, "button[data-action]")


def test_wrong_token_is_refused_and_the_right_one_signs_in(browser: WebDriver, site: Site) -> None:
    open_page(browser, site.url("/login"), "input[name=token]")
    css(browser, "input[name=token]").send_keys("not-the-token")
    css(browser, "#login-submit").click()
    assert "not right" in css(browser, "#login-error").text
    assert "/login" in browser.current_url
    assert not _actions_visible(browser, site)

    open_page(browser, site.url("/login"), "input[name=token]")
    css(browser, "input[name=token]").send_keys(site.token)
    css(browser, "#login-submit").click()
    await_true(browser, lambda d: d.current_url == site.url("/"), "the redirect to the overview")
    assert _actions_visible(browser, site)


def test_sign_out_takes_the_actions_away(signed_in: WebDriver, site: Site) -> None:
    assert _actions_visible(signed_in, site)
    css(signed_in, "#logout-submit").click()
    await_true(
        signed_in,
        lambda d: (
            d.find_elements("css selector", "input[name=token]")
            or not d.find_elements("css selector", "#logout-submit")
        ),
        "the sign-out to land on a signed-out page",
    )
    assert not _actions_visible(signed_in, site)


def _actions_visible(browser: WebDriver, site: Site) -> bool:
    open_page(browser, site.url(f"/jobs/{site.seeded.failed_job}"), "#job-state")
    return bool(all_css(browser, "button[data-action='retry']"))


def job_state(site: Site, job_id: int) -> pgflow.JobState | None:
    job = site.app.get_job(job_id)
    return None if job is None else job.state


def test_retry_makes_a_discarded_job_available(signed_in: WebDriver, site: Site) -> None:
    job_id = site.seeded.retry_job
    assert job_state(site, job_id) is pgflow.JobState.DISCARDED
    act(signed_in, site.url(f"/jobs/{job_id}"), "retry")
    assert job_state(site, job_id) is pgflow.JobState.AVAILABLE
    assert css(signed_in, "#job-state").text.strip() == "available"


def test_cancel_cancels_a_waiting_job(signed_in: WebDriver, site: Site) -> None:
    job_id = site.seeded.cancel_job
    assert job_state(site, job_id) is pgflow.JobState.AVAILABLE
    act(signed_in, site.url(f"/jobs/{job_id}"), "cancel")
    assert job_state(site, job_id) is pgflow.JobState.CANCELLED


def test_delete_removes_a_finished_job(signed_in: WebDriver, site: Site) -> None:
    job_id = site.seeded.delete_job
    assert job_state(site, job_id) is pgflow.JobState.DISCARDED
    # Declining the confirmation sends nothing.
    open_page(signed_in, site.url(f"/jobs/{job_id}"), "button[data-action='delete']")
    button = css(signed_in, "button[data-action='delete']")
    question = button.get_attribute("data-confirm") or ""
    assert "delete" in question.lower()
    button.click()
    answer_confirm(signed_in, question, accept=False)
    assert job_state(site, job_id) is pgflow.JobState.DISCARDED
    act(signed_in, site.url(f"/jobs/{job_id}"), "delete", lands_on="/jobs")
    assert site.app.get_job(job_id) is None


def _paused(site: Site, queue: str) -> bool:
    return any(c.queue == queue and c.paused for c in site.app.backend.queue_controls())


def test_pause_and_resume_a_queue(signed_in: WebDriver, site: Site) -> None:
    assert not _paused(site, "mail")
    act(signed_in, site.url("/queues/mail"), "pause")
    assert _paused(site, "mail")
    open_page(signed_in, site.url("/"), "tr[data-queue='mail']")
    assert css(signed_in, "tr[data-queue='mail'] .paused").text.strip() == "paused"
    assert not all_css(signed_in, "tr[data-queue='default'] .paused")

    act(signed_in, site.url("/queues/mail"), "resume")
    assert not _paused(site, "mail")
    open_page(signed_in, site.url("/"), "tr[data-queue='mail']")
    assert not all_css(signed_in, "tr[data-queue='mail'] .paused")


def run_state(site: Site, workflow_id: str) -> str:
    run = site.app.get_run(workflow_id)
    assert run is not None, f"run {workflow_id} is gone"
    return run.state.value


def test_cancel_a_waiting_run(signed_in: WebDriver, site: Site) -> None:
    run_id = site.seeded.cancel_run
    assert run_state(site, run_id) == "running"
    act(signed_in, site.url(f"/runs/{run_id}"), "run-cancel")
    assert run_state(site, run_id) == "cancelled"
    assert css(signed_in, "#run-state").text.strip() == "cancelled"


def test_resume_a_failed_run(signed_in: WebDriver, site: Site) -> None:
    run_id = site.seeded.resume_run
    assert run_state(site, run_id) == "failed"
    act(signed_in, site.url(f"/runs/{run_id}"), "run-resume")
    run = site.app.get_run(run_id)
    assert run is not None
    assert run.state.value == "running"
    assert run.steps["load"].state.value == "completed"  # kept, not run again
    assert run.steps["explode"].state.value == "started"  # queued anew


def test_restart_a_completed_run(signed_in: WebDriver, site: Site) -> None:
    run_id = site.seeded.restart_run
    landed = act(signed_in, site.url(f"/runs/{run_id}"), "run-restart", lands_on="/runs/")
    restarts = [run for run in site.app.list_runs(flow=flows.fanout) if run.restart_of == run_id]
    assert len(restarts) == 1, restarts
    assert landed == f"/runs/{restarts[0].workflow_id}"  # the new run's page
    assert restarts[0].state.value == "running"
    assert run_state(site, run_id) == "completed"


def test_signal_a_waiting_run(signed_in: WebDriver, site: Site) -> None:
    run_id = site.seeded.signal_run
    payload = {"by": "ada", "note": "<b>ok</b>"}
    act(
        signed_in,
        site.url(f"/runs/{run_id}"),
        "run-signal",
        fields={"name": "approve", "payload": json.dumps(payload)},
    )
    run = site.app.get_run(run_id)
    assert run is not None
    assert run.steps["approve"].state.value == "completed"
    assert run.steps["approve"].output == payload
    assert run.steps["publish"].state.value == "started"
