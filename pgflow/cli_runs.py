"""`pgflow runs` and `pgflow run show|cancel ID`: distributed runs from the command line.

Registered on the `pgflow` group by pgflow.cli; every command also prints `--json`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import click

from pgflow.backend import Backend, FlowStore
from pgflow.cli import (
    clean_errors,
    configure_logging,
    log_level_option,
    open_backend,
    render_table,
    resolve_url,
    url_option,
)
from pgflow.errors import PgflowError
from pgflow.records import RunRecord, RunState, StepState

__all__ = ["render_run", "render_runs", "run_data", "run_group", "runs_command"]

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


def _steps(backend: Backend, workflow_id: str) -> Mapping[str, StepState]:
    return backend.get_step_states(workflow_id) if isinstance(backend, FlowStore) else {}


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


@click.group("run", short_help="Show or cancel one run.")
def run_group() -> None:
    """One workflow run by id: `show` it with its steps, or `cancel` it."""


@run_group.command("show", short_help="Show a run and each step's state.")
@click.argument("workflow_id")
@url_option
@click.option("--json", "as_json", is_flag=True, help="Print the same data as JSON.")
@log_level_option("WARNING")
def show(workflow_id: str, url: str | None, as_json: bool, log_level: str) -> None:
    """Show run WORKFLOW_ID: its state, result or error, and every step's progress."""
    with _backend(url, log_level) as backend:
        run = backend.get_run(workflow_id)
        if run is None:
            raise click.ClickException(f"run {workflow_id!r} is not stored")
        steps = _steps(backend, workflow_id)
        if as_json:
            click.echo(json.dumps(run_data(run, steps), indent=2))
        else:
            click.echo(render_run(run, steps))


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


def render_run(run: RunRecord, steps: Mapping[str, StepState]) -> str:
    """The text of `pgflow run show`: the run, then its steps in topological order."""
    lines = [
        f"run {run.workflow_id} of {run.workflow}: {run.state.value}",
        f"started {_time(run.started_at)}"
        + (f", finished {_time(run.finished_at)}" if run.finished_at else ""),
    ]
    if run.state is RunState.COMPLETED:
        lines.append(f"result: {json.dumps(run.output)}")
    elif run.error:
        lines.append(f"error: {run.error.get('kind', 'error')}: {run.error.get('message', '')}")
    if steps:
        rows = [
            (
                name,
                step.state.value,
                step.attempts,
                "-" if step.tasks_total is None else f"{step.tasks_done}/{step.tasks_total}",
                step.skip_reason or (step.error or {}).get("message", "") or "",
            )
            for name, step in steps.items()
        ]
        lines += ["", render_table(("step", "state", "attempts", "tasks", "note"), rows)]
    return "\n".join(lines)


def run_data(run: RunRecord, steps: Mapping[str, StepState]) -> dict[str, Any]:
    """What `pgflow run show --json` prints."""
    data = _run_fields(run)
    data.update(
        input=run.input,
        output=run.output,
        error=run.error,
        steps={
            name: {
                "state": step.state.value,
                "attempts": step.attempts,
                "tasks_total": step.tasks_total,
                "tasks_done": step.tasks_done,
                "started_at": _iso(step.started_at),
                "completed_at": _iso(step.completed_at),
                "skip_reason": step.skip_reason,
                "error": step.error,
                "output": step.output,
            }
            for name, step in steps.items()
        },
    )
    return data


def _run_fields(run: RunRecord) -> dict[str, Any]:
    return {
        "workflow_id": run.workflow_id,
        "flow": run.workflow,
        "state": run.state.value,
        "started_at": _iso(run.started_at),
        "finished_at": _iso(run.finished_at),
    }


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _time(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
