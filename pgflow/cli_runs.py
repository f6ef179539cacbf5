"""`pgflow runs` and `pgflow run show|cancel|resume|restart|signal ID`: distributed runs from
the command line.

Registered on the `pgflow` group by pgflow.cli; every command also prints `--json`. `show`
reads only the store (a run's stored definition gives its graph); `resume`, `restart` and
`signal` need the run's flow definition, so they import the modules that define it
(`--import MODULE`, repeatable, as for `pgflow worker`).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import click

from pgflow.backend import Backend, FlowStore
from pgflow.cli import (
    clean_errors,
    configure_logging,
    import_modules,
    log_level_option,
    open_backend,
    render_table,
    resolve_url,
    url_option,
)
from pgflow.errors import PgflowError, SignalError
from pgflow.records import RunRecord, RunState, StepState

if TYPE_CHECKING:
    from pgflow.app import Pgflow

__all__ = ["render_run", "render_runs", "run_data", "run_group", "runs_command"]

#: How deep `run show` nests the runs of sub-flow steps.
MAX_CHILD_DEPTH = 3

_STATES = [state.value for state in RunState]


@contextmanager
def _backend(url: str | None, log_level: str) -> Iterator[Backend]:
    configure_logging(log_level)
    resolved = resolve_url(url)
    with clean_errors(resolved):
        backend = open_backend(resolved)
        try:
            backend.check_schema()
            yield backend
        finally:
            backend.close()


@contextmanager
def _app(url: str | None, log_level: str, imports: tuple[str, ...]) -> Iterator[Pgflow]:
    """An app (not started) on the store, after importing the modules defining flows."""
    configure_logging(log_level)
    resolved = resolve_url(url)
    import_modules(imports)
    with clean_errors(resolved):
        from pgflow.app import Pgflow

        backend = open_backend(resolved)
        try:
            backend.check_schema()
            yield Pgflow(backend, instance_id="pgflow-cli")
        finally:
            backend.close()


def _steps(backend: Backend, workflow_id: str) -> Mapping[str, StepState]:
    return backend.get_step_states(workflow_id) if isinstance(backend, FlowStore) else {}


def _json_argument(text: str | None, param_hint: str) -> Any:
    """A JSON value given on the command line; a usage error (exit 2) naming it otherwise."""
    if text is None:
        return None
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        shown = repr(text) if len(text) <= 80 else f"{text[:80]!r}..."
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise click.BadParameter(
            f"{shown} is not JSON ({reason}); quote strings, e.g. '\"yes\"' or '{{\"ok\": true}}'",
            param_hint=param_hint,
        ) from None


def import_option(func: Any) -> Any:
    """`--import MODULE` (repeatable): the modules that define the run's flows."""
    return click.option(
        "--import",
        "-i",
        "imports",
        multiple=True,
        metavar="MODULE",
        help="Module defining the run's flow, imported first (repeatable), e.g. myapp.flows.",
    )(func)


@click.command("runs", short_help="List workflow runs, newest first.")
@url_option
@click.option("--state", type=click.Choice(_STATES), help="Only runs in this state.")
@click.option("--flow", "flow", metavar="NAME", help="Only runs of this flow (or workflow).")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(min=1))
@click.option("--json", "as_json", is_flag=True, help="Print the same data as JSON.")
@log_level_option("WARNING")
def runs_command(
    url: str | None, state: str | None, flow: str | None, limit: int, as_json: bool, log_level: str
) -> None:
    """List runs, newest first, optionally of one flow or in one state."""
    with _backend(url, log_level) as backend:
        found = backend.list_runs(
            workflow=flow, state=None if state is None else RunState(state), limit=limit
        )
        if as_json:
            click.echo(json.dumps([_run_fields(run) for run in found], indent=2))
        else:
            click.echo(render_runs(found))


@click.group("run", short_help="Show, cancel, resume, restart or signal one run.")
def run_group() -> None:
    """One workflow run by id: `show` it with its steps, `cancel`, `resume` or `restart`
    it, or `signal` one of its wait_for steps."""


@run_group.command("show", short_help="Show a run and its steps as a tree.")
@click.argument("workflow_id")
@url_option
@click.option("--json", "as_json", is_flag=True, help="Print the same data as JSON.")
@log_level_option("WARNING")
def show(workflow_id: str, url: str | None, as_json: bool, log_level: str) -> None:
    """Show run WORKFLOW_ID: its state, result or error, and its steps as a tree (each
    under the dependency it waits for last), sub-flow runs nested under their step."""
    with _backend(url, log_level) as backend:
        run = backend.get_run(workflow_id)
        if run is None:
            raise click.ClickException(f"run {workflow_id!r} is not stored")
        if as_json:
            click.echo(json.dumps(run_data(run, _steps(backend, workflow_id), backend), indent=2))
        else:
            click.echo(render_run(run, _steps(backend, workflow_id), backend))


@run_group.command("cancel", short_help="Cancel a running distributed run.")
@click.argument("workflow_id")
@url_option
@click.option("--json", "as_json", is_flag=True, help="Print the run as JSON afterwards.")
@log_level_option("WARNING")
def cancel(workflow_id: str, url: str | None, as_json: bool, log_level: str) -> None:
    """Cancel run WORKFLOW_ID: queued tasks cancelled, running ones asked to stop."""
    with _backend(url, log_level) as backend:
        if not isinstance(backend, FlowStore):
            raise click.ClickException(f"{backend.url} does not store distributed runs")
        try:
            run = backend.cancel_run(workflow_id)
        except PgflowError as exc:
            raise click.ClickException(str(exc)) from None
        if run is None:
            raise click.ClickException(f"run {workflow_id!r} is not stored; nothing to cancel")
        if as_json:
            click.echo(json.dumps(run_data(run, _steps(backend, workflow_id)), indent=2))
        else:
            click.echo(f"run {workflow_id} cancelled")


@run_group.command("resume", short_help="Continue a failed or cancelled run.")
@click.argument("workflow_id")
@url_option
@import_option
@click.option("--json", "as_json", is_flag=True, help="Print the run as JSON afterwards.")
@log_level_option("WARNING")
def resume(
    workflow_id: str, url: str | None, imports: tuple[str, ...], as_json: bool, log_level: str
) -> None:
    """Resume run WORKFLOW_ID where it stopped: completed steps are kept, the others run
    again. Import the module defining its flow with --import (after deploying the fix)."""
    with _app(url, log_level, imports) as app:
        try:
            handle = app.resume_run(workflow_id)
        except PgflowError as exc:
            raise click.ClickException(str(exc)) from None
        _print_run(app, handle.workflow_id, as_json, f"run {workflow_id} resumed")


@run_group.command("restart", short_help="Run a finished run again as a new run.")
@click.argument("workflow_id")
@url_option
@import_option
@click.option(
    "--from",
    "from_step",
    metavar="STEP",
    help="Re-run this step and everything after it; keep the other steps' outputs.",
)
@click.option(
    "--input",
    "input_json",
    metavar="JSON",
    help="A new input (JSON): re-runs the steps that read the input and what follows "
    "(null: keep the old input).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the new run as JSON.")
@log_level_option("WARNING")
def restart(
    workflow_id: str,
    url: str | None,
    imports: tuple[str, ...],
    from_step: str | None,
    input_json: str | None,
    as_json: bool,
    log_level: str,
) -> None:
    """Start a new run of finished run WORKFLOW_ID's flow, linked to it (restart_of):
    every step again, or from --from STEP on, on its input or on --input JSON."""
    new_input = _json_argument(input_json, "'--input'")
    with _app(url, log_level, imports) as app:
        _check_step(app, workflow_id, from_step, "'--from'")
        try:
            handle = app.restart_run(workflow_id, from_step=from_step, input=new_input)
        except PgflowError as exc:
            raise click.ClickException(str(exc)) from None
        _print_run(
            app, handle.workflow_id, as_json, f"run {workflow_id} restarted as {handle.workflow_id}"
        )


@run_group.command("signal", short_help="Send a signal to a run's wait_for step.")
@click.argument("workflow_id")
@click.argument("name")
@click.argument("payload_json", metavar="[PAYLOAD_JSON]", required=False)
@url_option
@import_option
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as JSON.")
@log_level_option("WARNING")
def signal(
    workflow_id: str,
    name: str,
    payload_json: str | None,
    url: str | None,
    imports: tuple[str, ...],
    as_json: bool,
    log_level: str,
) -> None:
    """Deliver PAYLOAD_JSON (JSON, default null) to wait_for step NAME of running run
    WORKFLOW_ID; a step not reached yet keeps it for when it is."""
    payload = _json_argument(payload_json, "'PAYLOAD_JSON'")
    with _app(url, log_level, imports) as app:
        _check_signal_step(app, workflow_id, name)
        try:
            delivered = app.signal(workflow_id, name, payload)
        except PgflowError as exc:
            raise click.ClickException(str(exc)) from None
        if as_json:
            data = {"workflow_id": workflow_id, "step": name, "delivered": delivered}
            click.echo(json.dumps(data, indent=2))
        elif delivered:
            click.echo(f"signal {name!r} delivered to run {workflow_id}")
        else:
            click.echo(
                f"signal {name!r} kept for run {workflow_id}: step {name!r} is not waiting "
                "yet and takes it when it starts"
            )


def _known_plan(app: Pgflow, workflow_id: str) -> Any:
    """The plan of the run's definition when this process knows it, else None (the app's
    own call then says what is wrong)."""
    from pgflow.graph.registry import flows

    run = app.backend.get_run(workflow_id)
    if run is None or run.fingerprint is None:
        return None
    try:
        workflow = flows.find(run.workflow, run.fingerprint)
    except PgflowError:
        return None
    return None if workflow is None else workflow.plan


def _check_step(app: Pgflow, workflow_id: str, step: str | None, param_hint: str) -> None:
    """A step named on the command line that the run's flow lacks is a usage error."""
    plan = _known_plan(app, workflow_id)
    if step is None or plan is None or plan.has_step(step):
        return
    names = ", ".join(s.name for s in plan.steps)
    raise click.BadParameter(
        f"flow {plan.flow!r} of run {workflow_id!r} has no step {step!r} (steps: {names})",
        param_hint=param_hint,
    )


def _check_signal_step(app: Pgflow, workflow_id: str, name: str) -> None:
    """A NAME that is no wait_for step of the run's flow is a usage error (exit 2)."""
    from pgflow.graph.ready import check_signal

    plan = _known_plan(app, workflow_id)
    if plan is None:
        return
    if plan.has_step(name) and plan.step(name).kind == "wait":
        return
    try:
        run = app.backend.get_run(workflow_id)
        check_signal(
            plan,
            workflow_id,
            name,
            flow=None if run is None else run.workflow,
            state=None if run is None else run.state,
        )
    except SignalError as exc:
        raise click.BadParameter(str(exc), param_hint="'NAME'") from None


def _print_run(app: Pgflow, workflow_id: str, as_json: bool, line: str) -> None:
    run = app.backend.get_run(workflow_id)
    if as_json and run is not None:
        click.echo(json.dumps(run_data(run, _steps(app.backend, workflow_id)), indent=2))
    else:
        click.echo(line)


def render_runs(found: list[RunRecord]) -> str:
    """The text of `pgflow runs`."""
    if not found:
        return "(no runs)"
    rows = [
        (
            run.workflow_id,
            run.workflow,
            run.state.value,
            _time(run.started_at),
            _time(run.finished_at) if run.finished_at else "-",
        )
        for run in found
    ]
    return render_table(("run", "flow", "state", "started", "finished"), rows)


def render_run(
    run: RunRecord, steps: Mapping[str, StepState], backend: Backend | None = None
) -> str:
    """The text of `pgflow run show`: the run, then its steps as a tree in topological
    order, each under the dependency it waits for last (others named as "after"); with
    `backend`, the runs of sub-flow steps nested under their step."""
    lines = [
        f"run {run.workflow_id} of {run.workflow}: {run.state.value}",
        f"started {_time(run.started_at)}"
        + (f", finished {_time(run.finished_at)}" if run.finished_at else ""),
    ]
    lines += _links(run)
    if run.state is RunState.COMPLETED:
        lines.append(f"result: {json.dumps(run.output)}")
    elif run.error:
        lines.append(f"error: {run.error.get('kind', 'error')}: {run.error.get('message', '')}")
    if steps:
        rows = _tree_rows(run, steps, backend, depth=0)
        lines += ["", render_table(("step", "state", "attempts", "tasks", "note"), rows)]
    return "\n".join(lines)


def _links(run: RunRecord) -> list[str]:
    lines = []
    if run.deadline_at is not None:
        lines.append(f"deadline {_time(run.deadline_at)}")
    if run.parent_id is not None:
        lines.append(f"sub-flow run of step {run.parent_step!r} of run {run.parent_id}")
    if run.restart_of is not None:
        lines.append(f"restart of run {run.restart_of}")
    return lines


def step_graph(run: RunRecord, names: list[str]) -> dict[str, tuple[str, ...]]:
    """Each step's dependencies, from the run's stored definition (a chain: the step
    before); steps the definition does not name have none."""
    definition = run.definition if isinstance(run.definition, dict) else {}
    stored = definition.get("steps")
    deps: dict[str, tuple[str, ...]] = {name: () for name in names}
    if not isinstance(stored, list):
        return deps
    if definition.get("kind") == "chain":
        for before, name in itertools.pairwise(stored):
            if isinstance(name, str) and name in deps:
                deps[name] = (str(before),)
        return deps
    for entry in stored:
        if isinstance(entry, dict) and entry.get("name") in deps:
            deps[str(entry["name"])] = tuple(
                str(dep) for dep in entry.get("depends_on") or () if dep in deps
            )
    return deps


def _tree_rows(
    run: RunRecord, steps: Mapping[str, StepState], backend: Backend | None, depth: int
) -> list[tuple[str, str, int, str, str]]:
    order = list(steps)  # topological order, as the store gives it
    deps = step_graph(run, order)
    parent = {name: max(deps[name], key=order.index) if deps[name] else None for name in order}
    children: dict[str | None, list[str]] = {}
    for name in order:
        children.setdefault(parent[name], []).append(name)
    rows: list[tuple[str, str, int, str, str]] = []

    def walk(name: str, lead: str, branch: str) -> None:
        step = steps[name]
        others = [dep for dep in deps[name] if dep != parent[name]]
        note = _note(step)
        if others:
            note = f"after {', '.join(others)}" + (f"; {note}" if note else "")
        tasks = (
            f"{step.tasks_done}/{step.tasks_total}"
            if step.tasks_total is not None and step.kind == "map"
            else "-"
        )
        rows.append((lead + branch + name, step.state.value, step.attempts, tasks, note))
        below = lead + ("" if not branch else "   " if branch == "└─ " else "│  ")
        if step.child_id is not None and backend is not None:
            rows.extend(_child_rows(step.child_id, backend, below, depth))
        kids = children.get(name, [])
        for index, kid in enumerate(kids):
            walk(kid, below, "└─ " if index == len(kids) - 1 else "├─ ")

    for root in children.get(None, []):
        walk(root, "", "")
    return rows


def _child_rows(
    child_id: str, backend: Backend, lead: str, depth: int
) -> list[tuple[str, str, int, str, str]]:
    """A sub-flow's child run as rows nested under its step (bounded in depth)."""
    child = backend.get_run(child_id)
    if child is None or depth + 1 > MAX_CHILD_DEPTH:
        return []
    rows: list[tuple[str, str, int, str, str]] = [
        (f"{lead}┆ run {child_id} of {child.workflow}", child.state.value, child.attempt, "-", "")
    ]
    for name, state, attempts, tasks, note in _tree_rows(
        child, _steps(backend, child_id), backend, depth + 1
    ):
        rows.append((f"{lead}┆   {name}", state, attempts, tasks, note))
    return rows


def _note(step: StepState) -> str:
    """What a step's kind and state say beyond its state: a wait waiting for its signal,
    a sleep sleeping, a sub-flow's child run, a skip reason, an error."""
    marks = []
    started = step.state.value == "started"
    if step.kind == "wait":
        marks.append("wait: waiting for a signal" if started else "wait")
    elif step.kind == "sleep":
        marks.append("sleep: sleeping" if started else "sleep")
    elif step.kind == "subflow":
        marks.append(f"sub-flow run {step.child_id}" if step.child_id else "sub-flow")
    reason = step.skip_reason or (step.error or {}).get("message", "") or ""
    if reason:
        marks.append(str(reason))
    return "; ".join(marks)


def run_data(
    run: RunRecord,
    steps: Mapping[str, StepState],
    backend: Backend | None = None,
    depth: int = 0,
) -> dict[str, Any]:
    """What `pgflow run show --json` prints (with `backend`, each sub-flow step's child
    run nested under `child`)."""
    data = _run_fields(run)
    deps = step_graph(run, list(steps))
    step_data: dict[str, Any] = {}
    for name, step in steps.items():
        entry: dict[str, Any] = {
            "state": step.state.value,
            "kind": step.kind,
            "depends_on": list(deps[name]),
            "attempts": step.attempts,
            "tasks_total": step.tasks_total,
            "tasks_done": step.tasks_done,
            "started_at": _iso(step.started_at),
            "completed_at": _iso(step.completed_at),
            "skip_reason": step.skip_reason,
            "error": step.error,
            "output": step.output,
            "child_id": step.child_id,
        }
        if step.child_id is not None and backend is not None and depth < MAX_CHILD_DEPTH:
            child = backend.get_run(step.child_id)
            if child is not None:
                entry["child"] = run_data(child, _steps(backend, step.child_id), backend, depth + 1)
        step_data[name] = entry
    data.update(input=run.input, output=run.output, error=run.error, steps=step_data)
    return data


def _run_fields(run: RunRecord) -> dict[str, Any]:
    return {
        "workflow_id": run.workflow_id,
        "flow": run.workflow,
        "state": run.state.value,
        "started_at": _iso(run.started_at),
        "finished_at": _iso(run.finished_at),
        "deadline_at": _iso(run.deadline_at),
        "parent_id": run.parent_id,
        "parent_step": run.parent_step,
        "restart_of": run.restart_of,
    }


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _time(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
