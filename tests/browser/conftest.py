"""Fixtures of the browser tests: a seeded database per backend (SQLite, and PostgreSQL when
reachable), the real `pgflow dashboard` command serving it, and one headless Chromium.

Everything is package-scoped: the servers, the live instance and the browsers stop once
the last browser test has run, not at the end of the whole session.

Outside CI a machine without Chromium skips these tests with the reason; with CI=true a
missing browser is a failure (`.ci/run` installs it), as for PostgreSQL in tests/conftest.py.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import attrs
import pytest

import pgflow
from tests.browser import flows
from tests.browser.harness import Dashboard, chrome, missing_browser, start_dashboard
from tests.browser.seed import Seeded, seed

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver

#: The queue the live instance serves: none of the seeded jobs is in it, so nothing the
#: tests act on runs behind their back.
IDLE_QUEUE = "idle"


def cron_due_now() -> str:
    """A cron expression whose slot is this minute (or the next, should it turn meanwhile):
    the dashboard lists entries that enqueued a slot, and the leader enqueues it at once."""
    now = datetime.now(UTC)
    return f"{now.minute},{(now + timedelta(minutes=1)).minute} * * * *"


@attrs.frozen
class Site:
    """One backend's dashboard as the tests see it: where it answers, what was seeded,
    and an app on the same database to check what the actions did."""

    kind: str
    db_url: str
    cron: str
    dashboard: Dashboard
    seeded: Seeded
    app: pgflow.Pgflow

    def url(self, path: str) -> str:
        return self.dashboard.url(path)

    @property
    def token(self) -> str:
        return self.dashboard.token


def _require_browser() -> None:
    """Skip without Chromium (or selenium); under CI=true, fail instead."""
    problem = missing_browser()
    if problem is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but the browser tests cannot run: {problem}", pytrace=False)
        pytest.skip(f"{problem} (set CI=true to make this a failure)")


@pytest.fixture(scope="package")
def chromium() -> Iterator[WebDriver]:
    """One headless Chromium for the browser tests; skipped without one, failed under
    CI=true."""
    _require_browser()
    driver = chrome()
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="package")
def chromium_without_script() -> Iterator[WebDriver]:
    """A second headless Chromium, with JavaScript turned off."""
    _require_browser()
    driver = chrome(javascript=False)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(
    scope="package",
    params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)],
)
def site(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Site]:
    """A seeded database, a live instance on it, and `pgflow dashboard` serving it."""
    _require_browser()
    kind: str = request.param
    folder = tmp_path_factory.mktemp(f"browser-{kind}")
    if kind == "sqlite":
        url = f"sqlite:///{folder}/pgflow.db"
        drop: Callable[[], None] | None = None
    else:
        url, drop = _postgres_database(request.getfixturevalue("postgres_server"))
    try:
        seeded = seed(url)
        cron = cron_due_now()
        live = pgflow.Pgflow(
            url,
            queues={IDLE_QUEUE: 1},
            instance_id="browser-live",
            cron=[(cron, flows.Nightly, {"report": "nightly"})],
            poll_interval=0.2,
        )
        try:
            live.start()
            dashboard = start_dashboard(url, secrets.token_urlsafe(16), folder / "dashboard.log")
            try:
                yield Site(kind, url, cron, dashboard, seeded, live)
            finally:
                dashboard.stop()
        finally:
            live.stop(timeout=10.0)
            live.close()
    finally:
        if drop is not None:
            drop()


def _postgres_database(admin_url: str) -> tuple[str, Callable[[], None]]:
    """A new database on the test server, and the callable that drops it."""
    import psycopg
    from psycopg import sql

    name = f"pgflow_test_browser_{secrets.token_hex(4)}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))

    def drop() -> None:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )

    server = admin_url.rsplit("/", 1)[0]
    return f"{server}/{name}", drop


@pytest.fixture
def browser(chromium: WebDriver, site: Site) -> WebDriver:
    """The shared Chromium, signed out (no cookies of an earlier test or dashboard)."""
    chromium.execute_cdp_cmd("Network.clearBrowserCookies", {})
    return chromium


@pytest.fixture
def signed_in(browser: WebDriver, site: Site) -> WebDriver:
    """The browser, signed in to the site's dashboard through its login form."""
    from tests.browser.pages import log_in

    log_in(browser, site.url("/login"), site.token)
    return browser


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test in this folder drives the browser: mark it so `-m "not browser"` works."""
    folder = Path(__file__).parent
    for item in items:
        if Path(str(item.fspath)).is_relative_to(folder):
            item.add_marker(pytest.mark.browser)
