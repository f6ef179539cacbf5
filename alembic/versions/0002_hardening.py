"""Hardening: instance incarnations, job results, run definitions, durable cron slots.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from pgflow.schema import JSONType, UTCDateTime

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("pgflow_instances") as batch:
        # Which process registered under the id last: a restart under the same id is a new
        # incarnation, and the jobs of the earlier one are rescued when it registers.
        batch.add_column(
            sa.Column("incarnation", sa.String(64), nullable=False, server_default=sa.text("''"))
        )
        # Threads of timed-out work that still run (they hold a slot until they end).
        batch.add_column(
            sa.Column("abandoned", sa.Integer(), nullable=False, server_default=sa.text("0"))
        )
    with op.batch_alter_table("pgflow_jobs") as batch:
        # What perform returned (JSON), kept on the completed job.
        batch.add_column(sa.Column("result", JSONType))
    with op.batch_alter_table("pgflow_runs") as batch:
        # The run's definition (step names in order, later the graph) and its hash, so a
        # resume under a changed definition is refused instead of re-running side effects.
        batch.add_column(sa.Column("fingerprint", sa.String(64)))
        batch.add_column(sa.Column("definition", JSONType))
    op.create_table(
        "pgflow_cron",
        # One row per cron entry: the newest slot enqueued. Kept apart from the jobs, so
        # pruning a slot's job never lets the slot be enqueued again.
        sa.Column("name", sa.String(255), primary_key=True),
        sa.Column("last_slot", UTCDateTime(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("pgflow_cron")
    with op.batch_alter_table("pgflow_runs") as batch:
        batch.drop_column("definition")
        batch.drop_column("fingerprint")
    with op.batch_alter_table("pgflow_jobs") as batch:
        batch.drop_column("result")
    with op.batch_alter_table("pgflow_instances") as batch:
        batch.drop_column("abandoned")
        batch.drop_column("incarnation")
