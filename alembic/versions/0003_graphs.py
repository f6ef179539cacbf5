"""Flows as graphs: step states, task outputs, task columns on jobs, served flows.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from pgflow.schema import JSONType, UTCDateTime

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_OLD_OUTCOMES = "outcome IN ('completed', 'failed', 'timed_out')"
_NEW_OUTCOMES = "outcome IN ('completed', 'failed', 'timed_out', 'skipped')"
_UNFINISHED_TASK = (
    "workflow_id IS NOT NULL AND state IN ('available', 'scheduled', 'executing', 'retryable')"
)


_RUNNING_FLOW = "state = 'running' AND remaining_steps IS NOT NULL"


def upgrade() -> None:
    with op.batch_alter_table("pgflow_jobs") as batch:
        # The run, step and map element a task job is; NULL on ordinary jobs.
        batch.add_column(sa.Column("workflow_id", sa.String(64)))
        batch.add_column(sa.Column("step", sa.String(255)))
        batch.add_column(sa.Column("task_index", sa.Integer()))
    op.create_index(
        "pgflow_jobs_run_idx",
        "pgflow_jobs",
        ["workflow_id", "step", "task_index"],
        postgresql_where=sa.text(_UNFINISHED_TASK),
        sqlite_where=sa.text(_UNFINISHED_TASK),
    )
    with op.batch_alter_table("pgflow_instances") as batch:
        # The (flow, fingerprint) pairs an instance can run tasks of.
        batch.add_column(
            sa.Column("flows", JSONType, nullable=False, server_default=sa.text("'[]'"))
        )
    with op.batch_alter_table("pgflow_runs") as batch:
        # Steps of a distributed run not yet finished; NULL for in-process runs.
        batch.add_column(sa.Column("remaining_steps", sa.Integer()))
    # The running distributed runs by definition (the leader's unserved-flow sweep): partial,
    # so a million finished runs cost it nothing.
    op.create_index(
        "pgflow_runs_running_flows_idx",
        "pgflow_runs",
        ["workflow", "fingerprint", "started_at"],
        postgresql_where=sa.text(_RUNNING_FLOW),
        sqlite_where=sa.text(_RUNNING_FLOW),
    )
    with op.batch_alter_table("pgflow_steps") as batch:
        batch.add_column(sa.Column("element", sa.Integer()))
        batch.drop_constraint("pgflow_steps_outcome_check", type_="check")
        batch.create_check_constraint("pgflow_steps_outcome_check", sa.text(_NEW_OUTCOMES))
    op.create_table(
        "pgflow_step_states",
        sa.Column(
            "workflow_id",
            sa.String(64),
            sa.ForeignKey("pgflow_runs.workflow_id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("step", sa.String(255), primary_key=True),
        sa.Column("step_index", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("state", sa.String(10), nullable=False),
        sa.Column("remaining_deps", sa.Integer(), nullable=False),
        sa.Column("tasks_total", sa.Integer()),
        sa.Column("tasks_done", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("output", JSONType),
        sa.Column("error", JSONType),
        sa.Column("skip_reason", sa.String(2000)),
        sa.Column("started_at", UTCDateTime()),
        sa.Column("completed_at", UTCDateTime()),
        sa.CheckConstraint(
            "state IN ('pending', 'started', 'completed', 'failed', 'skipped', 'cancelled')",
            name="pgflow_step_states_state_check",
        ),
        sa.CheckConstraint("kind IN ('step', 'map')", name="pgflow_step_states_kind_check"),
        postgresql_with={"fillfactor": "70"},
    )
    op.create_table(
        "pgflow_task_outputs",
        sa.Column("workflow_id", sa.String(64), primary_key=True),
        sa.Column("step", sa.String(255), primary_key=True),
        sa.Column("task_index", sa.Integer(), primary_key=True),
        sa.Column("output", JSONType),
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE pgflow_runs SET (fillfactor = 80)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE pgflow_runs RESET (fillfactor)")
    op.drop_table("pgflow_task_outputs")
    op.drop_table("pgflow_step_states")
    with op.batch_alter_table("pgflow_steps") as batch:
        batch.drop_constraint("pgflow_steps_outcome_check", type_="check")
        batch.create_check_constraint("pgflow_steps_outcome_check", sa.text(_OLD_OUTCOMES))
        batch.drop_column("element")
    op.drop_index("pgflow_runs_running_flows_idx", table_name="pgflow_runs")
    with op.batch_alter_table("pgflow_runs") as batch:
        batch.drop_column("remaining_steps")
    with op.batch_alter_table("pgflow_instances") as batch:
        batch.drop_column("flows")
    op.drop_index("pgflow_jobs_run_idx", table_name="pgflow_jobs")
    with op.batch_alter_table("pgflow_jobs") as batch:
        batch.drop_column("task_index")
        batch.drop_column("step")
        batch.drop_column("workflow_id")
