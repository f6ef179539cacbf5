"""`pgflow dashboard`: its refusals (checked before anything is served) and its options."""

from __future__ import annotations

from click.testing import CliRunner

from pgflow.cli import cli
from pgflow.cli_dashboard import is_loopback


def test_actions_without_a_token_are_refused() -> None:
    result = CliRunner().invoke(
        cli,
        ["dashboard", "--url", "memory://", "--allow-actions"],
        env={"PGFLOW_DASHBOARD_TOKEN": ""},
    )
    assert result.exit_code == 2
    assert "--allow-actions needs a token" in result.output


def test_protected_reads_without_a_token_are_refused() -> None:
    result = CliRunner().invoke(
        cli,
        ["dashboard", "--url", "memory://", "--protect-reads"],
        env={"PGFLOW_DASHBOARD_TOKEN": ""},
    )
    assert result.exit_code == 2
    assert "--protect-reads needs a token" in result.output


def test_help_lists_the_options() -> None:
    result = CliRunner().invoke(cli, ["dashboard", "--help"])
    assert result.exit_code == 0
    for option in ("--url", "--host", "--port", "--allow-actions", "--token", "--import"):
        assert option in result.output
    assert "127.0.0.1" in result.output and "8000" in result.output


def test_loopback_addresses() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.0.0.5")
    assert not is_loopback("example.com")
