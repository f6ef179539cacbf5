"""Take the README's dashboard screenshots: `python -m tests.browser.screenshots` from the
repository root writes docs/images/dashboard-{overview,job,run}.png.

It seeds a fresh SQLite database as the browser tests do, plus a batch of jobs whose times
it then spreads over the last hour (so the throughput charts have an hour to draw), serves it
with the real `pgflow dashboard` command, signs in, and captures each page whole in headless
Chromium.
"""

from __future__ import annotations

import secrets
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

import pgflow
from tests.browser import flows
from tests.browser.harness import ROOT, chrome, missing_browser, start_dashboard
from tests.browser.pages import css, log_in, open_page
from tests.browser.seed import job_finished, seed, wait_until

IMAGES = ROOT / "docs" / "images"
WIDTH = 1280


def run_batch(url: str) -> str:
    """A few dozen jobs more, most completing and some failing, for the charts; and an order
    run brought to its wait for payment (the run screenshot). Returns that run's id."""
    app = pgflow.Pgflow(
        url, queues={"default": 4, "flows": 4}, instance_id="worker-1", poll_interval=0.05
    )
    jobs = app.insert(
        [flows.Echo.new({"n": n}) for n in range(150)]
        + [flows.Boom.new({"why": f"batch {n}"}) for n in range(12)]
    )
    order = app.start_run(flows.order, {"lines": [3, 1, 4, 1, 5]}).workflow_id
    app.start()
    try:
        for job in jobs:
            wait_until(partial(job_finished, app, job.id), f"job {job.id} to finish")
        wait_until(partial(_invoiced, app, order), f"run {order} to wait for its payment")
    finally:
        app.stop(timeout=10.0)
    spread_over_the_hour(url, [job.id for job in jobs])
    return order


def spread_over_the_hour(url: str, job_ids: list[int]) -> None:
    """Move the batch's times back over the last hour, as if it had run all along: the
    overview's charts then have an hour to draw (the batch itself takes a second)."""
    from sqlalchemy import create_engine, update

    from pgflow.schema import jobs

    engine = create_engine(url)
    now = datetime.now(UTC)
    try:
        with engine.begin() as connection:
            for n, job_id in enumerate(job_ids):
                done = now - timedelta(minutes=(n * 37) % 59 + 1, seconds=n % 50)
                connection.execute(
                    update(jobs)
                    .where(jobs.c.id == job_id)
                    .values(
                        completed_at=done,
                        attempted_at=done - timedelta(seconds=1),
                        scheduled_at=done - timedelta(seconds=2),
                        inserted_at=done - timedelta(seconds=2),
                    )
                )
    finally:
        engine.dispose()


def _invoiced(app: pgflow.Pgflow, workflow_id: str) -> bool:
    run = app.get_run(workflow_id)
    return run is not None and run.steps["invoice"].state.value == "completed"


def capture(driver: object, path: Path) -> None:
    """The whole page (the window grown to the document's height), as PNG."""
    from selenium.webdriver.remote.webdriver import WebDriver

    assert isinstance(driver, WebDriver)
    driver.execute_script("document.documentElement.style.overflow = 'hidden'")
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(WIDTH, min(max(int(height) + 120, 600), 2400))
    driver.save_screenshot(str(path))


def main() -> int:
    problem = missing_browser()
    if problem is not None:
        print(f"cannot take screenshots: {problem}", file=sys.stderr)
        return 1
    IMAGES.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as folder:
        url = f"sqlite:///{folder}/pgflow.db"
        seeded = seed(url)
        order = run_batch(url)
        live = pgflow.Pgflow(url, queues={"idle": 1}, instance_id="web-1", poll_interval=0.2)
        live.start()
        token = secrets.token_urlsafe(16)
        dashboard = start_dashboard(url, token, Path(folder) / "dashboard.log")
        driver = chrome(WIDTH, 900)
        try:
            log_in(driver, dashboard.url("/login"), token)
            pages = {
                "dashboard-overview.png": (dashboard.url("/"), "tr[data-queue]"),
                "dashboard-job.png": (
                    dashboard.url(f"/jobs/{seeded.failed_job}"),
                    "section.job-error",
                ),
                "dashboard-run.png": (dashboard.url(f"/runs/{order}"), "svg#run-graph"),
            }
            for name, (page, ready) in pages.items():
                driver.set_window_size(WIDTH, 900)
                open_page(driver, page, ready)
                css(driver, ready)
                capture(driver, IMAGES / name)
                print(f"wrote {IMAGES / name}")
        finally:
            driver.quit()
            dashboard.stop()
            live.stop(timeout=10.0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
