"""Every page of the dashboard renders on memory, SQLite and PostgreSQL, shows what the store
holds, filters, follows the markup contract the browser tests rely on, and works mounted."""

from __future__ import annotations

import re
import threading
from datetime import UTC, datetime, timedelta

import pytest
from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.testclient import TestClient

from pgflow.dashboard import create_app
from pgflow.records import InstanceInfo, JobState, NewJob
from tests.dashboard.conftest import Client, Seeded


def _ids(html: str, attribute: str) -> list[str]:
    return re.findall(rf'<tr {attribute}="([^"]*)"', html)


def _cell(html: str, queue: str, state: str) -> int:
    row = html.split(f'<tr data-queue="{queue}">', 1)[1].split("</tr>", 1)[0]
    found = re.search(rf'<td data-state="{state}">(\d+)</td>', row)
    assert found is not None, row
    return int(found.group(1))


def test_every_page_renders_read_only(seeded: Seeded, client: Client) -> None:
    browser = client()
    run_ids = [seeded.fanout_run, seeded.approval_run, seeded.failed_run, seeded.hostile_run]
    job_ids = [seeded.completed, seeded.discarded, seeded.available, seeded.hostile]
    paths = ["/", "/queues/default", "/jobs", "/runs", "/instances"]
    paths += [f"/jobs/{job_id}" for job_id in job_ids]
    paths += [f"/runs/{run_id}" for run_id in run_ids]
    for path in paths:
        response = browser.get(path)
        assert response.status_code == 200, (path, response.text)
        assert "data-action=" not in response.text, path  # read-only: no action buttons
        assert response.headers["cache-control"] == "no-store"
        assert "script-src 'self'" in response.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
        assert response.headers["x-frame-options"] == "DENY"
        assert "<script>" not in response.text  # only <script src=...>: no inline script


def test_overview_counts_each_queue_by_state_with_its_hour(seeded: Seeded, client: Client) -> None:
    html = client().get("/").text
    assert set(_ids(html, "data-queue")) == {"default", "flows", "mail"}
    assert _cell(html, "default", "completed") == 2
    assert _cell(html, "default", "discarded") == 1
    assert _cell(html, "mail", "available") == 1
    assert _cell(html, "mail", "completed") == 0
    row = html.split('<tr data-queue="default">', 1)[1].split("</tr>", 1)[0]
    assert '<svg class="throughput"' in row
    assert "2 completed, 1 failed" in row
    assert "33.3%" in row
    assert 'href="/queues/default"' in row


def test_a_paused_queue_is_marked_and_counts_come_from_the_cache(
    seeded: Seeded, client: Client
) -> None:
    seeded.app.pause_queue("mail")
    browser = client()
    html = browser.get("/").text
    row = html.split('<tr data-queue="mail">', 1)[1].split("</tr>", 1)[0]
    assert '<span class="paused">paused</span>' in row
    queue_page = browser.get("/queues/mail").text
    assert '<span class="paused">paused</span>' in queue_page
    assert f'<tr data-job-id="{seeded.available}">' in queue_page


def test_counts_are_cached_for_cache_seconds(seeded: Seeded, store: object) -> None:
    app = create_app(store, cache_seconds=3600)
    for thread in threading.enumerate():  # the counts warmed at start, before anything else
        if thread.name == "pgflow-dashboard-warm":
            thread.join(30)
    with TestClient(app) as browser:
        assert _cell(browser.get("/").text, "mail", "available") == 1
        seeded.app.insert(NewJob(worker="tests.dashboard.flows.Idle", queue="mail"))
        assert _cell(browser.get("/").text, "mail", "available") == 1  # the cached count
        assert 'pgflow_jobs{queue="mail",state="available"} 1.0' in browser.get("/metrics").text


def test_pages_never_wait_for_the_first_count(seeded: Seeded, store: object) -> None:
    """Until the counts are known the cells say so, and the live fragment fills them in."""
    app = create_app(store, cache_seconds=3600)
    board = app.state.dashboard
    for thread in threading.enumerate():
        if thread.name == "pgflow-dashboard-warm":
            thread.join(30)
    real = board.read.inspection
    gate = threading.Event()

    class Slow:
        def __getattr__(self, name: str) -> object:
            return getattr(real, name)

        def state_counts(self) -> object:
            assert gate.wait(30)
            return real.state_counts()

    board.read.inspection = Slow()
    board.read.cache.forget()
    with TestClient(app) as browser:
        waiting = browser.get("/").text
        assert "Counting the jobs" in waiting
        counter = next(t for t in threading.enumerate() if t.name.endswith("state_counts"))
        assert browser.get("/queues/mail").status_code == 200  # known once counted
        gate.set()
        counter.join(30)
        assert not counter.is_alive()
        live = browser.get("/?fragment=live").text
        assert "Counting the jobs" not in live
        assert _cell(live, "mail", "available") == 1


def test_jobs_filters(seeded: Seeded, client: Client) -> None:
    browser = client()
    every = _ids(browser.get("/jobs").text, "data-job-id")
    assert every == sorted(every, key=int, reverse=True)  # newest first
    assert {str(seeded.completed), str(seeded.available)} <= set(every)
    assert _ids(browser.get("/jobs?queue=mail").text, "data-job-id") == [str(seeded.available)]
    discarded = _ids(browser.get("/jobs?state=discarded&queue=default").text, "data-job-id")
    assert discarded == [str(seeded.discarded)]
    assert 'id="scan-note"' not in browser.get("/jobs?state=discarded&queue=default").text
    by_worker = browser.get("/jobs?worker=tests.dashboard.flows.Idle").text
    assert _ids(by_worker, "data-job-id") == [str(seeded.available)]
    assert "looked up among the newest 50,000 jobs." in by_worker  # said on the page
    by_text = _ids(browser.get("/jobs?q=EXAMPLE.com").text, "data-job-id")
    assert by_text == [str(seeded.available)]
    assert _ids(browser.get("/jobs?q=%25nothing_like_this").text, "data-job-id") == []
    bad = browser.get("/jobs?state=bogus")
    assert bad.status_code == 200
    assert "unknown state &#39;bogus&#39;" in bad.text
    assert _ids(bad.text, "data-job-id") == []


def test_jobs_pages_back_by_id(seeded: Seeded, client: Client) -> None:
    seeded.app.insert([NewJob(worker="w", queue="bulk", args={"i": i}) for i in range(60)])
    browser = client()
    first = browser.get("/jobs?queue=bulk").text
    shown = _ids(first, "data-job-id")
    assert len(shown) == 50
    older = re.search(r'id="next-page" href="([^"]+)"', first)
    assert older is not None
    rest = _ids(browser.get(older.group(1).replace("&amp;", "&")).text, "data-job-id")
    assert len(rest) == 10
    assert int(rest[0]) < int(shown[-1])


def test_job_detail_shows_args_meta_result_errors_and_instance(
    seeded: Seeded, client: Client
) -> None:
    browser = client()
    done = browser.get(f"/jobs/{seeded.completed}").text
    assert '<span id="job-state" class="badge state-completed">completed</span>' in done
    assert re.search(r'<pre id="job-args">\{\s+&#34;n&#34;: 1\s+\}</pre>', done)
    assert '<pre id="job-result"' in done and "&#34;echo&#34;" in done
    assert '<pre id="job-meta">' in done
    assert re.search(r'<span id="job-instance">[^<]+</span>', done)
    failed = browser.get(f"/jobs/{seeded.discarded}").text
    assert failed.count('<section class="job-error">') == 1
    traceback = failed.split('<pre class="traceback">', 1)[1].split("</pre>", 1)[0]
    assert "Traceback" in traceback and "RuntimeError" in traceback
    assert browser.get("/jobs/999999").status_code == 404
    assert browser.get("/jobs/abc").status_code == 404


def test_runs_filters_and_run_detail(seeded: Seeded, client: Client) -> None:
    browser = client()
    assert set(_ids(browser.get("/runs").text, "data-run-id")) >= {
        seeded.fanout_run,
        seeded.approval_run,
        seeded.failed_run,
    }
    assert _ids(browser.get("/runs?flow=dash_fanout").text, "data-run-id") == [seeded.fanout_run]
    assert _ids(browser.get("/runs?state=failed").text, "data-run-id") == [seeded.failed_run]
    assert "unknown state" in browser.get("/runs?state=nope").text

    fanout = browser.get(f"/runs/{seeded.fanout_run}").text
    assert '<span id="run-state" class="badge state-completed">completed</span>' in fanout
    assert '<svg id="run-graph"' in fanout
    double = fanout.split('data-step="double"', 1)[1].split("</g>", 1)[0]
    assert 'data-state="completed"' in double
    assert ">3/3<" in double
    timeline = fanout.split('<ol id="run-timeline"', 1)[1].split("</ol>", 1)[0]
    assert timeline.count("<li") == 3

    approval = browser.get(f"/runs/{seeded.approval_run}").text
    approve = approval.split('data-step="approve"', 1)[1].split("</g>", 1)[0]
    assert 'data-state="started"' in approve and "waiting for a signal" in approve
    nested = approval.split('data-step="nested"', 1)[1].split("</g>", 1)[0]
    child = seeded.app.get_run(seeded.approval_run).steps["nested"].child_id
    assert child is not None
    assert f'<a href="/runs/{child}">' in nested
    child_page = browser.get(f"/runs/{child}").text
    assert f'href="/runs/{seeded.approval_run}"' in child_page  # back to the parent

    failed = browser.get(f"/runs/{seeded.failed_run}").text
    assert 'data-step="compute" data-state="failed"' in failed
    assert "bug in compute" in failed
    assert browser.get("/runs/no-such-run").status_code == 404


def test_instances_leader_and_cron(store: object, client: Client) -> None:
    from pgflow.app import Pgflow

    assert isinstance(store, Pgflow)
    backend = store.backend
    backend.register_instance(InstanceInfo("web-1", "host-a", 11, {"default": 5}))
    backend.register_instance(InstanceInfo("web-2", "host-b", 12, {"default": 5}))
    backend.mark_offline("web-2")
    assert backend.acquire_leadership("web-1", 60)
    slot = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=1)
    backend.insert_cron_job("tests.Nightly */5 * * * *", slot, NewJob(worker="tests.Nightly"))
    html = client().get("/instances").text
    rows = dict(re.findall(r'<tr data-instance-id="([^"]+)" data-status="(\w+)">', html))
    assert rows == {"web-1": "online", "web-2": "offline"}
    web1 = html.split('data-instance-id="web-1"', 1)[1].split("</tr>", 1)[0]
    assert '<span class="leader">leader</span>' in web1
    assert "leader" not in html.split('data-instance-id="web-2"', 1)[1].split("</tr>", 1)[0]
    cron = html.split('<table id="cron"', 1)[1]
    entry = cron.split('<tr data-cron="tests.Nightly */5 * * * *">', 1)[1].split("</tr>", 1)[0]
    assert "<code>*/5 * * * *</code>" in entry
    next_slot = re.findall(r"<td>(\d{4}-\d\d-\d\d \d\d:\d\d):00</td>", entry)[-1]
    assert int(next_slot[-2:]) % 5 == 0


def test_live_fragment_is_the_content_block_only(seeded: Seeded, client: Client) -> None:
    browser = client()
    for path in ("/", f"/jobs/{seeded.available}", f"/runs/{seeded.approval_run}", "/instances"):
        separator = "&" if "?" in path else "?"
        fragment = browser.get(f"{path}{separator}fragment=live").text
        assert "<html" not in fragment and "<nav" not in fragment
        assert "data-live=" in fragment
    page = browser.get("/").text
    assert "/static/live.js" in page
    script = browser.get("/static/live.js")
    assert script.status_code == 200
    assert "INTERVAL_MS = 2000" in script.text
    assert "fragment" in script.text


def test_metrics_and_health(seeded: Seeded, client: Client) -> None:
    browser = client()
    metrics = browser.get("/metrics")
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    assert 'pgflow_jobs{queue="default",state="completed"} 2.0' in text
    assert 'pgflow_jobs{queue="default",state="discarded"} 1.0' in text
    assert 'pgflow_runs{flow="dash_fanout",state="completed"} 1.0' in text
    assert 'pgflow_runs{flow="dash_broken",state="failed"} 1.0' in text
    assert all(line.startswith(("#", "pgflow_")) for line in text.splitlines() if line.strip())
    assert browser.get("/healthz").text == "ok"


def test_mounted_under_a_prefix_every_link_keeps_it(seeded: Seeded, store: object) -> None:
    outer = Starlette(routes=[Mount("/pgflow", app=create_app(store, cache_seconds=0))])
    with TestClient(outer) as browser:
        html = browser.get("/pgflow/").text
        assert 'href="/pgflow/queues/default"' in html
        assert 'href="/pgflow/static/dashboard.css"' in html
        assert browser.get("/pgflow/static/dashboard.css").status_code == 200
        run = browser.get(f"/pgflow/runs/{seeded.approval_run}").text
        assert re.search(r'<a href="/pgflow/runs/[0-9a-f-]+">', run)
        job = browser.get(f"/pgflow/jobs/{seeded.completed}").text
        assert 'href="/pgflow/queues/default"' in job


@pytest.mark.parametrize("state", [state.value for state in JobState])
def test_every_state_filter_is_accepted(seeded: Seeded, client: Client, state: str) -> None:
    response = client().get(f"/jobs?state={state}")
    assert response.status_code == 200
    assert "unknown state" not in response.text


def test_a_store_that_fails_gives_a_503_page_not_a_traceback() -> None:
    from pgflow_backends.memory import InMemoryBackend

    backend = InMemoryBackend()
    app = create_app(backend, cache_seconds=0)
    backend.close()
    with TestClient(app, raise_server_exceptions=False) as browser:
        response = browser.get("/jobs")
        assert response.status_code == 503
        assert "The store is unavailable" in response.text
        assert "closed" in response.text
        assert "Traceback" not in response.text
        assert browser.get("/healthz").status_code == 503
