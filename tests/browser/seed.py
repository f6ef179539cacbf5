"""Fill a database, through pgflow's public API, with what every dashboard page shows.

A short-lived worker instance runs the jobs and flow tasks it can (completed jobs, a
discarded job with its traceback, finished and failed runs, runs waiting for a signal), then
stops; the jobs and runs the tests act on are left in the states the actions expect.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial

import attrs

import pgflow
from tests.browser import flows

#: How long the seeding worker may take to bring everything to its expected state.
SEED_TIMEOUT = 30.0


@attrs.frozen
class Seeded:
    """Ids of what was seeded, by the role each plays in the tests."""

    completed_job: int
    failed_job: int
    retry_job: int
    delete_job: int
    hostile_error_job: int
    cancel_job: int
    live_job: int
    csrf_job: int
    noscript_job: int
    mounted_job: int
    mounted_live_job: int
    hostile_args_job: int
    #: Every job of queue "mail" (never served while the tests run).
    mail_jobs: tuple[int, ...]
    map_run: str
    restart_run: str
    parent_run: str
    child_run: str
    signal_run: str
    cancel_run: str
    waiting_run: str
    resume_run: str
    failed_run: str


def wait_until(check: Callable[[], bool], what: str, timeout: float = SEED_TIMEOUT) -> None:
    """Return once `check()` holds; AssertionError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


def seed(url: str) -> Seeded:
    """Migrate `url`, insert and run the seeded jobs and runs; return their ids."""
    app = pgflow.Pgflow(
        url,
        queues={"default": 2, "flows": 4},
        instance_id="browser-seeder",
        poll_interval=0.05,
    )
    try:
        app.migrate()
        return _seed(app)
    finally:
        app.close()


def _seed(app: pgflow.Pgflow) -> Seeded:
    echo = app.insert(flows.Echo.new({"greeting": "hello"}, meta={"source": "browser-test"}))
    boom = [app.insert(flows.Boom.new({"why": why})) for why in ("shown", "retry", "delete")]
    hostile_error = app.insert(flows.Boom.new({"why": flows.HOSTILE}))
    # Queue "late" only grows, in the live-count test (the other tests' counts stay put).
    app.insert(flows.Mail.new({"to": "late-0@example.com"}, queue="late"))
    roles = ("cancel", "live", "csrf", "noscript", "mounted", "mounted-live")
    waiting = [app.insert(flows.Mail.new({"to": to})) for to in roles]
    hostile_args = app.insert(flows.Mail.new({"x": flows.HOSTILE}, meta={"note": flows.HOSTILE}))
    readers = app.insert([flows.Mail.new({"to": f"reader-{n}@example.com"}) for n in range(3)])

    map_run = app.start_run(flows.fanout, {"count": 3}).workflow_id
    restart_run = app.start_run(flows.fanout, {"count": 2}).workflow_id
    parent_run = app.start_run(flows.parent, {"count": 4}).workflow_id
    signal_run, cancel_run, waiting_run = (
        app.start_run(flows.approval, {"title": title}).workflow_id
        for title in ("signal me", "cancel me", "waiting")
    )
    resume_run, failed_run = (
        app.start_run(flows.fragile, {"n": n, "note": flows.HOSTILE}).workflow_id for n in (1, 2)
    )

    app.start()
    try:
        for job in (echo, *boom, hostile_error):
            wait_until(partial(job_finished, app, job.id), f"job {job.id} to finish")
        for run_id in (map_run, restart_run, parent_run):
            wait_until(partial(_run_is, app, run_id, "completed"), f"run {run_id} to complete")
        for run_id in (resume_run, failed_run):
            wait_until(partial(_run_is, app, run_id, "failed"), f"run {run_id} to fail")
        for run_id in (signal_run, cancel_run, waiting_run):
            wait_until(
                partial(_step_is, app, run_id, "draft", "completed"),
                f"run {run_id} to reach its wait",
            )
    finally:
        app.stop(timeout=10.0)
    parent = app.get_run(parent_run)
    assert parent is not None
    child_run = parent.steps["child"].child_id
    assert child_run is not None, "the parent run's sub-flow step has no child run"
    return Seeded(
        completed_job=echo.id,
        failed_job=boom[0].id,
        retry_job=boom[1].id,
        delete_job=boom[2].id,
        hostile_error_job=hostile_error.id,
        cancel_job=waiting[0].id,
        live_job=waiting[1].id,
        csrf_job=waiting[2].id,
        noscript_job=waiting[3].id,
        mounted_job=waiting[4].id,
        mounted_live_job=waiting[5].id,
        hostile_args_job=hostile_args.id,
        mail_jobs=tuple(job.id for job in (*waiting, hostile_args, *readers)),
        map_run=map_run,
        restart_run=restart_run,
        parent_run=parent_run,
        child_run=child_run,
        signal_run=signal_run,
        cancel_run=cancel_run,
        waiting_run=waiting_run,
        resume_run=resume_run,
        failed_run=failed_run,
    )


def job_finished(app: pgflow.Pgflow, job_id: int) -> bool:
    """True once the job is completed or discarded."""
    job = app.get_job(job_id)
    return job is not None and job.state in (pgflow.JobState.COMPLETED, pgflow.JobState.DISCARDED)


def _run_is(app: pgflow.Pgflow, workflow_id: str, state: str) -> bool:
    run = app.get_run(workflow_id)
    return run is not None and run.state.value == state


def _step_is(app: pgflow.Pgflow, workflow_id: str, step: str, state: str) -> bool:
    run = app.get_run(workflow_id)
    return run is not None and step in run.steps and run.steps[step].state.value == state
