"""Runs that wait, nest and can be steered: signals, sub-flow links, restarts, deadlines.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from pgflow.schema import JSONType, UTCDateTime

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_OLD_KINDS = "kind IN ('step', 'map')"
_NEW_KINDS = "kind IN ('step', 'map', 'wait', 'sleep', 'subflow')"
_RUNNING_DEADLINE = "state = 'running' AND deadline_at IS NOT NULL"


def upgrade() -> None:
    with op.batch_alter_table("pgflow_runs") as batch:
        batch.add_column(sa.Column("parent_id", sa.String(64)))
        batch.add_column(sa.Column("parent_step", sa.String(255)))
        batch.add_column(sa.Column("parent_queue", sa.String(63)))
        batch.add_column(sa.Column("restart_of", sa.String(64)))
        batch.add_column(sa.Column("deadline_at", UTCDateTime()))
    op.create_index(
        "pgflow_runs_parent_idx",
        "pgflow_runs",
        ["parent_id"],
        postgresql_where=sa.text("parent_id IS NOT NULL"),
        sqlite_where=sa.text("parent_id IS NOT NULL"),
    )
    op.create_index(
        "pgflow_runs_deadline_idx",
        "pgflow_runs",
        ["deadline_at"],
        postgresql_where=sa.text(_RUNNING_DEADLINE),
        sqlite_where=sa.text(_RUNNING_DEADLINE),
    )
    with op.batch_alter_table("pgflow_step_states") as batch:
        batch.drop_constraint("pgflow_step_states_kind_check", type_="check")
        batch.create_check_constraint("pgflow_step_states_kind_check", sa.text(_NEW_KINDS))
    op.create_table(
        "pgflow_signals",
        sa.Column(
            "workflow_id",
            sa.String(64),
            sa.ForeignKey("pgflow_runs.workflow_id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("step", sa.String(255), primary_key=True),
        sa.Column("payload", JSONType),
        sa.Column("sent_at", UTCDateTime(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("pgflow_signals")
    # Steps of the new kinds have no place in the old schema: their runs go with them, with
    # their rows in every table (explicitly: SQLite may run this without foreign keys).
    # The step rows go last: they say which runs go.
    for table in (
        "pgflow_jobs",
        "pgflow_task_outputs",
        "pgflow_steps",
        "pgflow_runs",
        "pgflow_step_states",
    ):
        op.execute(
            f"DELETE FROM {table} WHERE workflow_id IN (SELECT workflow_id FROM "
            "pgflow_step_states WHERE kind NOT IN ('step', 'map'))"
        )
    with op.batch_alter_table("pgflow_step_states") as batch:
        batch.drop_constraint("pgflow_step_states_kind_check", type_="check")
        batch.create_check_constraint("pgflow_step_states_kind_check", sa.text(_OLD_KINDS))
    op.drop_index("pgflow_runs_deadline_idx", table_name="pgflow_runs")
    op.drop_index("pgflow_runs_parent_idx", table_name="pgflow_runs")
    with op.batch_alter_table("pgflow_runs") as batch:
        batch.drop_column("deadline_at")
        batch.drop_column("restart_of")
        batch.drop_column("parent_queue")
        batch.drop_column("parent_step")
        batch.drop_column("parent_id")
