"""The `pgflow` command line: migrate the schema, run a worker instance, show the queue's state.

Every command finds its database in `--url`, else `PGFLOW_URL`, else `DATABASE_URL`. Errors end
the command with one clean line on stderr and exit code 1: no traceback (unless
`--log-level DEBUG`), never a password. Logging is configured here, on stderr; the library
itself only emits records.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

import click

from pgflow.errors import DefinitionError, PgflowError
from pgflow.identifiers import validate_instance_id, validate_queue
from pgflow.queue_config import Queue, parse_queue_spec, published, read_published

if TYPE_CHECKING:
    from pgflow.app import QueueFlow
    from pgflow.backend import Backend
    from pgflow.cron_file import CronFileEntry
    from pgflow.records import Instance, JobCount

URL_ENV_VARS = ("PGFLOW_URL", "DATABASE_URL")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
DEFAULT_QUEUES = "default=10"
DEFAULT_PRUNE_AFTER = 7 * 24 * 3600  # a week, as Pgflow(prune_after=...)
DEFAULT_UNSERVED_GRACE = 3600  # an hour, as Pgflow(unserved_grace=...)

# The `extra=` fields pgflow puts on its log records, shown as key=value after the message.
LOG_FIELDS = (
    "instance_id",
    "queue",
    "job_id",
    "worker",
    "workflow",
    "workflow_id",
    "step",
    "attempt",
    "max_attempts",
    "child_id",
    "restart_of",
)

# Spaces around "=" are allowed ("default = 3"), as around the commas.
_QUEUE_ITEM = re.compile(r"^(?P<name>[^=\s,]+)\s*(?:=\s*(?P<limit>\S*))?$")

F = TypeVar("F", bound=Callable[..., Any])
logger = logging.getLogger("pgflow.cli")


# --- argument handling ----------------------------------------------------------------------


def parse_queues(spec: str) -> dict[str, int | Queue]:
    """Parse "default=10,priority=5" into {"default": 10, "priority": 5}, and a queue with
    flow options, "llm=20:global=8:rate=60/60s:partition=tenant_id:per_partition=2:
    prate=10/1s", into a `pgflow.Queue` (see `parse_queue_spec`; queues separated by commas).

    A bare name ("default") gets a limit of 10. Raises ValueError with a message meant for
    the user, naming the queue and the part at fault, when the spec is malformed, a limit is
    not a positive integer, an option is unknown or invalid, or a queue repeats.
    """
    queues: dict[str, int | Queue] = {}
    items = [item.strip() for item in spec.split(",")]
    if not spec.strip() or any(not item for item in items):
        raise ValueError(f"{spec!r} is not a list of NAME=LIMIT separated by commas")
    for item in items:
        match = _QUEUE_ITEM.match(item)
        if match is None:
            raise ValueError(f"{item!r} is not NAME=LIMIT (for example default=10)")
        name, limit_text = match.group("name"), match.group("limit")
        try:
            validate_queue(name)
        except DefinitionError as exc:
            raise ValueError(str(exc)) from None
        if name in queues:
            raise ValueError(f"queue {name!r} is given twice")
        if limit_text is None:
            queues[name] = 10
            continue
        head, colon, _options = limit_text.partition(":")
        if (head or not colon) and not (head.isdigit() and int(head) >= 1):
            raise ValueError(
                f"the limit of queue {name!r} must be a positive integer, got {head!r}"
            )
        if not colon:
            queues[name] = int(head)
            continue
        queues[name] = parse_queue_spec(name, limit_text)
    return queues


def _queues_callback(
    _ctx: click.Context, param: click.Parameter, value: str
) -> dict[str, int | Queue]:
    try:
        return parse_queues(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param=param) from None


def _instance_callback(
    _ctx: click.Context, param: click.Parameter, value: str | None
) -> str | None:
    if not value:
        return None
    try:
        return validate_instance_id(value)
    except DefinitionError as exc:
        raise click.BadParameter(str(exc), param=param) from None


def resolve_url(url: str | None, environ: dict[str, str] | None = None) -> str:
    """The database URL: `--url`, else PGFLOW_URL, else DATABASE_URL (empty values skipped)."""
    env = os.environ if environ is None else environ
    if url:
        return url
    for name in URL_ENV_VARS:
        value = env.get(name, "").strip()
        if value:
            return value
    raise click.UsageError(
        "no database URL: pass --url (for example --url sqlite:///pgflow.db) "
        "or set PGFLOW_URL or DATABASE_URL"
    )


def mask_password(text: str, url: str | None) -> str:
    """Replace the password of `url`, wherever it appears in `text`, by ***."""
    if not url:
        return text
    try:
        from sqlalchemy.engine import make_url

        password = make_url(url).password
    except Exception:  # an unparsable URL: fall back to the userinfo part, if any
        match = re.search(r"://[^/@:]*:([^/@]*)@", url)
        password = match.group(1) if match else None
    if password:
        text = text.replace(str(password), "***")
    return text


def url_option(func: F) -> F:
    """The `--url` option every command shares (resolved later by `resolve_url`)."""
    return click.option(
        "--url",
        metavar="URL",
        help="Database URL (sqlite:///file.db, postgresql://user@host/db, memory://). "
        "Default: $PGFLOW_URL, else $DATABASE_URL.",
    )(func)


def seconds_option(flag: str, default: float | None, help_text: str) -> Callable[[F], F]:
    """A `--flag SECONDS` option taking a number of seconds > 0."""
    return click.option(
        flag,
        type=click.FloatRange(min=0, min_open=True),
        metavar="SECONDS",
        default=default,
        show_default=default is not None,
        help=help_text,
    )


def parse_seconds_or_none(text: str) -> float | None:
    """A number of seconds > 0, or None for "none" (the duty is off): `--prune-after none`."""
    if text.strip().lower() == "none":
        return None
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds < float("inf"):
        raise ValueError(f"{text!r} is neither a number of seconds > 0 nor 'none'")
    return seconds


def _seconds_or_none_callback(
    _ctx: click.Context, param: click.Parameter, value: str
) -> float | None:
    try:
        return parse_seconds_or_none(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param=param) from None


def log_level_option(default: str) -> Callable[[F], F]:
    """`--log-level`, with a per-command default: INFO for a worker, WARNING otherwise."""

    def decorate(func: F) -> F:
        return click.option(
            "--log-level",
            type=click.Choice(LOG_LEVELS, case_sensitive=False),
            default=default,
            show_default=True,
            envvar="PGFLOW_LOG_LEVEL",
            help="Level of the log records written to stderr ($PGFLOW_LOG_LEVEL).",
        )(func)

    return decorate


# --- logging and errors ---------------------------------------------------------------------


class FieldsFormatter(logging.Formatter):
    """A one-line format that appends pgflow's structured `extra` fields as key=value."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = [
            f"{name}={getattr(record, name)}"
            for name in LOG_FIELDS
            if getattr(record, name, None) is not None
        ]
        if not fields:
            return line
        head, newline, rest = line.partition("\n")
        return f"{head} [{' '.join(fields)}]{newline}{rest}"


def configure_logging(level: str) -> None:
    """Send pgflow's log records (and only those) to stderr at `level`."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(FieldsFormatter())
    root = logging.getLogger("pgflow")
    for old in list(root.handlers):
        if getattr(old, "_pgflow_cli", False):
            root.removeHandler(old)
    handler._pgflow_cli = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level.upper())
    root.propagate = False


@contextmanager
def clean_errors(url: str | None) -> Iterator[None]:
    """Turn any error into one line on stderr and exit code 1; the traceback goes to DEBUG."""
    try:
        yield
    except (click.ClickException, click.Abort, click.exceptions.Exit, SystemExit):
        raise
    except KeyboardInterrupt:
        raise click.Abort() from None
    except Exception as exc:
        logger.debug("command failed", exc_info=True)
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        kind = "" if isinstance(exc, PgflowError) else f"{type(exc).__name__}: "
        line = mask_password(f"{kind}{message or type(exc).__name__}", url)
        click.echo(f"Error: {line}", err=True)
        raise SystemExit(1) from None


def open_backend(url: str) -> Backend:
    """Open the backend named by `url` (imports only the driver it needs)."""
    from pgflow.registry import backend_from_url

    return backend_from_url(url)


def import_modules(names: Sequence[str]) -> None:
    """Import the modules that define workers, from the current directory too (like `python -m`)."""
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as exc:
            raise click.BadParameter(
                f"cannot import {name!r}: {type(exc).__name__}: {exc}", param_hint="'--import'"
            ) from None


def load_cron(path: str | None) -> list[CronFileEntry]:
    """The entries of `--cron-file` (after `--import`: names are of registered workers)."""
    if path is None:
        return []
    from pgflow.cron_file import load_cron_file

    try:
        entries = load_cron_file(path)
    except DefinitionError as exc:
        raise click.BadParameter(str(exc), param_hint="'--cron-file'") from None
    logger.info("cron file %s: %d entries", path, len(entries), extra={"cron_file": path})
    return entries


# --- commands -------------------------------------------------------------------------------


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="pgflow", prog_name="pgflow")
def cli() -> None:
    """pgflow: durable workflows and background jobs on PostgreSQL, SQLite or memory."""


@cli.command(short_help="Create or upgrade pgflow's tables.")
@url_option
@log_level_option("WARNING")
def migrate(url: str | None, log_level: str) -> None:
    """Create or upgrade pgflow's tables (idempotent, safe to run from several processes)."""
    configure_logging(log_level)
    url = resolve_url(url)
    with clean_errors(url):
        backend = open_backend(url)
        try:
            backend.migrate()
        finally:
            backend.close()
        click.echo(f"pgflow schema is up to date on {backend.url}")


@cli.command(short_help="Run a worker instance serving the given queues.")
@url_option
@click.option(
    "--queues",
    "-q",
    default=DEFAULT_QUEUES,
    show_default=True,
    callback=_queues_callback,
    metavar="NAME=LIMIT[:OPTION=VALUE...],...",
    help="Queues this instance serves, each with its concurrency limit on this instance, "
    "then flow options: global=N (executing at once across all instances), rate=N/PERIOD "
    "(starts per sliding window, e.g. 60/60s), partition=ARGS_KEY, per_partition=N, "
    "prate=N/PERIOD. E.g. default=10,llm=20:global=8:rate=60/60s.",
)
@click.option(
    "--import",
    "-i",
    "imports",
    multiple=True,
    metavar="MODULE",
    help="Module defining workers to import first (repeatable), e.g. myapp.workers.",
)
@click.option(
    "--worker-module",
    "worker_modules",
    multiple=True,
    metavar="PREFIX",
    help="Module prefix whose workers may be imported when a job names them (repeatable), "
    "e.g. myapp. (other unregistered workers are snoozed, then discarded).",
)
@click.option(
    "--instance-id",
    metavar="ID",
    envvar="INSTANCE_ID",
    callback=_instance_callback,
    help="Name of this instance in pgflow_instances. Default: $INSTANCE_ID, else host+pid.",
)
@seconds_option("--heartbeat-interval", 5.0, "Seconds between heartbeats.")
@seconds_option(
    "--stale-timeout",
    300.0,
    "Seconds without heartbeat after which an instance's jobs are rescued.",
)
@seconds_option(
    "--poll-interval", None, "Seconds between polls for due jobs (default: the library's)."
)
@seconds_option(
    "--shutdown-timeout",
    30.0,
    "On SIGINT/SIGTERM, how long running jobs may take to finish before they are left to be "
    "retried.",
)
# Leader duties and cron, as the Pgflow(...) options of the same names.
@click.option(
    "--cron-file",
    type=click.Path(exists=True, dir_okay=False, readable=True),
    metavar="PATH",
    help="Cron entries, one a line: five cron fields, a registered worker's name, optional "
    "JSON args; blank lines and # comments allowed.",
)
@click.option(
    "--prune-after",
    callback=_seconds_or_none_callback,
    metavar="SECONDS|none",
    default=str(DEFAULT_PRUNE_AFTER),
    show_default=True,
    help="Seconds after which finished jobs are deleted, or 'none' to keep them.",
)
@seconds_option("--prune-interval", 60.0, "Seconds between prunes.")
@seconds_option("--stage-interval", 0.5, "Seconds between the leader's staging of due jobs.")
@seconds_option(
    "--rescue-interval",
    None,
    "Seconds between rescues of dead instances' jobs (default: stale timeout / 4, "
    "between 0.5 and 5).",
)
@click.option(
    "--unserved-grace",
    callback=_seconds_or_none_callback,
    metavar="SECONDS|none",
    default=str(DEFAULT_UNSERVED_GRACE),
    show_default=True,
    help="Seconds a flow run's definition may go unserved by every online instance before "
    "its runs are failed, or 'none' to let them wait forever.",
)
@seconds_option(
    "--unserved-interval", 60.0, "Seconds between the leader's checks for unserved flow runs."
)
@seconds_option(
    "--deadline-interval",
    1.0,
    "Seconds between the leader's checks for flow runs past their deadline.",
)
@click.option(
    "--migrate/--no-migrate",
    "run_migrations",
    default=False,
    show_default=True,
    help="Upgrade the schema before starting.",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(1, 65535),
    metavar="PORT",
    help="Serve this process's Prometheus metrics (job durations, enqueue-to-start, "
    'failures, rescues) at http://HOST:PORT/metrics; needs pip install "pgflow[metrics]".',
)
@click.option(
    "--metrics-host",
    default="127.0.0.1",
    show_default=True,
    metavar="ADDRESS",
    help="Address the metrics endpoint listens on (0.0.0.0 for every interface).",
)
@log_level_option("INFO")
def worker(
    url: str | None,
    queues: dict[str, int | Queue],
    imports: tuple[str, ...],
    worker_modules: tuple[str, ...],
    instance_id: str | None,
    heartbeat_interval: float,
    stale_timeout: float,
    poll_interval: float | None,
    shutdown_timeout: float,
    cron_file: str | None,
    prune_after: float | None,
    prune_interval: float,
    stage_interval: float,
    rescue_interval: float | None,
    unserved_grace: float | None,
    unserved_interval: float,
    deadline_interval: float,
    run_migrations: bool,
    metrics_port: int | None,
    metrics_host: str,
    log_level: str,
) -> None:
    """Serve the queues until SIGINT/SIGTERM, then finish running jobs and go offline."""
    configure_logging(log_level)
    if metrics_port is not None:
        _serve_metrics(metrics_port, metrics_host)
    if stale_timeout <= heartbeat_interval:
        raise click.BadParameter(
            f"must be longer than --heartbeat-interval ({heartbeat_interval:g}), or live "
            "instances would be presumed dead",
            param_hint="'--stale-timeout'",
        )
    url = resolve_url(url)
    import_modules(imports)
    cron = load_cron(cron_file)
    with clean_errors(url):
        from pgflow.app import Pgflow

        options: dict[str, Any] = {
            "queues": queues,
            "instance_id": instance_id or None,
            "heartbeat_interval": heartbeat_interval,
            "stale_timeout": stale_timeout,
            "shutdown_timeout": shutdown_timeout,
            "worker_modules": worker_modules,
        }
        if poll_interval is not None:
            options["poll_interval"] = poll_interval
        options.update(
            cron=cron,
            prune_after=prune_after,
            prune_interval=prune_interval,
            stage_interval=stage_interval,
            unserved_grace=unserved_grace,
            unserved_interval=unserved_interval,
            deadline_interval=deadline_interval,
        )
        if rescue_interval is not None:
            options["rescue_interval"] = rescue_interval
        app = Pgflow(url, **options)
        if run_migrations:
            app.migrate()
        app.run()


def _serve_metrics(port: int, host: str) -> None:
    """Start the worker's /metrics endpoint, or a usage error naming what is missing."""
    from pgflow.telemetry import serve_metrics

    try:
        serve_metrics(port, host)
    except ImportError as exc:
        raise click.UsageError(f"--metrics-port: {exc}") from exc
    except OSError as exc:
        raise click.BadParameter(
            f"cannot listen on {host}:{port} ({exc.strerror or exc})",
            param_hint="'--metrics-port'",
        ) from exc


@cli.command(short_help="Show jobs by queue, state and instance; instances online.")
@url_option
@click.option("--all", "show_all", is_flag=True, help="Also list offline instances.")
@click.option("--json", "as_json", is_flag=True, help="Print the same data as JSON.")
@log_level_option("WARNING")
def status(url: str | None, show_all: bool, as_json: bool, log_level: str) -> None:
    """Show jobs by queue, state and instance, and the instances that are online."""
    configure_logging(log_level)
    url = resolve_url(url)
    with clean_errors(url):
        backend = open_backend(url)
        try:
            backend.check_schema()
            counts = backend.job_counts()
            instances = backend.list_instances()
            from pgflow.app import queue_flows

            flows = queue_flows(backend, counts, instances)
        finally:
            backend.close()
        if as_json:
            data = status_data(backend.url, counts, instances, queues=flows)
            click.echo(json.dumps(data, indent=2))
        else:
            click.echo(
                render_status(backend.url, counts, instances, show_all=show_all, queues=flows)
            )


@cli.group("queue", short_help="Pause or resume a queue on every instance.")
def queue_group() -> None:
    """Flow control of one queue, cluster-wide: `pause` stops every instance's starts of
    it (running jobs finish, new jobs wait), `resume` lets them start again."""


def _queue_name_callback(_ctx: click.Context, param: click.Parameter, value: str) -> str:
    try:
        return validate_queue(value)
    except DefinitionError as exc:
        raise click.BadParameter(str(exc), param=param) from None


def _control_queue(name: str, url: str | None, as_json: bool, log_level: str, pause: bool) -> None:
    configure_logging(log_level)
    url = resolve_url(url)
    with clean_errors(url):
        backend = open_backend(url)
        try:
            backend.check_schema()
            if pause:
                backend.pause_queue(name)
            else:
                backend.resume_queue(name)
            from pgflow.app import queue_flows

            flows = queue_flows(backend, backend.job_counts(), backend.list_instances())
        finally:
            backend.close()
        flow = next(flow for flow in flows if flow.queue == name)
        if as_json:
            click.echo(json.dumps(queue_flow_data(flow), indent=2))
        elif pause:
            click.echo(
                f"queue {name!r} paused on every instance: running jobs finish, "
                f"{flow.stats.available} available job(s) wait (pgflow queue resume {name})"
            )
        else:
            held = "" if flow.state != "held" else " (still held by a RateLimited until "
            if held:
                held += f"{_time(flow.stats.control.hold_until)})"  # type: ignore[arg-type]
            click.echo(f"queue {name!r} resumed{held}: {flow.stats.available} available job(s)")


@queue_group.command("pause", short_help="Stop every instance's starts of a queue.")
@click.argument("name", callback=_queue_name_callback)
@url_option
@click.option("--json", "as_json", is_flag=True, help="Print the queue's state as JSON.")
@log_level_option("WARNING")
def pause_command(name: str, url: str | None, as_json: bool, log_level: str) -> None:
    """Pause queue NAME on every instance, including ones started later: running jobs
    finish, jobs inserted meanwhile wait until `pgflow queue resume NAME`."""
    _control_queue(name, url, as_json, log_level, pause=True)


@queue_group.command("resume", short_help="Let a paused queue start jobs again.")
@click.argument("name", callback=_queue_name_callback)
@url_option
@click.option("--json", "as_json", is_flag=True, help="Print the queue's state as JSON.")
@log_level_option("WARNING")
def resume_command(name: str, url: str | None, as_json: bool, log_level: str) -> None:
    """Resume queue NAME: every instance serving it starts its jobs again (woken at once
    where the database notifies, else at their next poll)."""
    _control_queue(name, url, as_json, log_level, pause=False)


@cli.command(short_help="Run the ProcessData demo workflow on a SQLite file.")
@click.option(
    "--db",
    "db_path",
    default="pgflow-demo.db",
    show_default=True,
    metavar="PATH",
    help="SQLite file the demo records its runs in (kept afterwards).",
)
def demo(db_path: str) -> None:
    """Run the ProcessData example workflow durably on an embedded SQLite file."""
    from pgflow.demo import run_demo

    with clean_errors(None):
        run_demo(db_path)


# --- rendering ------------------------------------------------------------------------------


@cli.command(short_help="Print a flow as a Mermaid flowchart.")
@click.argument("target", metavar="MODULE:FLOW")
def graph(target: str) -> None:
    """Print the flow TARGET (`package.module:attribute`) as a Mermaid flowchart, so a
    definition can be reviewed or pasted into docs without running it."""
    from pgflow.definition import Workflow
    from pgflow.graph.mermaid import to_mermaid

    flow = load_flow(target)
    try:
        text = to_mermaid(flow) if isinstance(flow, Workflow) else flow.to_mermaid()
    except DefinitionError as exc:
        click.echo(f"Error: {target}: {exc}", err=True)
        raise SystemExit(1) from None
    click.echo(text, nl=False)


def load_flow(target: str) -> Any:
    """The Flow or Workflow named by `module:attribute`; a usage error (exit code 2) naming
    the target when the module or attribute is missing or is not a flow."""
    from pgflow.definition import Flow, Workflow

    module_name, sep, attribute = target.partition(":")
    if not sep or not module_name or not attribute:
        raise click.BadParameter(
            f"{target!r} is not MODULE:FLOW (e.g. myapp.flows:flow)", param_hint="'MODULE:FLOW'"
        )
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise click.BadParameter(
            f"cannot import module {module_name!r} of {target!r}: {type(exc).__name__}: {exc}",
            param_hint="'MODULE:FLOW'",
        ) from None
    value: Any = module
    for part in attribute.split("."):
        if not hasattr(value, part):
            raise click.BadParameter(
                f"{target!r}: module {module_name!r} has no attribute {attribute!r}",
                param_hint="'MODULE:FLOW'",
            )
        value = getattr(value, part)
    if not isinstance(value, (Flow, Workflow)):
        raise click.BadParameter(
            f"{target!r} is a {type(value).__name__}, not a pgflow.Flow",
            param_hint="'MODULE:FLOW'",
        )
    return value


def render_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain left-aligned text table (numbers right-aligned)."""
    cells = [[str(value) for value in row] for row in rows]
    widths = [
        max([len(header), *(len(row[index]) for row in cells)])
        for index, header in enumerate(headers)
    ]
    numeric = [
        bool(rows) and all(isinstance(row[index], int) for row in rows)
        for index in range(len(headers))
    ]

    def line(values: Sequence[str]) -> str:
        parts = [
            value.rjust(width) if is_number else value.ljust(width)
            for value, width, is_number in zip(values, widths, numeric, strict=True)
        ]
        return "  ".join(parts).rstrip()

    out = [line(headers), line(["-" * width for width in widths])]
    out.extend(line(row) for row in cells)
    return "\n".join(out)


def render_status(
    url: str,
    counts: Sequence[JobCount],
    instances: Sequence[Instance],
    *,
    show_all: bool,
    queues: Sequence[QueueFlow] = (),
) -> str:
    """The text of `pgflow status`."""
    parts = [f"pgflow status of {url}", ""]
    job_rows = sorted(
        (
            (count.queue, count.state.value, count.reserved_by or "-", count.count)
            for count in counts
        ),
        key=lambda row: (row[0], row[1], row[2]),
    )
    total = sum(count.count for count in counts)
    parts.append(f"Jobs ({total} in all)")
    if job_rows:
        parts.append(render_table(("queue", "state", "instance", "jobs"), job_rows))
    else:
        parts.append("(no jobs)")
    parts.append("")
    if queues:
        parts.extend([*render_queue_flows(queues), ""])
    online = [item for item in instances if item.status == "online"]
    shown = list(instances) if show_all else online
    hidden = len(instances) - len(shown)
    title = "Instances" if show_all else "Instances online"
    parts.append(
        f"{title} ({len(shown)})" + (f", {hidden} offline not shown (--all)" if hidden else "")
    )
    if shown:
        rows = [
            (
                item.instance_id,
                item.status,
                _time(item.heartbeat_at),
                item.hostname or "-",
                item.pid or "-",
                item.incarnation[:8] or "-",
                ",".join(f"{name}={_published_text(value)}" for name, value in item.queues.items())
                or "-",
                item.abandoned,
            )
            for item in shown
        ]
        parts.append(
            render_table(
                (
                    "instance",
                    "status",
                    "last heartbeat",
                    "host",
                    "pid",
                    "incarnation",
                    "queues",
                    "abandoned",
                ),
                rows,
            )
        )
    else:
        parts.append("(none)")
    return "\n".join(parts)


def _published_text(value: object) -> str:
    """An instance's published queue options in the CLI's form (see queue_config.published)."""
    options = read_published(value)
    return "?" if options is None else options.describe()


def _held_text(until: datetime | None) -> str:
    return "-" if until is None else _time(until)


def render_queue_flows(flows: Sequence[QueueFlow]) -> list[str]:
    """The "Queues" part of `pgflow status`: each queue's limits (as the online instances
    serving it publish them), its jobs, rate window and state; then the partitions with the
    most available jobs of each partitioned queue."""
    rows = []
    partition_rows: list[tuple[object, ...]] = []
    for flow in flows:
        stats, shape = flow.stats, flow.shape
        limits = " | ".join(
            options.describe() + (f" (x{count})" if len(flow.options) > 1 else "")
            for options, count in flow.options
        )
        rate = "-"
        if shape is not None and shape.rate_limit is not None and stats.rate_used is not None:
            allowed, period = shape.rate_limit
            rate = f"{stats.rate_used}/{allowed} per {period:g}s"
        state = flow.state
        if state == "held":
            state = f"held until {_time(stats.control.hold_until)}"  # type: ignore[arg-type]
        held = len(stats.control.partition_holds)
        if held:
            state += f", {held} partition{'s' if held > 1 else ''} held"
        rows.append((flow.queue, limits or "-", stats.executing, stats.available, rate, state))
        holds = stats.control.partition_holds
        for partition, available, executing in stats.partitions:
            partition_rows.append(
                (
                    flow.queue,
                    json.dumps(partition),
                    available,
                    executing,
                    _held_text(holds.get(partition)),
                )
            )
    lines = [f"Queues ({len(flows)})"]
    lines.append(
        render_table(("queue", "limits", "executing", "available", "rate window", "state"), rows)
    )
    if partition_rows:
        lines.extend(["", "Top partitions by backlog"])
        lines.append(
            render_table(
                ("queue", "partition", "available", "executing", "held until"), partition_rows
            )
        )
    return lines


def queue_flow_data(flow: QueueFlow) -> dict[str, Any]:
    """One queue of `pgflow status --json`."""
    stats, control = flow.stats, flow.stats.control
    return {
        "queue": flow.queue,
        "limits": [
            {"options": options.describe(), "published": published(options), "instances": count}
            for options, count in flow.options
        ],
        "executing": stats.executing,
        "available": stats.available,
        "rate_used": stats.rate_used,
        "state": flow.state,
        "paused": control.paused,
        "paused_at": None if control.paused_at is None else control.paused_at.isoformat(),
        "hold_until": None if control.hold_until is None else control.hold_until.isoformat(),
        "partition_holds": {
            partition: until.isoformat() for partition, until in control.partition_holds.items()
        },
        "partitions": [
            {"partition": partition, "available": available, "executing": executing}
            for partition, available, executing in stats.partitions
        ],
    }


def status_data(
    url: str,
    counts: Sequence[JobCount],
    instances: Sequence[Instance],
    *,
    queues: Sequence[QueueFlow] = (),
) -> dict[str, Any]:
    """What `pgflow status --json` prints: every count, every instance (offline included)
    and each queue's flow."""
    return {
        "url": url,
        "queues": [queue_flow_data(flow) for flow in queues],
        "jobs": [
            {
                "queue": count.queue,
                "state": count.state.value,
                "instance": count.reserved_by,
                "count": count.count,
            }
            for count in counts
        ],
        "instances": [
            {
                "instance_id": item.instance_id,
                "status": item.status,
                "heartbeat_at": item.heartbeat_at.isoformat(),
                "started_at": item.started_at.isoformat(),
                "hostname": item.hostname,
                "pid": item.pid,
                "incarnation": item.incarnation,
                "queues": item.queues,
                "abandoned": item.abandoned,
            }
            for item in instances
        ],
    }


def _time(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _register_run_commands() -> None:
    """`pgflow runs` and `pgflow run ...` live in pgflow.cli_runs (which imports this
    module's helpers, so it is imported once they exist)."""
    from pgflow.cli_runs import run_group, runs_command

    cli.add_command(runs_command)
    cli.add_command(run_group)
    cli.add_command(importlib.import_module("pgflow.cli_dashboard").dashboard_command)


_register_run_commands()


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point."""
    cli.main(args=list(argv) if argv is not None else None, prog_name="pgflow")
