"""Each action changes the store, through the library's own operations, on memory, SQLite
and PostgreSQL; a refused one says why on the page it returns to."""

from __future__ import annotations

import logging
import re

import pytest
from starlette.testclient import TestClient

from pgflow.records import JobState, RunState, StepStatus
from tests.dashboard import flows
from tests.dashboard.conftest import Client, Seeded, csrf_of, signed_in


def _post(browser: TestClient, path: str, **fields: str) -> str:
    """Submit an action form of the page at `path`'s owner, return the page it lands on."""
    page = browser.get(path.rsplit("/", 1)[0]).text
    response = browser.post(path, data={"csrf_token": csrf_of(page), **fields})
    assert response.status_code == 200, response.text
    return response.text


def _flash(html: str) -> str:
    found = re.search(r'<p class="flash (ok|error)" role="status">([^<]*)</p>', html)
    assert found is not None, html
    return f"{found.group(1)}: {found.group(2)}"


def test_job_actions(seeded: Seeded, client: Client) -> None:
    app = seeded.app
    browser = signed_in(client)
    assert _flash(_post(browser, f"/jobs/{seeded.discarded}/retry")).startswith("ok: ")
    retried = app.get_job(seeded.discarded)
    assert retried is not None and retried.state is JobState.AVAILABLE
    assert _flash(_post(browser, f"/jobs/{seeded.available}/cancel")).startswith("ok: ")
    cancelled = app.get_job(seeded.available)
    assert cancelled is not None and cancelled.state is JobState.CANCELLED
    landed = _post(browser, f"/jobs/{seeded.completed}/delete")
    assert _flash(landed) == f"ok: job {seeded.completed} deleted"
    assert app.get_job(seeded.completed) is None


def test_an_executing_job_is_not_deleted(seeded: Seeded, client: Client) -> None:
    app = seeded.app
    job = app.insert(flows.Idle.new())
    claimed = app.backend.claim_jobs("mail", "worker-1", 10)
    assert job.id in [item.id for item in claimed]
    browser = signed_in(client)
    landed = _post(browser, f"/jobs/{job.id}/delete")
    assert _flash(landed).startswith(f"error: job {job.id} is executing")
    stored = app.get_job(job.id)
    assert stored is not None and stored.state is JobState.EXECUTING


def test_queue_pause_and_resume(
    seeded: Seeded, client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pgflow.dashboard")
    app = seeded.app
    browser = signed_in(client)
    page = browser.get("/queues/mail").text
    assert 'data-action="pause"' in page
    assert _flash(_post(browser, "/queues/mail/pause")) == "ok: queue mail paused"
    assert [c.queue for c in app.backend.queue_controls() if c.paused] == ["mail"]
    overview = browser.get("/").text
    assert 'data-action="resume"' in overview.split('<tr data-queue="mail">', 1)[1]
    assert _flash(_post(browser, "/queues/mail/resume")) == "ok: queue mail resumed"
    assert not any(c.paused for c in app.backend.queue_controls())
    logged = [r for r in caplog.records if getattr(r, "action", None) == "resume"]
    assert logged and logged[0].queue == "mail" and logged[0].ok is True


def test_run_signal_then_cancel(seeded: Seeded, client: Client) -> None:
    app = seeded.app
    browser = signed_in(client)
    run_page = browser.get(f"/runs/{seeded.approval_run}").text
    assert 'data-action="run-signal"' in run_page and 'data-action="run-cancel"' in run_page
    bad = _post(browser, f"/runs/{seeded.approval_run}/signal", name="approve", payload="{no")
    assert _flash(bad).startswith("error: the signal&#39;s payload is not JSON")
    nested = "[" * 100_000 + "]" * 100_000  # deeper than Python's parser recurses
    deep = _post(browser, f"/runs/{seeded.approval_run}/signal", name="approve", payload=nested)
    assert _flash(deep).startswith("error: the signal&#39;s payload is not JSON")
    landed = _post(browser, f"/runs/{seeded.approval_run}/signal", name="approve", payload='"ann"')
    assert _flash(landed) == "ok: signal delivered to step approve"
    run = app.get_run(seeded.approval_run)
    assert run is not None and run.steps["approve"].state is StepStatus.COMPLETED
    assert run.steps["approve"].output == "ann"
    assert _flash(_post(browser, f"/runs/{seeded.approval_run}/cancel")).startswith("ok: ")
    cancelled = app.get_run(seeded.approval_run)
    assert cancelled is not None and cancelled.state is RunState.CANCELLED
    again = _post(browser, f"/runs/{seeded.approval_run}/cancel")
    assert _flash(again).startswith("error: ")


def test_run_resume_and_restart(seeded: Seeded, client: Client) -> None:
    app = seeded.app
    browser = signed_in(client)
    failed_page = browser.get(f"/runs/{seeded.failed_run}").text
    assert 'data-action="run-resume"' in failed_page
    assert _flash(_post(browser, f"/runs/{seeded.failed_run}/resume")).startswith("ok: ")
    resumed = app.get_run(seeded.failed_run)
    assert resumed is not None and resumed.state is RunState.RUNNING
    seeded.harness.drain("flows", raise_on_failure=False)
    finished = app.get_run(seeded.failed_run)
    assert finished is not None and finished.state is RunState.COMPLETED
    assert finished.output == {"compute": 42}

    landed = _post(browser, f"/runs/{seeded.fanout_run}/restart", from_step="total")
    assert '<span id="run-state"' in landed
    new_id = re.search(r"restarted as ([0-9a-f-]{36})", landed)
    assert new_id is not None
    restarted = app.get_run(new_id.group(1))
    assert restarted is not None and restarted.restart_of == seeded.fanout_run
    assert restarted.steps["items"].state is StepStatus.COMPLETED  # kept, not re-run


def test_runs_whose_definition_is_unknown_say_why(seeded: Seeded, client: Client) -> None:
    from pgflow.graph.registry import flows as registry

    run = seeded.app.get_run(seeded.failed_run)
    assert run is not None and run.fingerprint is not None
    browser = signed_in(client)
    known = registry.find(run.workflow, run.fingerprint)
    assert known is not None
    page = browser.get(f"/runs/{seeded.failed_run}").text
    assert "Resume and restart are not offered" not in page
    in_process = seeded.app.backend.start_run(
        workflow_id="in-process-1", workflow="w", input=None, max_attempts=1
    )
    assert in_process.created
    seeded.app.backend.finish_run("in-process-1", 1, RunState.FAILED, error={"kind": "E"})
    page = browser.get("/runs/in-process-1").text
    assert "Resume and restart are not offered: an in-process run" in page
    assert 'data-action="run-resume"' not in page


def test_a_run_whose_definition_is_not_imported_says_to_import_it(
    seeded: Seeded, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pgflow.graph.registry import flows as registry

    monkeypatch.setattr(registry, "find", lambda name, fingerprint: None)
    browser = signed_in(client)
    page = browser.get(f"/runs/{seeded.failed_run}").text
    assert "Resume and restart are not offered" in page
    assert "--import MODULE" in page
    assert 'data-action="run-resume"' not in page and 'data-action="run-restart"' not in page
    assert 'data-action="run-cancel"' not in page  # failed: nothing to cancel either


def test_imports_and_flows_make_definitions_known(seeded: Seeded) -> None:
    from pgflow.dashboard import create_app
    from pgflow.errors import DefinitionError

    create_app(seeded.app, imports=["tests.dashboard.flows"], flows=[flows.broken], cache_seconds=0)
    with pytest.raises(ModuleNotFoundError):
        create_app(seeded.app, imports=["tests.dashboard.no_such_module"], cache_seconds=0)
    with pytest.raises(DefinitionError):
        create_app(seeded.app, flows=[object()], cache_seconds=0)
