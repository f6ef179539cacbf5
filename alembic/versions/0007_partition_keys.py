"""Partitioned claims without scanning the backlog: jobs keep their partition once a claim
has read it, indexed per queue and partition; executing jobs indexed by queue (the index
rescue reads too, in place of the rescue index by instance).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from pgflow.schema import PARTITION_KEY, UTCDateTime

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_EXECUTING = "state = 'executing'"
_KEYED = "state = 'available' AND partition_key IS NOT NULL"


def upgrade() -> None:
    # Nullable, no default: adding it rewrites no row, and inserts never write it.
    op.add_column("pgflow_jobs", sa.Column("partition_key", PARTITION_KEY))
    # Replaces the rescue index (reserved_by): counting a queue's executing jobs read every
    # queue's entries there, and rescue finds its jobs here as well.
    op.create_index(
        "pgflow_jobs_executing_idx",
        "pgflow_jobs",
        ["queue", "partition_key", "reserved_by"],
        postgresql_where=sa.text(_EXECUTING),
        sqlite_where=sa.text(_EXECUTING),
    )
    op.drop_index("pgflow_jobs_rescue_idx", table_name="pgflow_jobs")
    op.create_index(
        "pgflow_jobs_partition_idx",
        "pgflow_jobs",
        ["queue", "partition_key", sa.text("priority DESC"), "scheduled_at", "id"],
        postgresql_where=sa.text(_KEYED),
        sqlite_where=sa.text(_KEYED),
    )
    op.add_column("pgflow_queue_controls", sa.Column("keyed_by", sa.String(255)))
    op.add_column("pgflow_queue_controls", sa.Column("keyed_through", sa.BigInteger()))
    op.add_column("pgflow_queue_controls", sa.Column("swept_at", UTCDateTime()))


def downgrade() -> None:
    op.drop_index("pgflow_jobs_partition_idx", table_name="pgflow_jobs")
    op.create_index(
        "pgflow_jobs_rescue_idx",
        "pgflow_jobs",
        ["reserved_by"],
        postgresql_where=sa.text(_EXECUTING),
        sqlite_where=sa.text(_EXECUTING),
    )
    op.drop_index("pgflow_jobs_executing_idx", table_name="pgflow_jobs")
    # ALTER TABLE ... DROP COLUMN on both (SQLite 3.35+): no copy of the jobs table.
    for table, column in (
        ("pgflow_jobs", "partition_key"),
        ("pgflow_queue_controls", "keyed_by"),
        ("pgflow_queue_controls", "keyed_through"),
        ("pgflow_queue_controls", "swept_at"),
    ):
        op.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
