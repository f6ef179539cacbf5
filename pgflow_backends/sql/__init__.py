"""What the SQLite and PostgreSQL backends share: engines, time expressions, rows, statements.

`SQLBackend` implements the whole backend protocol with SQLAlchemy Core; the two dialect
modules add only what truly differs (engine setup, bulk insert, claiming, notifications).
"""

from __future__ import annotations

from pgflow_backends.sql.base import SQLBackend

__all__ = ["SQLBackend"]
