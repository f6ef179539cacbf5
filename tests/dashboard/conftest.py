"""Fixtures of the dashboard's HTTP tests: a store of each kind with an app on it, jobs and
runs in known states, and clients of the dashboard (read-only, or with actions)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import attrs
import pytest
from starlette.testclient import TestClient

import pgflow
from pgflow import testing
from pgflow.dashboard import create_app
from tests.dashboard import flows

TOKEN = "test-token-0123456789"


@attrs.define
class Seeded:
    """What `seeded` stored: ids of jobs and runs in known states."""

    app: pgflow.Pgflow
    harness: testing.TestQueue
    completed: int = 0
    discarded: int = 0
    available: int = 0
    hostile: int = 0
    fanout_run: str = ""
    approval_run: str = ""
    failed_run: str = ""
    hostile_run: str = ""


@pytest.fixture
def store(backend: Any) -> Iterator[pgflow.Pgflow]:
    """An unstarted app on a fresh backend of each kind (memory, SQLite, PostgreSQL)."""
    app = pgflow.Pgflow(backend, queues={"default": 5, "flows": 5, "mail": 2})
    yield app
    app.close()


@pytest.fixture
def seeded(store: pgflow.Pgflow) -> Seeded:
    """Jobs completed, discarded, available and hostile; flow runs completed (a map),
    waiting for a signal (with a sub-flow), failed, and one with hostile step names."""
    harness = testing.TestQueue("manual", app=store)
    seed = Seeded(store, harness)
    seed.completed = store.insert(flows.Echo.new({"n": 1})).id
    seed.discarded = store.insert(flows.Boom.new({"why": flows.HOSTILE})).id
    seed.hostile = store.insert(
        flows.Echo.new({"html": flows.HOSTILE}, meta={"note": flows.HOSTILE})
    ).id
    harness.drain("default", raise_on_failure=False)
    seed.available = store.insert(flows.Idle.new({"to": "a@example.com"})).id
    seed.fanout_run = store.start_run(flows.fanout, {"count": 3}).workflow_id
    seed.approval_run = store.start_run(flows.approval, {"title": "T"}).workflow_id
    seed.hostile_run = store.start_run(flows.hostile, None).workflow_id
    flows.FAILING.add("compute")
    try:
        seed.failed_run = store.start_run(flows.broken, None).workflow_id
        harness.drain("flows", raise_on_failure=False)
    finally:
        flows.FAILING.discard("compute")
    return seed


Client = Callable[..., TestClient]


@pytest.fixture
def client(store: pgflow.Pgflow) -> Iterator[Client]:
    """Make a TestClient of a dashboard on the store: create_app's options as keywords."""
    made: list[TestClient] = []

    def make(**options: Any) -> TestClient:
        app = create_app(store, cache_seconds=0, **options)
        test_client = TestClient(app, base_url="http://dash.test")
        made.append(test_client)
        return test_client

    yield make
    for test_client in made:
        test_client.close()


def csrf_of(html: str) -> str:
    """The CSRF token of the first form on a page."""
    marker = 'name="csrf_token" value="'
    start = html.index(marker) + len(marker)
    return html[start : html.index('"', start)]


def signed_in(make: Client, **options: Any) -> TestClient:
    """A client of a dashboard with actions, signed in through the login form."""
    browser = make(allow_actions=True, token=TOKEN, **options)
    form = browser.get("/login")
    response = browser.post(
        "/login",
        data={"token": TOKEN, "csrf_token": csrf_of(form.text), "next": "/"},
        follow_redirects=False,
    )
    assert response.status_code == 303, response.text
    return browser
