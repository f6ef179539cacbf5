"""`pgflow dashboard`: serve the web dashboard (`pgflow.dashboard.create_app`) with uvicorn.

Read-only unless `--allow-actions`, which needs a token (`--token` or
PGFLOW_DASHBOARD_TOKEN) whatever the address: a dashboard that can cancel and delete is
never left open, not even on localhost, where any local process or web page could reach it.
`--host` defaults to 127.0.0.1; serving another address without a token logs a warning,
since every page shows job arguments.
"""

from __future__ import annotations

import ipaddress
import logging

import click

from pgflow.cli import (
    clean_errors,
    configure_logging,
    import_modules,
    log_level_option,
    resolve_url,
    url_option,
)

__all__ = ["dashboard_command"]

logger = logging.getLogger("pgflow.cli")

TOKEN_ENV = "PGFLOW_DASHBOARD_TOKEN"


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses, which no other machine can reach."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@click.command("dashboard", short_help="Serve the web dashboard (read-only by default).")
@url_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port", default=8000, show_default=True, type=click.IntRange(1, 65535), help="Port."
)
@click.option(
    "--allow-actions",
    is_flag=True,
    help="Offer retry, cancel, delete, pause, resume and run actions to signed-in callers "
    f"(needs --token or ${TOKEN_ENV}).",
)
@click.option(
    "--token",
    envvar=TOKEN_ENV,
    metavar="TOKEN",
    help=f"The secret callers sign in with (login form, or Authorization: Bearer); default "
    f"${TOKEN_ENV}. At least 8 characters.",
)
@click.option(
    "--protect-reads",
    is_flag=True,
    help="Require signing in to read pages too (needs --token).",
)
@click.option(
    "--import",
    "-i",
    "imports",
    multiple=True,
    metavar="MODULE",
    help="Module defining flows (repeatable), so runs can be resumed and restarted here.",
)
@log_level_option("INFO")
def dashboard_command(
    url: str | None,
    host: str,
    port: int,
    allow_actions: bool,
    token: str | None,
    protect_reads: bool,
    imports: tuple[str, ...],
    log_level: str,
) -> None:
    """Serve the web dashboard of the store at --url until interrupted."""
    configure_logging(log_level)
    token = token or None
    if allow_actions and token is None:
        raise click.UsageError(
            f"--allow-actions needs a token (--token or ${TOKEN_ENV}) that callers sign in with"
        )
    if protect_reads and token is None:
        raise click.UsageError(f"--protect-reads needs a token (--token or ${TOKEN_ENV})")
    url = resolve_url(url)
    import_modules(imports)
    with clean_errors(url):
        try:
            import uvicorn

            from pgflow.dashboard import create_app
        except ImportError as exc:
            raise click.ClickException(
                f"the dashboard needs its extra: pip install 'pgflow[dashboard]' ({exc})"
            ) from None
        if not is_loopback(host) and not protect_reads:
            logger.warning(
                "dashboard on %s without --protect-reads: anyone reaching it reads job data",
                host,
                extra={"host": host},
            )
        app = create_app(url, allow_actions=allow_actions, token=token, protect_reads=protect_reads)
        board = app.state.dashboard
        try:
            uvicorn.run(app, host=host, port=port, log_level=log_level.lower(), access_log=False)
        finally:
            board.backend.close()
