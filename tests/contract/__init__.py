"""The contract every backend passes: one suite, run against memory, SQLite and PostgreSQL.

Tests speak only the backend protocol (pgflow.backend), through the `backend` fixture.
"""
