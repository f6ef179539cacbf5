"""What the SQLite and PostgreSQL backends share: engines, time expressions, rows, statements.

`pgflow_backends.sql.base.SQLBackend` implements the whole backend protocol with SQLAlchemy
Core; the two dialect modules add only what truly differs (engine setup, bulk insert,
completion, notifications and the listener).
"""
