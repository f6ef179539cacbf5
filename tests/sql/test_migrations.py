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
}


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
