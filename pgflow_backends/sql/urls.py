"""URL handling shared by the SQL backends: driver choice and password masking."""

from __future__ import annotations

from sqlalchemy import URL, make_url
from sqlalchemy.exc import ArgumentError

from pgflow.errors import BackendError

__all__ = ["mask", "parse"]


def parse(url: str | URL) -> URL:
    """Parse a URL, steering PostgreSQL URLs as users type them to psycopg 3.

    "postgres://" and "postgresql://" become "postgresql+psycopg://"; an explicit other
    driver is refused, because LISTEN/NOTIFY and array binding here are psycopg's.
    """
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise BackendError(f"cannot parse database URL: {exc}") from None
    backend, _, driver = parsed.drivername.partition("+")
    if backend in ("postgres", "postgresql"):
        if driver not in ("", "psycopg"):
            raise BackendError(
                f"{mask(parsed)}: pgflow's PostgreSQL backend needs the psycopg 3 driver; "
                f"use a postgresql:// or postgresql+psycopg:// URL instead of +{driver}"
            )
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def mask(url: str | URL) -> str:
    """The URL with its password replaced by ***, safe for messages and logs."""
    if isinstance(url, URL):
        return url.render_as_string(hide_password=True)
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        # Not a URL SQLAlchemy understands: drop anything that looks like credentials.
        scheme, sep, rest = url.partition("://")
        return f"{scheme}{sep}***@{rest.rpartition('@')[2]}" if "@" in rest else url
