"""The dashboard's pages (GET): overview, queue, jobs, job, runs, run, instances, login,
plus /metrics and /healthz. Each handler is a plain function: Starlette runs it on its
thread pool, where the backend's blocking reads belong.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from pgflow.dashboard.charts import throughput_chart
from pgflow.dashboard.graph_svg import GraphStep, read_definition, run_graph
from pgflow.dashboard.runs_view import definition_problem, timeline
from pgflow.identifiers import storable_job_id, storable_workflow_id
from pgflow.inspection import SCAN_LIMIT, JobFilter, scans_window
from pgflow.records import JobState, RunRecord, RunState, StepRecord

if TYPE_CHECKING:
    from pgflow.dashboard.app import Dashboard

__all__ = ["page_routes"]

PAGE_SIZE = 50


def page_routes(board: Dashboard) -> list[Route]:
    pages = Pages(board)
    return [
        Route("/", pages.overview, name="overview"),
        Route("/queues/{name}", pages.queue, name="queue"),
        Route("/jobs", pages.jobs, name="jobs"),
        Route("/jobs/{job_id}", pages.job, name="job"),
        Route("/runs", pages.runs, name="runs"),
        Route("/runs/{run_id}", pages.run, name="run"),
        Route("/instances", pages.instances, name="instances"),
        Route("/login", pages.login, name="login"),
        Route("/metrics", pages.metrics, name="metrics"),
        Route("/healthz", pages.healthz, name="healthz"),
    ]


def _text(request: Request, name: str, longest: int = 255) -> str | None:
    """A filter from the query string: stripped, None when empty, cut at `longest`."""
    value = request.query_params.get(name, "").strip()
    return value[:longest] or None


def _nul_problems(request: Request, *names: str) -> list[str]:
    """Filters holding a NUL byte, named: no stored name or args text can contain one (and
    PostgreSQL refuses it as a parameter), so the page says so instead of querying."""
    return [
        f"the {name} filter contains a NUL byte"
        for name in names
        if "\x00" in request.query_params.get(name, "")
    ]


def _int(request: Request, name: str) -> int | None:
    value = request.query_params.get(name, "").strip()
    return int(value) if value.isdigit() and len(value) < 19 else None


class Pages:
    """The GET handlers, bound to one dashboard."""

    def __init__(self, board: Dashboard) -> None:
        self.board = board

    def _not_found(self, request: Request, what: str) -> Response:
        return self.board.page(request, "error.html", status=404, heading="Not found", message=what)

    def overview(self, request: Request) -> Response:
        read = self.board.read
        queues = read.queues()
        instances = self.board.backend.list_instances()
        return self.board.page(
            request,
            "overview.html",
            queues=queues,
            charts={row.name: throughput_chart(row.throughput, row.name) for row in queues},
            states=[state.value for state in JobState],
            online=sum(1 for instance in instances if instance.status == "online"),
            leader=read.inspection.leader(),
            runs=read.runs_counted(),
            counting=any(row.counts is None for row in queues) or read.counted() is None,
        )

    def queue(self, request: Request) -> Response:
        name = request.path_params["name"]
        rows = self.board.read.queues(only=name)
        if not rows:
            return self._not_found(request, f"no queue named {name!r} has jobs or instances")
        row = rows[0]
        jobs = self.board.read.inspection.find_jobs(JobFilter(queue=name, limit=20))
        return self.board.page(
            request,
            "queue.html",
            queue=row,
            chart=throughput_chart(row.throughput, row.name),
            states=[state.value for state in JobState],
            jobs=jobs,
            scan_limit=SCAN_LIMIT,
        )

    def jobs(self, request: Request) -> Response:
        state_text = _text(request, "state")
        problems = _nul_problems(request, "queue", "worker", "q")
        state: JobState | None = None
        if state_text is not None:
            try:
                state = JobState(state_text)
            except ValueError:
                problems.append(f"unknown state {state_text!r}")
        where = JobFilter(
            queue=_text(request, "queue"),
            state=state,
            worker=_text(request, "worker"),
            text=_text(request, "q", 200),
            before=_int(request, "before"),
            limit=PAGE_SIZE,
        )
        found = [] if problems else self.board.read.inspection.find_jobs(where)
        next_before = found[-1].id if len(found) == PAGE_SIZE else None
        return self.board.page(
            request,
            "jobs.html",
            jobs=found,
            where=where,
            problems=problems,
            states=[state.value for state in JobState],
            queues=sorted({row.queue for row in self.board.read.counted() or ()}),
            next_before=next_before,
            scan_limit=SCAN_LIMIT if scans_window(where) else None,
        )

    def job(self, request: Request) -> Response:
        raw = request.path_params["job_id"]
        job_id = int(raw) if raw.isdigit() and len(raw) < 19 else None
        job = (
            self.board.backend.get_job(job_id)
            if job_id is not None and storable_job_id(job_id)
            else None
        )
        if job is None:
            return self._not_found(request, f"no job {raw!r} (it may have been pruned)")
        return self.board.page(request, "job.html", job=job)

    def runs(self, request: Request) -> Response:
        state_text = _text(request, "state")
        problems = _nul_problems(request, "flow")
        state: RunState | None = None
        if state_text is not None:
            try:
                state = RunState(state_text)
            except ValueError:
                problems.append(f"unknown state {state_text!r}")
        flow = _text(request, "flow")
        found: list[RunRecord] = []
        if not problems:
            found = self.board.backend.list_runs(workflow=flow, state=state, limit=PAGE_SIZE)
        return self.board.page(
            request,
            "runs.html",
            runs=found,
            flow=flow,
            state=state_text,
            problems=problems,
            states=[state.value for state in RunState],
            flows=sorted({row.flow for row in self.board.read.runs_counted() or ()}),
        )

    def run(self, request: Request) -> Response:
        run_id = request.path_params["run_id"]
        run = self.board.pgflow.get_run(run_id) if storable_workflow_id(run_id) else None
        if run is None:
            return self._not_found(request, f"no run {run_id!r} (it may have been pruned)")
        records = self.board.backend.get_steps(run_id)
        steps = _graph_steps(run, records)
        problem = definition_problem(run)
        return self.board.page(
            request,
            "run.html",
            run=run,
            graph=run_graph(steps, self.board.root(request)) if steps else None,
            timeline=timeline(run, records),
            definition_problem=problem,
            can_resume=run.state in (RunState.FAILED, RunState.CANCELLED) and problem is None,
            can_restart=run.state is not RunState.RUNNING and problem is None,
            waits=[
                step.name
                for step in steps
                if step.kind == "wait" and step.state in ("pending", "started")
            ],
        )

    def instances(self, request: Request) -> Response:
        read = self.board.read
        now = read.now()
        return self.board.page(
            request,
            "instances.html",
            instances=self.board.backend.list_instances(),
            leader=read.inspection.leader(),
            cron=read.cron(now),
            now=now,
        )

    def login(self, request: Request) -> Response:
        if not self.board.access.can_sign_in:
            return self.board.page(
                request,
                "error.html",
                status=404,
                heading="No sign-in",
                message="This dashboard has no token to sign in with.",
            )
        return self.board.page(request, "login.html", next=_text(request, "next") or "/")

    def metrics(self, request: Request) -> Response:
        from pgflow.dashboard.metrics import exposition

        body, content_type = exposition(self.board)
        return PlainTextResponse(body, media_type=content_type)

    def healthz(self, request: Request) -> Response:
        try:
            self.board.backend.database_time()
        except Exception as exc:  # any failure to reach the store is "unhealthy"
            return PlainTextResponse(f"unhealthy: {type(exc).__name__}", status_code=503)
        return PlainTextResponse("ok")


def _graph_steps(run: RunRecord, records: list[StepRecord]) -> list[GraphStep]:
    """The definition's steps with the run's state of each: the stored step states of a
    distributed run, else the last recorded attempt of an in-process one."""
    shapes = read_definition(run.definition)
    last_outcome: dict[str, str] = {}
    for record in records:
        last_outcome[record.step] = record.outcome.value
    drawn = []
    for shape in shapes:
        state = run.steps.get(shape.name)
        if state is not None:
            progress = (
                (state.tasks_done, state.tasks_total) if state.tasks_total is not None else None
            )
            drawn.append(
                attrs.evolve(
                    shape,
                    state=state.state.value,
                    progress=progress,
                    child_id=state.child_id,
                    kind=state.kind or shape.kind,
                )
            )
        else:
            drawn.append(attrs.evolve(shape, state=last_outcome.get(shape.name, "pending")))
    return drawn
