"""Backends chosen by URL scheme: registered factories, the built-ins, then entry points.

`backend_from_url("sqlite:///app.db")` parses the scheme with SQLAlchemy's URL parser, so
"postgresql+psycopg://", "postgres://" and "memory://" all resolve. A third-party backend
registers with `register_backend(scheme, factory)` or the `pgflow.backends` entry-point
group. A factory is a class (or object) with a `from_url(url: str)` classmethod; given an
SQLAlchemy Engine, the factory itself is called with the engine.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import threading
from typing import TYPE_CHECKING, Any, Protocol

from pgflow.errors import BackendError

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from pgflow.backend import Backend

__all__ = ["BackendFactory", "backend_from_url", "register_backend"]

ENTRY_POINT_GROUP = "pgflow.backends"

logger = logging.getLogger("pgflow.registry")


class BackendFactory(Protocol):
    """What a registered backend provides: opening itself from a URL."""

    def from_url(self, url: str) -> Backend: ...


_BUILTINS: dict[str, str] = {
    "memory": "pgflow_backends.memory:InMemoryBackend",
    "sqlite": "pgflow_backends.sqlite:SQLiteBackend",
    "postgresql": "pgflow_backends.postgres:PostgresBackend",
    "postgres": "pgflow_backends.postgres:PostgresBackend",
}
_DRIVER_HINTS: dict[str, str] = {
    "psycopg": "the PostgreSQL driver psycopg 3 is not installed: pip install 'pgflow[postgres]'",
}

_registered: dict[str, Any] = {}
_lock = threading.Lock()


def register_backend(scheme: str, factory: Any) -> None:
    """Make `scheme` (e.g. "redis") open backends with `factory.from_url(url)`."""
    if not callable(getattr(factory, "from_url", None)):
        raise TypeError(f"backend factory for {scheme!r} needs a from_url(url) method")
    with _lock:
        _registered[scheme.lower()] = factory


def _mask(url: str) -> str:
    """The URL with its password hidden (also when SQLAlchemy cannot parse it)."""
    from sqlalchemy import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        scheme, sep, rest = url.partition("://")
        return f"{scheme}{sep}***@{rest.rpartition('@')[2]}" if "@" in rest else url


def _load(target: str, scheme: str, url: str) -> Any:
    """Import "module:attribute", turning a missing driver into an actionable BackendError."""
    module_name, _, attribute = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        missing = (exc.name or "").split(".")[0]
        hint = _DRIVER_HINTS.get(missing, f"cannot import {module_name} ({exc})")
        raise BackendError(f"{url}: {hint}") from None
    return getattr(module, attribute)


def _factory(scheme: str, url: str) -> Any:
    with _lock:
        factory = _registered.get(scheme)
    if factory is not None:
        return factory
    target = _BUILTINS.get(scheme)
    if target is not None:
        return _load(target, scheme, url)
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if entry_point.name == scheme:
            try:
                return entry_point.load()
            except ImportError as exc:
                raise BackendError(
                    f"{url}: the backend for {scheme!r} ({entry_point.value}) cannot be "
                    f"imported: {exc}"
                ) from None
    known = sorted({*_BUILTINS, *_registered, *_entry_point_names()})
    raise BackendError(
        f"{url}: unknown backend scheme {scheme!r}; use one of {', '.join(known)}, "
        "or register one with pgflow.register_backend()"
    )


def _entry_point_names() -> set[str]:
    return {
        entry_point.name for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
    }


def _scheme(url: str) -> str:
    from sqlalchemy import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).get_backend_name().lower()
    except ArgumentError:
        raise BackendError(
            f"cannot parse backend URL {_mask(url)!r}: expected e.g. 'sqlite:///pgflow.db', "
            "'postgresql://user@host/db' or 'memory://'"
        ) from None


def backend_from_url(url_or_engine: str | Engine | Backend, **options: Any) -> Backend:
    """Open the backend a URL names, or wrap an existing SQLAlchemy Engine (its own pool).

    `options` (e.g. `max_payload_bytes=`) go to the backend's constructor; a backend object
    is returned as it is, so it takes none. Raises BackendError, naming the URL with its
    password masked, for an unknown scheme, a missing driver or an unreachable database.
    """
    from sqlalchemy import Engine

    if isinstance(url_or_engine, Engine):
        scheme = url_or_engine.dialect.name
        factory = _factory(scheme, url_or_engine.url.render_as_string(hide_password=True))
        backend: Backend = factory(url_or_engine, **options)
        return backend
    if not isinstance(url_or_engine, str):
        from pgflow.backend import Backend as BackendProtocol

        if isinstance(url_or_engine, BackendProtocol):
            if options:
                raise TypeError(
                    f"backend_from_url: options {sorted(options)} apply when opening a URL; "
                    "pass them to the backend's constructor instead"
                )
            return url_or_engine
        raise TypeError(
            "backend_from_url takes a URL string, an SQLAlchemy Engine or a backend, "
            f"not {type(url_or_engine).__name__}"
        )
    url = url_or_engine
    factory = _factory(_scheme(url), _mask(url))
    try:
        opened: Backend = factory.from_url(url, **options)
    except ImportError as exc:
        hint = _DRIVER_HINTS.get((exc.name or "").split(".")[0], str(exc))
        raise BackendError(f"{_mask(url)}: {hint}") from None
    return opened
