"""backend_from_url: schemes, drivers, Engines, entry points, and errors that say what to do."""

from __future__ import annotations

import importlib.metadata
import sys
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from pgflow import registry
from pgflow.errors import BackendError
from pgflow.records import NewJob
from pgflow.registry import backend_from_url, register_backend
from pgflow_backends.memory import InMemoryBackend
from pgflow_backends.postgres import PostgresBackend
from pgflow_backends.sql.urls import parse
from pgflow_backends.sqlite import SQLiteBackend
from tests.sql.plugin_backend import FakeBackend


def test_memory_and_sqlite_schemes(tmp_path: Path) -> None:
    memory = backend_from_url("memory://")
    assert isinstance(memory, InMemoryBackend)
    private = backend_from_url("sqlite://")
    on_file = backend_from_url(f"sqlite:///{tmp_path}/x.db")
    try:
        assert isinstance(private, SQLiteBackend)
        assert isinstance(on_file, SQLiteBackend)
        assert on_file.url == f"sqlite:///{tmp_path}/x.db"
    finally:
        private.close()
        on_file.close()


@pytest.mark.postgres
@pytest.mark.parametrize("scheme", ["postgresql", "postgres", "postgresql+psycopg"])
def test_postgres_urls_as_users_type_them_use_psycopg(postgres_url: str, scheme: str) -> None:
    url = postgres_url.replace("postgresql://", f"{scheme}://", 1)
    backend = backend_from_url(url)
    try:
        assert isinstance(backend, PostgresBackend)
        assert backend.engine.dialect.driver == "psycopg"
    finally:
        backend.close()


def test_an_unknown_scheme_names_the_url_with_its_password_masked() -> None:
    with pytest.raises(BackendError) as raised:
        backend_from_url("redis://user:hunter2@localhost/0")
    message = str(raised.value)
    assert "hunter2" not in message
    assert "redis://user:***@localhost/0" in message
    assert "unknown backend scheme 'redis'" in message
    assert "register_backend" in message


def test_an_unparsable_url_is_a_backend_error() -> None:
    with pytest.raises(BackendError, match="cannot parse backend URL"):
        backend_from_url("not a url")


def test_another_postgres_driver_is_refused_with_a_hint() -> None:
    with pytest.raises(BackendError, match=r"psycopg 3") as raised:
        backend_from_url("postgresql+psycopg2://u:hunter2@localhost/db")
    assert "hunter2" not in str(raised.value)


def test_an_unreachable_postgres_says_so_without_the_password() -> None:
    with pytest.raises(BackendError) as raised:
        backend_from_url("postgresql://pgflow:hunter2@127.0.0.1:1/nowhere")
    message = str(raised.value)
    assert "hunter2" not in message
    assert "postgresql+psycopg://pgflow:***@127.0.0.1:1/nowhere" in message
    assert "unreachable" in message and "check that it is running" in message


def test_a_missing_driver_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)  # import psycopg now raises ImportError
    with pytest.raises(BackendError, match=r"pip install 'pgflow\[postgres\]'") as raised:
        backend_from_url("postgresql://u:hunter2@127.0.0.1:1/db")
    assert "hunter2" not in str(raised.value)


def test_an_sqlite_engine_is_used_as_is(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path}/app.db")
    backend = backend_from_url(engine)
    try:
        assert isinstance(backend, SQLiteBackend)
        assert backend.engine is engine
        backend.migrate()
        (job,) = backend.insert_jobs([_job()])
        assert [j.id for j in backend.claim_jobs("default", "node-a", 5)] == [job.id]
    finally:
        backend.close()
    with engine.connect() as conn:  # the application's engine still works after close
        assert conn.execute(text("SELECT count(*) FROM pgflow_jobs")).scalar() == 1
    engine.dispose()


@pytest.mark.postgres
def test_a_postgres_engine_is_used_as_is_and_its_pool_reused(postgres_url: str) -> None:
    engine = create_engine(parse(postgres_url), pool_size=2, max_overflow=0)
    backend = backend_from_url(engine)
    try:
        assert isinstance(backend, PostgresBackend)
        assert backend.engine is engine
        backend.migrate()
        for _ in range(5):
            backend.insert_jobs([_job()])
        # Everything went through the application's pool: every other session on the
        # database is one of its idle connections.
        with engine.connect() as conn:
            opened = conn.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            ).scalar()
            idle_in_pool = engine.pool.checkedin()  # type: ignore[attr-defined]
        assert opened == idle_in_pool
        assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    finally:
        backend.close()
    with engine.connect() as conn:  # not disposed by the backend
        assert conn.execute(text("SELECT count(*) FROM pgflow_jobs")).scalar() == 5
    engine.dispose()


def test_register_backend_wins_over_everything() -> None:
    register_backend("fakeq", FakeBackend)
    try:
        backend = backend_from_url("fakeq://somewhere")
        assert isinstance(backend, FakeBackend)
        assert backend.opened_with == "fakeq://somewhere"
    finally:
        registry._registered.pop("fakeq", None)
    with pytest.raises(TypeError, match="from_url"):
        register_backend("broken", object())


def test_entry_points_are_consulted_after_the_built_ins(monkeypatch: pytest.MonkeyPatch) -> None:
    point = importlib.metadata.EntryPoint(
        name="fakeep", value="tests.sql.plugin_backend:FakeBackend", group="pgflow.backends"
    )

    def entry_points(*, group: str) -> list[importlib.metadata.EntryPoint]:
        return [point] if group == "pgflow.backends" else []

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
    backend = backend_from_url("fakeep://x")
    assert isinstance(backend, FakeBackend)
    with pytest.raises(BackendError, match="fakeep"):  # listed among the known schemes
        backend_from_url("nosuch://x")


def test_a_backend_object_passes_through() -> None:
    backend = InMemoryBackend()
    assert backend_from_url(backend) is backend
    with pytest.raises(TypeError, match="URL string"):
        backend_from_url(42)  # type: ignore[arg-type]


def _job() -> NewJob:
    return NewJob(worker="tests.sql.Noop")


def test_an_sqlite_file_that_cannot_be_opened_says_why(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/missing-dir/x.db"
    with pytest.raises(BackendError, match="directory exists and is writable") as raised:
        backend_from_url(url)
    assert url in str(raised.value)


def test_an_exhausted_pool_is_a_backend_error(tmp_path: Path) -> None:
    engine = create_engine(
        f"sqlite:///{tmp_path}/pool.db", pool_size=1, max_overflow=0, pool_timeout=0.1
    )
    backend = backend_from_url(engine)
    try:
        backend.migrate()
        # The application holds the only connection.
        with engine.connect(), pytest.raises(BackendError, match="no free connection"):
            backend.get_job(1)
        assert backend.get_job(1) is None
    finally:
        backend.close()
        engine.dispose()
