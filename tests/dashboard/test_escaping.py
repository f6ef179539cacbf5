"""Every value a job or run carries is shown as text: hostile args, meta, results, errors,
tracebacks, step names, queue and worker names never become markup."""

from __future__ import annotations

from markupsafe import escape

from pgflow.records import NewJob
from tests.dashboard import flows
from tests.dashboard.conftest import Client, Seeded

HOSTILE = flows.HOSTILE


def _clean(html: str) -> None:
    assert HOSTILE not in html
    assert "<script>alert" not in html
    assert "<img src=x" not in html


def test_hostile_job_values_are_text(seeded: Seeded, client: Client) -> None:
    browser = client()
    page = browser.get(f"/jobs/{seeded.hostile}").text
    _clean(page)
    args = page.split('<pre id="job-args">', 1)[1].split("</pre>", 1)[0]
    assert "&lt;script&gt;alert(" in args
    meta = page.split('<pre id="job-meta">', 1)[1].split("</pre>", 1)[0]
    assert "&lt;script&gt;" in meta
    result = page.split('<pre id="job-result"', 1)[1].split("</pre>", 1)[0]
    assert "&lt;img src=x" in result
    failed = browser.get(f"/jobs/{seeded.discarded}").text
    _clean(failed)
    error = failed.split('<section class="job-error">', 1)[1].split("</section>", 1)[0]
    assert "&lt;script&gt;" in error
    for path in ("/jobs", "/jobs?q=script", "/queues/default", "/"):
        _clean(browser.get(path).text)


def test_hostile_step_names_are_text_in_the_graph_and_timeline(
    seeded: Seeded, client: Client
) -> None:
    page = client().get(f"/runs/{seeded.hostile_run}").text
    _clean(page)
    name = HOSTILE[:60]
    assert f'data-step="{escape(name)}"' in page
    timeline = page.split('<ol id="run-timeline"', 1)[1].split("</ol>", 1)[0]
    assert str(escape(name)) in timeline
    output = page.split('<pre id="run-output"', 1)[1].split("</pre>", 1)[0]
    assert "&lt;script&gt;" in output


def test_hostile_names_and_filters_are_text(seeded: Seeded, client: Client) -> None:
    seeded.app.insert(NewJob(worker="x.Worker", queue="q1", args={"k": "v"}))
    browser = client()
    reflected = browser.get("/jobs", params={"q": HOSTILE, "worker": '"><svg onload=1>'}).text
    _clean(reflected)
    assert "<svg onload" not in reflected
    assert "&lt;svg onload=1&gt;" in reflected or "&#34;&gt;&lt;svg" in reflected
    missing = browser.get("/runs/" + "%3Cscript%3Ex").text
    assert "<script>x" not in missing
    assert browser.get("/queues/%3Cb%3E").status_code == 404
    assert "<b>" not in browser.get("/queues/%3Cb%3E").text


def test_a_nul_byte_in_a_filter_is_named_not_a_store_failure(
    seeded: Seeded, client: Client
) -> None:
    """No stored name or args text can hold a NUL; PostgreSQL refuses one in a parameter.
    The page says which filter is at fault instead of reporting the store as failing."""
    browser = client()
    for name in ("q", "queue", "worker"):
        response = browser.get("/jobs", params={name: "a\x00b"})
        assert response.status_code == 200, (name, response.status_code)
        assert f"the {name} filter contains a NUL byte" in response.text
        assert 'data-job-id="' not in response.text
    runs = browser.get("/runs", params={"flow": "a\x00b"})
    assert runs.status_code == 200 and "the flow filter contains a NUL byte" in runs.text
