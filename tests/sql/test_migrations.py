"""Migrations: fresh, idempotent, concurrent, in their own version table, equal to metadata."""

from __future__ import annotations

from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, create_engine, inspect, text

from pgflow import migrations
from pgflow.errors import BackendError
from pgflow.schema import metadata
from pgflow_backends.sql.urls import parse
from tests.sql.helpers import run_helpers

TABLES = {
    "pgflow_jobs",
    "pgflow_instances",
    "pgflow_runs",
    "pgflow_steps",
    "pgflow_leader",
    "pgflow_cron",
    "pgflow_queue_controls",
    "pgflow_partition_holds",
    "pgflow_rate_starts",
}
FLOW_CONTROL_TABLES = {"pgflow_queue_controls", "pgflow_partition_holds", "pgflow_rate_starts"}


@pytest.fixture
def engine(sql_url: str) -> Any:
    engine = create_engine(parse(sql_url))
    yield engine
    engine.dispose()


def _only_pgflow(obj: Any, name: str | None, type_: str, reflected: bool, other: Any) -> bool:
    return not (type_ == "table" and name in (migrations.VERSION_TABLE, "alembic_version"))


def test_fresh_upgrade_creates_every_table_at_head(engine: Engine) -> None:
    assert migrations.current_revision(engine) is None
    migrations.upgrade(engine)
    assert migrations.current_revision(engine) == migrations.head_revision()
    assert set(inspect(engine).get_table_names()) >= TABLES


def test_upgrade_is_idempotent(engine: Engine) -> None:
    migrations.upgrade(engine)
    migrations.upgrade(engine)
    with engine.connect() as conn:
        rows = conn.execute(text(f"SELECT version_num FROM {migrations.VERSION_TABLE}")).all()
    assert rows == [(migrations.head_revision(),)]


def test_migrated_schema_equals_metadata(engine: Engine) -> None:
    migrations.upgrade(engine)
    with engine.connect() as conn:
        context = MigrationContext.configure(
            conn, opts={"compare_type": True, "include_object": _only_pgflow}
        )
        diffs = compare_metadata(context, metadata)
    assert diffs == []


def _downgrade(engine: Engine, revision: str) -> None:
    """Downgrade as `alembic downgrade` would (the CLI's own engine, one transaction)."""
    from alembic import command

    with engine.begin() as conn:
        command.downgrade(migrations._config(conn), revision)


def test_0005_downgrades_and_upgrades_again(engine: Engine, sql_url: str) -> None:
    """0005 down to 0004 drops the run links, deadlines and signals, and the runs with steps
    of the new kinds (with their step rows); up again equals metadata."""
    import pgflow
    from pgflow_backends.postgres import PostgresBackend
    from pgflow_backends.sqlite import SQLiteBackend

    waits = pgflow.Flow("migration_waits")

    @waits.step
    def first(input: object) -> object: ...

    waits.wait_for("approve", depends_on=["first"])
    plain = pgflow.Flow("migration_plain")

    @plain.step
    def only(input: object) -> object: ...

    migrations.upgrade(engine)
    backend: Any = (SQLiteBackend if sql_url.startswith("sqlite") else PostgresBackend)(sql_url)
    try:
        backend.start_flow_run(waits.plan, workflow_id="new-kinds", input=1, max_attempts=1)
        backend.start_flow_run(
            plain.plan, workflow_id="old-kinds", input=1, max_attempts=1, deadline=60
        )
    finally:
        backend.close()
    _downgrade(engine, "0004")
    assert migrations.current_revision(engine) == "0004"
    inspector = inspect(engine)
    assert "pgflow_signals" not in inspector.get_table_names()
    columns = {column["name"] for column in inspector.get_columns("pgflow_runs")}
    assert not columns & {"parent_id", "parent_step", "parent_queue", "restart_of", "deadline_at"}
    with engine.connect() as conn:
        kept = conn.execute(text("SELECT workflow_id FROM pgflow_runs")).scalars().all()
        steps = conn.execute(text("SELECT workflow_id FROM pgflow_step_states")).scalars().all()
        jobs = conn.execute(text("SELECT workflow_id FROM pgflow_jobs")).scalars().all()
    assert (kept, steps, jobs) == (["old-kinds"], ["old-kinds"], ["old-kinds"])
    migrations.upgrade(engine)
    with engine.connect() as conn:
        context = MigrationContext.configure(
            conn, opts={"compare_type": True, "include_object": _only_pgflow}
        )
        assert compare_metadata(context, metadata) == []


def test_0006_downgrades_and_upgrades_again(engine: Engine, sql_url: str) -> None:
    """0006 down to 0005 drops the flow-control tables (pauses, holds, rate windows) and
    leaves the jobs; up again equals metadata, and the controls work."""
    from pgflow.queue_config import Queue
    from pgflow.records import NewJob
    from pgflow_backends.postgres import PostgresBackend
    from pgflow_backends.sqlite import SQLiteBackend

    opener: Any = SQLiteBackend if sql_url.startswith("sqlite") else PostgresBackend
    migrations.upgrade(engine)
    backend = opener(sql_url)
    try:
        backend.insert_jobs([NewJob(queue="q", worker="w", args={"k": "a"}) for _ in range(3)])
        backend.pause_queue("q")
        backend.hold_queue("q", 60, partition="a")
        assert backend.claim_jobs("q", "i", 1) == []
    finally:
        backend.close()
    _downgrade(engine, "0005")
    assert migrations.current_revision(engine) == "0005"
    assert not set(inspect(engine).get_table_names()) & FLOW_CONTROL_TABLES
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM pgflow_jobs")).scalar_one() == 3
    migrations.upgrade(engine)
    assert set(inspect(engine).get_table_names()) >= FLOW_CONTROL_TABLES
    with engine.connect() as conn:
        context = MigrationContext.configure(
            conn, opts={"compare_type": True, "include_object": _only_pgflow}
        )
        assert compare_metadata(context, metadata) == []
    backend = opener(sql_url)
    try:
        assert backend.queue_controls() == []  # the pause went with the table
        shape = Queue(rate_limit=(1, 60.0), partition_by="k")
        assert len(backend.claim_jobs("q", "i", 3, shape=shape)) == 1
    finally:
        backend.close()


def test_0007_downgrades_and_upgrades_again(engine: Engine, sql_url: str) -> None:
    """0007 down to 0006 drops the stored partitions and their indexes (the jobs stay); up
    again equals metadata, and a partitioned claim keys the jobs anew."""
    from pgflow.queue_config import Queue
    from pgflow.records import NewJob
    from pgflow_backends.postgres import PostgresBackend
    from pgflow_backends.sqlite import SQLiteBackend

    opener: Any = SQLiteBackend if sql_url.startswith("sqlite") else PostgresBackend
    shape = Queue(partition_by="k", partition_limit=1)
    migrations.upgrade(engine)
    backend = opener(sql_url)
    try:
        backend.insert_jobs([NewJob(queue="q", worker="w", args={"k": k}) for k in "aab"])
        assert len(backend.claim_jobs("q", "i", 1, shape=shape)) == 1
    finally:
        backend.close()
    _downgrade(engine, "0006")
    assert migrations.current_revision(engine) == "0006"
    inspector = inspect(engine)
    assert "partition_key" not in {c["name"] for c in inspector.get_columns("pgflow_jobs")}
    assert not {"keyed_by", "keyed_through", "swept_at"} & {
        c["name"] for c in inspector.get_columns("pgflow_queue_controls")
    }
    indexes = {index["name"] for index in inspector.get_indexes("pgflow_jobs")}
    assert not indexes & {"pgflow_jobs_partition_idx", "pgflow_jobs_executing_idx"}
    assert "pgflow_jobs_rescue_idx" in indexes
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM pgflow_jobs")).scalar_one() == 3
    migrations.upgrade(engine)
    with engine.connect() as conn:
        context = MigrationContext.configure(
            conn, opts={"compare_type": True, "include_object": _only_pgflow}
        )
        assert compare_metadata(context, metadata) == []
    backend = opener(sql_url)
    try:
        # "a" executes already: the other partition is served.
        assert [job.args for job in backend.claim_jobs("q", "i", 3, shape=shape)] == [{"k": "b"}]
    finally:
        backend.close()


def test_an_upgrade_through_the_backend_keeps_the_runs_stored(sql_url: str, engine: Engine) -> None:
    """Upgrading a database at 0003 that holds flow runs keeps them with their step rows:
    SQLite rebuilds pgflow_runs (0004) and the step table (0005), which with the backend's
    foreign keys on would cascade to every run's steps."""
    from pgflow_backends.postgres import PostgresBackend
    from pgflow_backends.sqlite import SQLiteBackend

    migrations.upgrade(engine, "0003")
    now = "0" if sql_url.startswith("sqlite") else "now()"
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO pgflow_runs (workflow_id, workflow, state, attempt, max_attempts,"
                f" started_at, remaining_steps) VALUES ('r', 'f', 'running', 1, 1, {now}, 1)"
            )
        )
        conn.execute(
            text(
                "INSERT INTO pgflow_step_states (workflow_id, step, step_index, kind, state,"
                " remaining_deps, tasks_done, attempts) VALUES ('r', 's', 0, 'step',"
                " 'pending', 0, 0, 0)"
            )
        )
        conn.execute(
            text(
                "INSERT INTO pgflow_steps (workflow_id, step, idx, attempt, outcome, started_at,"
                f" duration) VALUES ('r', 's', 0, 1, 'completed', {now}, 0)"
            )
        )
    backend: Any = (SQLiteBackend if sql_url.startswith("sqlite") else PostgresBackend)(sql_url)
    try:
        backend.migrate()
        assert backend.get_run("r") is not None
        assert list(backend.get_step_states("r")) == ["s"]
        assert [step.step for step in backend.get_steps("r")] == ["s"]
    finally:
        backend.close()


def test_the_applications_alembic_version_is_untouched(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE alembic_version (version_num VARCHAR(32) PRIMARY KEY)"))
        conn.execute(text("INSERT INTO alembic_version VALUES ('app_rev_42')"))
    migrations.upgrade(engine)
    with engine.connect() as conn:
        app = conn.execute(text("SELECT version_num FROM alembic_version")).all()
    assert app == [("app_rev_42",)]
    assert migrations.current_revision(engine) == migrations.head_revision()


def test_upgrade_joins_a_callers_transaction(engine: Engine) -> None:
    with engine.connect() as conn:
        conn.begin()
        migrations.upgrade(conn)
        conn.rollback()
    assert migrations.current_revision(engine) is None  # rolled back with the caller


@pytest.mark.postgres
@pytest.mark.slow
def test_three_processes_migrate_a_fresh_postgres_database_at_once(postgres_url: str) -> None:
    outputs = run_helpers("migrate_worker.py", [[postgres_url]] * 3)
    assert [out.strip() for out in outputs] == [migrations.head_revision()] * 3


def test_check_schema_says_to_migrate_a_fresh_database(engine: Engine) -> None:
    with pytest.raises(BackendError, match=r"schema not migrated.*pgflow migrate --url"):
        migrations.check_schema(engine, "db://masked")
    migrations.upgrade(engine)
    migrations.check_schema(engine, "db://masked")  # at head: no error


def test_check_schema_names_an_older_revision(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    migrations.upgrade(engine)
    current = migrations.head_revision()
    monkeypatch.setattr(migrations, "head_revision", lambda: "0099")
    with pytest.raises(
        BackendError, match=rf"schema is older than this pgflow \(rev {current}, need 0099\)"
    ):
        migrations.check_schema(engine, "db://masked")


def test_check_schema_names_a_newer_revision(engine: Engine) -> None:
    migrations.upgrade(engine)
    with engine.begin() as conn:
        conn.execute(text(f"UPDATE {migrations.VERSION_TABLE} SET version_num = 'zz_future'"))
    with pytest.raises(BackendError, match=r"newer than this pgflow \(rev zz_future"):
        migrations.check_schema(engine, "db://masked")


def test_backend_operations_on_an_unmigrated_database_say_what_to_do(sql_url: str) -> None:
    from pgflow.registry import backend_from_url

    backend = backend_from_url(sql_url)
    try:
        with pytest.raises(BackendError, match="schema not migrated") as raised:
            backend.check_schema()
        assert "pgflow migrate --url" in str(raised.value)
        with pytest.raises(BackendError, match="schema not migrated"):
            backend.get_job(1)
        backend.migrate()
        backend.check_schema()
        assert backend.get_job(1) is None
    finally:
        backend.close()


def test_script_location_holds_env_and_versions() -> None:
    location = migrations.script_location()
    assert (location / "env.py").is_file()
    assert not (location / "__init__.py").exists()  # would shadow the alembic package
    assert any(location.joinpath("versions").glob("0001_*.py"))


def test_the_schema_revision_constant_is_the_migrations_head() -> None:
    from pgflow.migrations import head_revision
    from pgflow.schema import SCHEMA_REVISION

    assert head_revision() == SCHEMA_REVISION


def test_an_app_refuses_to_start_on_an_unmigrated_database(sqlite_url: str) -> None:
    import pgflow
    from pgflow.errors import SchemaError

    app = pgflow.Pgflow(sqlite_url, instance_id="unmigrated")
    try:
        with pytest.raises(SchemaError, match=r"schema not migrated.*pgflow migrate"):
            app.start()
        assert not app.running
        app.migrate()
        app.start()
        assert app.running
    finally:
        app.stop(timeout=5)
        app.close()
