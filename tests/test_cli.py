"""The `pgflow` command line: arguments, URL lookup, clean errors, and real migrate/status runs."""

from __future__ import annotations

import inspect
import json
import logging
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from click.testing import CliRunner

from pgflow import cli
from pgflow.app import Pgflow as REAL_PGFLOW
from pgflow.errors import BackendError, DefinitionError
from pgflow.records import InstanceInfo, Job, NewJob
from pgflow.worker import Worker

PGFLOW = [sys.executable, "-m", "pgflow"]


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture(autouse=True)
def no_url_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in ("PGFLOW_URL", "DATABASE_URL", "INSTANCE_ID", "PGFLOW_LOG_LEVEL"):
        monkeypatch.delenv(name, raising=False)
    yield
    # The CLI configures the "pgflow" logger; leave it as the other tests expect it.
    root = logging.getLogger("pgflow")
    for handler in list(root.handlers):
        if getattr(handler, "_pgflow_cli", False):
            root.removeHandler(handler)
    root.propagate = True
    root.setLevel(logging.NOTSET)


class FakeBackend:
    """Records which URL the CLI opened; answers status queries with nothing."""

    opened: ClassVar[list[str]] = []

    def __init__(self, url: str) -> None:
        self.url = url
        FakeBackend.opened.append(url)

    def migrate(self) -> None:
        pass

    def check_schema(self) -> None:
        pass

    def job_counts(self) -> list[Any]:
        return []

    def list_instances(self) -> list[Any]:
        return []

    def queue_controls(self) -> list[Any]:
        return []

    def close(self) -> None:
        pass


@pytest.fixture
def fake_backend(monkeypatch: pytest.MonkeyPatch) -> type[FakeBackend]:
    FakeBackend.opened = []
    monkeypatch.setattr(cli, "open_backend", FakeBackend)
    return FakeBackend


# -- argument handling ---------------------------------------------------------------------------


def test_parse_queues() -> None:
    assert cli.parse_queues("default=10,priority=5") == {"default": 10, "priority": 5}
    assert cli.parse_queues(" default = 3 ") == {"default": 3}
    assert cli.parse_queues("default=10, priority = 5 ,mail") == {
        "default": 10,
        "priority": 5,
        "mail": 10,
    }
    assert cli.parse_queues("mail") == {"mail": 10}


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ("", "not a list"),
        ("default=10,", "not a list"),
        ("default=zero", "positive integer"),
        ("default=0", "positive integer"),
        ("default=-1", "positive integer"),
        ("a=1,a=2", "given twice"),
        ("x';DROP=1", "invalid queue name"),
        ("a=1=2", "positive integer"),
        ("default = ", "positive integer"),
        ("de fault=1", "is not NAME=LIMIT"),
    ],
)
def test_bad_queues_spec_is_a_click_error_naming_the_flag(
    runner: CliRunner, fake_backend: type[FakeBackend], spec: str, problem: str
) -> None:
    result = runner.invoke(cli.cli, ["worker", "--url", "memory://", "--queues", spec])
    assert result.exit_code == 2
    assert "--queues" in result.output
    assert problem in result.output
    assert fake_backend.opened == []


@pytest.mark.parametrize("value", ["0", "-1", "soon"])
def test_bad_shutdown_timeout_is_a_click_error_naming_the_flag(
    runner: CliRunner, fake_backend: type[FakeBackend], value: str
) -> None:
    result = runner.invoke(cli.cli, ["worker", "--url", "memory://", "--shutdown-timeout", value])
    assert result.exit_code == 2
    assert "--shutdown-timeout" in result.output
    assert fake_backend.opened == []


def test_missing_url_names_the_flag_and_the_env_vars(runner: CliRunner) -> None:
    for command in (["migrate"], ["status"], ["worker"]):
        result = runner.invoke(cli.cli, command)
        assert result.exit_code == 2, command
        assert "--url" in result.output
        assert "PGFLOW_URL" in result.output and "DATABASE_URL" in result.output


def test_url_precedence(runner: CliRunner, fake_backend: type[FakeBackend]) -> None:
    env = {"PGFLOW_URL": "memory://pgflow-url", "DATABASE_URL": "memory://database-url"}
    assert runner.invoke(cli.cli, ["status", "--url", "memory://flag"], env=env).exit_code == 0
    assert runner.invoke(cli.cli, ["status"], env=env).exit_code == 0
    only_database = {"PGFLOW_URL": "", "DATABASE_URL": "memory://database-url"}
    assert runner.invoke(cli.cli, ["migrate"], env=only_database).exit_code == 0
    assert fake_backend.opened == ["memory://flag", "memory://pgflow-url", "memory://database-url"]


def test_stale_timeout_must_exceed_heartbeat_interval(runner: CliRunner) -> None:
    result = runner.invoke(
        cli.cli,
        ["worker", "--url", "memory://", "--heartbeat-interval", "5", "--stale-timeout", "2"],
    )
    assert result.exit_code == 2
    assert "--stale-timeout" in result.output and "--heartbeat-interval" in result.output


def test_bad_instance_id_and_unimportable_module(runner: CliRunner) -> None:
    result = runner.invoke(cli.cli, ["worker", "--url", "memory://", "--instance-id", "has space"])
    assert result.exit_code == 2 and "--instance-id" in result.output
    result = runner.invoke(
        cli.cli, ["worker", "--url", "memory://", "--import", "no_such_module_pgflow_xyz"]
    )
    assert result.exit_code == 2
    assert "--import" in result.output and "no_such_module_pgflow_xyz" in result.output


def test_errors_are_one_clean_line_without_password(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = "postgresql://app:s3cret-pw@db.example/app"

    def failing(opened_url: str) -> Any:
        raise BackendError(f"cannot connect to {opened_url}: connection refused\nmore detail")

    monkeypatch.setattr(cli, "open_backend", failing)
    result = runner.invoke(cli.cli, ["status", "--url", url])
    assert result.exit_code == 1
    assert "s3cret-pw" not in result.output
    assert result.output.strip() == (
        "Error: cannot connect to postgresql://app:***@db.example/app: connection refused"
    )

    def crashing(opened_url: str) -> Any:
        raise RuntimeError(f"driver exploded near {opened_url}")

    monkeypatch.setattr(cli, "open_backend", crashing)
    result = runner.invoke(cli.cli, ["migrate", "--url", url])
    assert result.exit_code == 1
    assert "Traceback" not in result.output and "s3cret-pw" not in result.output
    assert result.output.startswith("Error: RuntimeError: driver exploded")


def test_mask_password() -> None:
    assert cli.mask_password("x postgresql://u:pw@h/db", "postgresql://u:pw@h/db") == (
        "x postgresql://u:***@h/db"
    )
    assert cli.mask_password("nothing here", "sqlite:///a.db") == "nothing here"
    assert cli.mask_password("pw=abc", "weird://u:abc@") == "pw=***"


def test_render_status_tables() -> None:
    from datetime import UTC, datetime

    from pgflow.records import Instance, JobCount

    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    text = cli.render_status(
        "sqlite:///x.db",
        [
            JobCount("default", "completed", "a", 120),
            JobCount("default", "available", None, 3),
        ],
        [
            Instance("a", "online", when, when, "host1", 42, {"default": 10}),
            Instance("b", "offline", when, when, "host2", 43, {"default": 10}),
        ],
        show_all=False,
    )
    lines = text.splitlines()
    assert "Jobs (123 in all)" in lines
    assert any(line.split() == ["default", "available", "-", "3"] for line in lines)
    assert any(line.split() == ["default", "completed", "a", "120"] for line in lines)
    assert "Instances online (1), 1 offline not shown (--all)" in lines
    assert any(line.startswith("a ") and "2026-01-02 03:04:05 UTC" in line for line in lines)
    assert not any(line.startswith("b ") for line in lines)


def test_log_formatter_appends_structured_fields() -> None:
    record = logging.LogRecord("pgflow.worker", logging.INFO, __file__, 1, "job done", (), None)
    record.job_id = 7
    record.instance_id = "a"
    line = cli.FieldsFormatter().format(record)
    assert line.endswith("pgflow.worker: job done [instance_id=a job_id=7]")


def test_help_lists_the_commands(runner: CliRunner) -> None:
    result = runner.invoke(cli.cli, ["--help"])
    assert result.exit_code == 0
    for command in ("migrate", "worker", "status", "demo"):
        assert command in result.output


# -- real processes --------------------------------------------------------------------------------


def _pgflow(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> Any:
    full_env = {**os.environ, **(env or {})}
    for name in ("PGFLOW_URL", "DATABASE_URL"):
        if env is None or name not in env:
            full_env.pop(name, None)
    return subprocess.run(
        [*PGFLOW, *args], capture_output=True, text=True, timeout=60, env=full_env, cwd=cwd
    )


def _migrate_then_status(url: str) -> None:
    first = _pgflow("migrate", env={"PGFLOW_URL": url})
    assert first.returncode == 0, first.stderr
    assert "up to date" in first.stdout
    again = _pgflow("migrate", "--url", url)
    assert again.returncode == 0, again.stderr

    from pgflow.registry import backend_from_url

    backend = backend_from_url(url)
    try:
        backend.insert_jobs(
            [NewJob(worker="myapp.Work", args={"n": n}, queue="default") for n in range(3)]
        )
        backend.insert_jobs([NewJob(worker="myapp.Work", queue="priority")])
        (claimed,) = backend.claim_jobs("priority", "instance-a", 1)
        backend.complete_jobs([claimed.ref])
        backend.register_instance(
            InstanceInfo(
                "instance-a",
                hostname="h",
                pid=1,
                queues={"default": 10},
                incarnation="0123456789abcdef",
            )
        )
    finally:
        backend.close()

    shown = _pgflow("status", env={"DATABASE_URL": url})
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert "Jobs (4 in all)" in lines
    assert any(line.split() == ["default", "available", "-", "3"] for line in lines)
    assert any(line.split() == ["priority", "completed", "instance-a", "1"] for line in lines)
    assert "Instances online (1)" in lines
    assert any(
        line.startswith("instance-a ") and " online " in line and " 01234567 " in line
        for line in lines
    )

    as_json = _pgflow("status", "--json", "--url", url)
    assert as_json.returncode == 0, as_json.stderr
    data = json.loads(as_json.stdout)
    assert {"queue": "priority", "state": "completed", "instance": "instance-a", "count": 1} in (
        data["jobs"]
    )
    assert [item["instance_id"] for item in data["instances"]] == ["instance-a"]
    assert data["instances"][0]["incarnation"] == "0123456789abcdef"


def test_migrate_and_status_on_sqlite(sqlite_url: str) -> None:
    _migrate_then_status(sqlite_url)


@pytest.mark.postgres
def test_migrate_and_status_on_postgres(postgres_url: str) -> None:
    _migrate_then_status(postgres_url)


def test_status_before_migrate_says_what_to_do(tmp_path: Path) -> None:
    result = _pgflow("status", "--url", f"sqlite:///{tmp_path}/never-migrated.db")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("Error: ")
    assert "migrate" in result.stderr


def test_unreachable_postgres_is_one_line_without_password() -> None:
    url = "postgresql://someone:t0p-secret@127.0.0.1:1/nowhere"
    result = _pgflow("status", "--url", url)
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "t0p-secret" not in result.stderr
    assert "Traceback" not in result.stderr


WORKER_MODULE = """
import pgflow


class Touch(pgflow.Worker, queue="default"):
    def perform(self, job):
        return job.args["n"] * 2
"""


def test_worker_command_runs_jobs_then_stops_on_sigterm(tmp_path: Path, sqlite_url: str) -> None:
    """A real `pgflow worker` process: imports the user's module from the current directory,
    serves the queue under its instance id, and goes offline cleanly on SIGTERM."""
    import signal
    import time

    from pgflow.registry import backend_from_url

    (tmp_path / "cli_demo_workers.py").write_text(WORKER_MODULE)
    assert _pgflow("migrate", "--url", sqlite_url).returncode == 0
    backend = backend_from_url(sqlite_url)
    env = {k: v for k, v in os.environ.items() if k not in ("PGFLOW_URL", "DATABASE_URL")}
    proc = subprocess.Popen(
        [*PGFLOW, "worker", "--url", sqlite_url, "--queues", "default=2",
         "--import", "cli_demo_workers", "--instance-id", "cli-w1", "--poll-interval", "0.05",
         "--shutdown-timeout", "10"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        backend.insert_jobs(
            [NewJob(worker="cli_demo_workers.Touch", args={"n": n}) for n in range(5)]
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            states = {job.state.value for job in backend.list_jobs(limit=10)}
            if states == {"completed"} or proc.poll() is not None:
                break
            time.sleep(0.05)
        jobs = backend.list_jobs(limit=10)
        assert {job.state.value for job in jobs} == {"completed"}, jobs
        assert {job.reserved_by for job in jobs} == {"cli-w1"}
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
        assert proc.returncode == 0, stderr
        assert "Traceback" not in stderr
        (instance,) = backend.list_instances()
        assert (instance.instance_id, instance.status) == ("cli-w1", "offline")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
        backend.close()


# -- worker options: cron file, pruning, staging, rescue ----------------------------------------


class CliCronReport(Worker):
    """A worker registered in this process, named in the cron files below."""

    def perform(self, job: Job) -> Any:
        return None


REPORT = CliCronReport.options.name


class RecordingPgflow:
    """Stands in for pgflow.app.Pgflow: records the options `pgflow worker` passes."""

    created: ClassVar[list[dict[str, Any]]] = []

    def __init__(self, url: str, **options: Any) -> None:
        RecordingPgflow.created.append({"url": url, **options})

    def migrate(self) -> None:
        pass

    def run(self) -> None:
        pass


@pytest.fixture
def recording_app(monkeypatch: pytest.MonkeyPatch) -> type[RecordingPgflow]:
    import pgflow.app

    RecordingPgflow.created = []
    monkeypatch.setattr(pgflow.app, "Pgflow", RecordingPgflow)
    return RecordingPgflow


def test_cron_file_format(tmp_path: Path) -> None:
    from pgflow.cron_file import load_cron_file

    path = tmp_path / "jobs.cron"
    path.write_text(
        "# minute hour day month weekday  worker  args\n"
        "\n"
        f'*/5 * * * *   {REPORT}   {{"kind": "daily", "n": [1, 2]}}\n'
        f"   0 3 * * 1-5 {REPORT}\n"
        "  # an indented comment\n"
    )
    assert load_cron_file(path) == [
        ("*/5 * * * *", CliCronReport, {"kind": "daily", "n": [1, 2]}),
        ("0 3 * * 1-5", CliCronReport, {}),
    ]


def test_every_bad_cron_line_is_named_with_file_and_line(tmp_path: Path) -> None:
    from pgflow.cron_file import load_cron_file

    path = tmp_path / "bad.cron"
    path.write_text(
        "# header\n"
        f"* * * * * {REPORT}\n"
        f"61 * * * * {REPORT}\n"
        "* * * * * no_such.Worker\n"
        f"* * * * * {REPORT} [1, 2]\n"
        f"* * * * * {REPORT} {{not json\n"
        "* * *\n"
    )
    with pytest.raises(DefinitionError) as caught:
        load_cron_file(path)
    lines = str(caught.value).splitlines()
    assert [line.split(": ", 1)[0] for line in lines] == [f"{path}:{n}" for n in (3, 4, 5, 6, 7)]
    assert "invalid cron expression '61 * * * *'" in lines[0]
    assert "unknown worker 'no_such.Worker'" in lines[1] and "--import" in lines[1]
    assert "must be a JSON object" in lines[2]
    assert "not valid JSON" in lines[3]
    assert "five cron fields" in lines[4]


def test_a_cron_file_never_imports_the_module_it_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only registered workers: naming an importable module's class does not import it."""
    from pgflow.cron_file import load_cron_file

    marker = tmp_path / "imported"
    (tmp_path / "cron_file_victim.py").write_text(
        f"open({str(marker)!r}, 'w').close()\n"
        "import pgflow\n"
        "class Job(pgflow.Worker):\n"
        "    def perform(self, job): pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    path = tmp_path / "victim.cron"
    path.write_text("* * * * * cron_file_victim.Job\n")
    with pytest.raises(DefinitionError, match=r"victim\.cron:1: unknown worker"):
        load_cron_file(path)
    assert not marker.exists()
    assert "cron_file_victim" not in sys.modules


def test_worker_passes_cron_and_leader_options_to_the_app(
    runner: CliRunner, recording_app: type[RecordingPgflow], tmp_path: Path
) -> None:
    cron_file = tmp_path / "app.cron"
    cron_file.write_text(f'0 * * * * {REPORT} {{"kind": "hourly"}}\n')
    result = runner.invoke(
        cli.cli,
        ["worker", "--url", "memory://", "--cron-file", str(cron_file), "--prune-after", "none",
         "--prune-interval", "5", "--stage-interval", "0.2", "--rescue-interval", "2"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    [options] = recording_app.created
    assert options["cron"] == [("0 * * * *", CliCronReport, {"kind": "hourly"})]
    assert (options["prune_after"], options["prune_interval"]) == (None, 5.0)
    assert (options["stage_interval"], options["rescue_interval"]) == (0.2, 2.0)

    assert (
        runner.invoke(cli.cli, ["worker", "--url", "memory://", "--prune-after", "90"]).exit_code
        == 0
    )
    assert recording_app.created[1]["prune_after"] == 90.0


def test_worker_defaults_are_the_apps(
    runner: CliRunner, recording_app: type[RecordingPgflow]
) -> None:
    """Options left out behave as Pgflow's own defaults (no second set of numbers to drift)."""
    result = runner.invoke(cli.cli, ["worker", "--url", "memory://"])
    assert result.exit_code == 0, result.output
    [options] = recording_app.created
    defaults = inspect.signature(REAL_PGFLOW).parameters
    for name in ("heartbeat_interval", "stale_timeout", "shutdown_timeout", "prune_after",
                 "prune_interval", "stage_interval"):  # fmt: skip
        assert options[name] == defaults[name].default, name
    assert "rescue_interval" not in options and "poll_interval" not in options
    assert options["cron"] == []


@pytest.mark.parametrize(
    ("args", "flag", "problem"),
    [
        (["--prune-after", "0"], "--prune-after", "nor 'none'"),
        (["--prune-after", "soon"], "--prune-after", "nor 'none'"),
        (["--prune-after", "inf"], "--prune-after", "nor 'none'"),
        (["--prune-interval", "0"], "--prune-interval", "x>0"),
        (["--stage-interval", "-1"], "--stage-interval", "x>0"),
        (["--rescue-interval", "never"], "--rescue-interval", "not a valid float"),
        (["--cron-file", "/no/such/file.cron"], "--cron-file", "does not exist"),
    ],
)
def test_bad_worker_options_name_the_flag(
    runner: CliRunner, recording_app: type[RecordingPgflow], args: list[str], flag: str,
    problem: str,
) -> None:  # fmt: skip
    result = runner.invoke(cli.cli, ["worker", "--url", "memory://", *args])
    assert result.exit_code == 2
    assert flag in result.output and problem in result.output, result.output
    assert recording_app.created == []


def test_a_bad_cron_file_stops_the_worker_before_it_starts(
    runner: CliRunner, recording_app: type[RecordingPgflow], tmp_path: Path
) -> None:
    cron_file = tmp_path / "typo.cron"
    cron_file.write_text(f"# nightly\n0 3 * * * {REPORT}s\n")
    result = runner.invoke(cli.cli, ["worker", "--url", "memory://", "--cron-file", str(cron_file)])
    assert result.exit_code == 2
    assert "--cron-file" in result.output
    assert f"typo.cron:2: unknown worker '{REPORT}s'" in result.output
    assert recording_app.created == []


CRON_WORKER_MODULE = """
import pgflow


class Tick(pgflow.Worker, queue="default"):
    def perform(self, job):
        return None
"""


def test_worker_command_runs_the_cron_file(tmp_path: Path, sqlite_url: str) -> None:
    """A real `pgflow worker` resolves the file's names after `--import` and enqueues the
    current minute's slot with the file's args."""
    import time

    from pgflow.registry import backend_from_url

    (tmp_path / "cli_cron_workers.py").write_text(CRON_WORKER_MODULE)
    (tmp_path / "every-minute.cron").write_text(
        '# every minute\n* * * * * cli_cron_workers.Tick {"from": "file"}\n'
    )
    assert _pgflow("migrate", "--url", sqlite_url).returncode == 0
    backend = backend_from_url(sqlite_url)
    env = {k: v for k, v in os.environ.items() if k not in ("PGFLOW_URL", "DATABASE_URL")}
    proc = subprocess.Popen(
        [*PGFLOW, "worker", "--url", sqlite_url, "--import", "cli_cron_workers",
         "--cron-file", "every-minute.cron", "--stage-interval", "0.05", "--prune-after", "none",
         "--poll-interval", "0.05", "--instance-id", "cli-cron"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        jobs: list[Any] = []
        while time.monotonic() < deadline and proc.poll() is None:
            jobs = backend.list_jobs(limit=10)
            if jobs and all(job.state.value == "completed" for job in jobs):
                break
            time.sleep(0.05)
        assert jobs, proc.stderr.read() if proc.poll() is not None and proc.stderr else "no job"
        assert {job.worker for job in jobs} == {"cli_cron_workers.Tick"}
        assert {job.state.value for job in jobs} == {"completed"}
        assert all(job.args == {"from": "file"} and "cron_slot" in job.meta for job in jobs)
        proc.send_signal(__import__("signal").SIGTERM)
        _, stderr = proc.communicate(timeout=30)
        assert proc.returncode == 0, stderr
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
        backend.close()


# -- the README's command-line examples match the CLI ---------------------------------------------

DOCS = Path(__file__).resolve().parent.parent / "docs"
# The README's command-line guide lives in docs/: the status example in distributed.md.
README = "\n".join(page.read_text(encoding="utf-8") for page in sorted(DOCS.glob("*.md")))


def _readme_block_after(marker: str) -> str:
    """The first fenced block that follows `marker` in the docs pages."""
    after = README.split(marker, 1)[1]
    return after.split("```", 2)[1].split("\n", 1)[1]


def test_readme_status_example_is_what_status_prints() -> None:
    from datetime import UTC, datetime

    from pgflow.app import QueueFlow
    from pgflow.queue_config import Queue
    from pgflow.records import Instance, JobCount, QueueControl, QueueStats

    when = datetime(2026, 11, 26, 7, 18, 39, tzinfo=UTC)
    default = QueueFlow(
        "default",
        QueueStats("default", executing=0, available=0, control=QueueControl("default")),
        options=((Queue(limit=10), 1),),
    )
    printed = cli.render_status(
        "postgresql://postgres@127.0.0.1/app",
        [JobCount("default", "completed", "a", 20), JobCount("default", "scheduled", None, 1)],
        [
            Instance(
                "a", "online", when, when, "vm", 18585, {"default": 10},
                incarnation="5f0c2a9e41d7b3c8", abandoned=0,
            )
        ],
        show_all=False,
        queues=[default],
    )  # fmt: skip
    assert _readme_block_after("`pgflow status` prints the jobs") == printed + "\n"


class ReadmeReport(Worker, name="myapp.workers.Report"):
    def perform(self, job: Job) -> Any:
        return None


class ReadmeCleanup(Worker, name="myapp.workers.Cleanup"):
    def perform(self, job: Job) -> Any:
        return None


def test_readme_cron_file_example_parses() -> None:
    from pgflow.cron_file import parse_cron_lines

    text = _readme_block_after("A cron file holds five cron fields")
    assert parse_cron_lines(text, source="README.md") == [
        ("*/5 * * * *", ReadmeReport, {"kind": "daily"}),
        ("0 3 * * 1-5", ReadmeCleanup, {}),
    ]


def test_readme_lists_every_worker_option() -> None:
    section = (DOCS / "cli.md").read_text(encoding="utf-8")
    for param in cli.worker.params:
        for flag in param.opts:
            if flag.startswith("--") and flag != "--help":
                assert re.search(rf"(?<![\w-]){flag}(?![\w-])", section), flag


# --- pgflow graph MODULE:FLOW ---------------------------------------------------------------

GRAPH_MODULE = """
import pgflow

flow = pgflow.Flow("cli_graph")


@flow.step
def fetch(x):
    return x


@flow.map(over="fetch")
def each(item):
    return item


@flow.step(depends_on=["each"])
def total(each):
    return sum(each)


broken = pgflow.Flow("cli_broken")
broken.add_step("b", lambda a: a, depends_on=["a"])

not_a_flow = 42
"""


@pytest.fixture
def graph_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A module defining flows, importable from the current directory as `pgflow graph`
    expects; a unique name per test, so no test sees another's import."""
    name = f"cli_graph_{uuid.uuid4().hex}"
    (tmp_path / f"{name}.py").write_text(GRAPH_MODULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield name
    sys.modules.pop(name, None)


def test_graph_prints_the_flow_as_mermaid(runner: CliRunner, graph_module: str) -> None:
    result = runner.invoke(cli.cli, ["graph", f"{graph_module}:flow"])
    assert result.exit_code == 0, result.output
    assert result.output == (
        "flowchart TD\n"
        '    s0_fetch["fetch"]\n'
        '    s1_each[/"each (map over fetch)"/]\n'
        '    s2_total["total"]\n'
        "    s0_fetch --> s1_each\n"
        "    s1_each --> s2_total\n"
    )
    assert result.output == sys.modules[graph_module].flow.to_mermaid()


@pytest.mark.parametrize(
    ("attribute", "problem"),
    [
        ("missing", "has no attribute 'missing'"),
        ("not_a_flow", "is a int, not a pgflow.Flow"),
    ],
)
def test_graph_names_the_target_when_it_is_not_a_flow(
    runner: CliRunner, graph_module: str, attribute: str, problem: str
) -> None:
    target = f"{graph_module}:{attribute}"
    result = runner.invoke(cli.cli, ["graph", target])
    assert result.exit_code == 2
    assert f"'{target}'" in result.output and problem in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("target", ["no_such_module_for_pgflow_graph:flow", "no_colon", ":flow"])
def test_graph_names_a_missing_module_or_a_malformed_target(
    runner: CliRunner, graph_module: str, target: str
) -> None:
    result = runner.invoke(cli.cli, ["graph", target])
    assert result.exit_code == 2
    assert f"'{target}'" in result.output
    assert "Traceback" not in result.output


def test_graph_of_a_broken_flow_names_target_flow_and_step(
    runner: CliRunner, graph_module: str
) -> None:
    result = runner.invoke(cli.cli, ["graph", f"{graph_module}:broken"])
    assert result.exit_code == 1
    assert result.output.startswith(f"Error: {graph_module}:broken: workflow 'cli_broken' step 'b'")
    assert "depends on unknown step 'a'" in result.output


def test_graph_command_in_a_real_process(tmp_path: Path) -> None:
    (tmp_path / "real_graph_flows.py").write_text(GRAPH_MODULE)
    env = {k: v for k, v in os.environ.items() if k not in ("PGFLOW_URL", "DATABASE_URL")}
    done = subprocess.run(
        [*PGFLOW, "graph", "real_graph_flows:flow"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("flowchart TD\n") and "s1_each --> s2_total" in done.stdout
    missing = subprocess.run(
        [*PGFLOW, "graph", "real_graph_flows:nothing"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert missing.returncode == 2
    assert "'real_graph_flows:nothing'" in missing.stderr


# -- flow control (issue 12) ----------------------------------------------------------------------


def test_worker_passes_per_queue_options_to_the_app(
    runner: CliRunner, recording_app: type[RecordingPgflow]
) -> None:
    from pgflow.queue_config import Queue

    spec = "default=10,llm=20:global=8:rate=60/60s:partition=tenant_id:per_partition=2:prate=10/1s"
    result = runner.invoke(cli.cli, ["worker", "--url", "memory://", "--queues", spec])
    assert result.exit_code == 0, result.output
    (created,) = recording_app.created
    assert created["queues"] == {
        "default": 10,
        "llm": Queue(
            limit=20,
            global_limit=8,
            rate_limit=(60, 60.0),
            partition_by="tenant_id",
            partition_limit=2,
            partition_rate_limit=(10, 1.0),
        ),
    }
    REAL_PGFLOW("memory://", queues=created["queues"]).close()  # what the real app accepts


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ("llm=20:prate=10", "queue 'llm': prate='10' is not ALLOWED/PERIOD"),
        ("llm=20:partition=", "queue 'llm': 'partition=' is not one of"),
        ("llm=20:partition=a b", "is not NAME=LIMIT"),
        ("llm=20:rate=0/1s", "queue 'llm': rate_limit's allowed count must be an integer >= 1"),
    ],
)
def test_bad_queue_options_exit_2_naming_queue_and_part(
    runner: CliRunner, recording_app: type[RecordingPgflow], spec: str, problem: str
) -> None:
    result = runner.invoke(cli.cli, ["worker", "--url", "memory://", "--queues", spec])
    assert result.exit_code == 2
    assert "--queues" in result.output and problem in result.output
    assert recording_app.created == []


def test_queue_commands_are_listed(runner: CliRunner) -> None:
    shown = runner.invoke(cli.cli, ["queue", "--help"])
    assert shown.exit_code == 0
    assert "pause" in shown.output and "resume" in shown.output
