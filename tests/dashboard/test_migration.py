"""Migration 0008 (the dashboard's indexes) goes down and up again on SQLite and PostgreSQL,
keeping the jobs."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import create_engine, inspect, text

from pgflow import migrations
from pgflow.schema import SCHEMA_REVISION

INDEXES = {"pgflow_jobs_failed_idx", "pgflow_jobs_failed_queue_idx"}


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def sql_url(request: pytest.FixtureRequest) -> str:
    fixture = "sqlite_url" if request.param == "sqlite" else "postgres_url"
    url: str = request.getfixturevalue(fixture)
    return url.replace("postgresql://", "postgresql+psycopg://")


def _indexes(engine: Any) -> set[str]:
    return {index["name"] for index in inspect(engine).get_indexes("pgflow_jobs")}


def test_0008_downgrades_and_upgrades_again(sql_url: str) -> None:
    from alembic import command

    engine = create_engine(sql_url)
    try:
        migrations.upgrade(engine)
        assert migrations.current_revision(engine) == SCHEMA_REVISION == "0008"
        assert _indexes(engine) >= INDEXES
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO pgflow_jobs (queue, worker, args, state, max_attempts, "
                    "scheduled_at, errors, meta, inserted_at) VALUES ('q', 'w', '{}', "
                    "'available', 1, :t, '[]', '{}', :t)"
                ),
                {"t": 0 if sql_url.startswith("sqlite") else "2026-01-01T00:00:00Z"},
            )
        with engine.begin() as conn:
            command.downgrade(migrations._config(conn), "-1")
        assert not INDEXES & _indexes(engine)
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM pgflow_jobs")).scalar_one() == 1
        migrations.upgrade(engine)
        assert _indexes(engine) >= INDEXES
    finally:
        engine.dispose()
