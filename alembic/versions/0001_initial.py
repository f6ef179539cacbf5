"""Initial pgflow schema: jobs, instances, workflow runs and steps, the leader lease.

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

# The two storage types are part of the on-disk format: their meaning never changes, so a
# migration may import them (a new format would get a new type and a new migration).
from pgflow.schema import JSONType, UTCDateTime

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BIGID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_FINISHED = "state IN ('completed', 'discarded', 'cancelled')"
_STAGED = "state IN ('scheduled', 'retryable')"


def _partial(where: str) -> dict[str, Any]:
    return {"postgresql_where": sa.text(where), "sqlite_where": sa.text(where)}


def upgrade() -> None:
    op.create_table(
        "pgflow_jobs",
        sa.Column("id", _BIGID, sa.Identity(), primary_key=True),
        sa.Column("queue", sa.String(63), nullable=False),
        sa.Column("worker", sa.String(255), nullable=False),
        sa.Column("args", JSONType, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("attempt", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("max_attempts", sa.Integer(), nullable=False),
        sa.Column("scheduled_at", UTCDateTime(), nullable=False),
        sa.Column("reserved_by", sa.String(128)),
        sa.Column("errors", JSONType, nullable=False),
        sa.Column("meta", JSONType, nullable=False),
        sa.Column("unique_key", sa.String(64)),
        sa.Column(
            "unique_release",
            sa.Boolean(create_constraint=False),
            nullable=False,
            server_default=sa.false(),
        ),
        sa.Column("inserted_at", UTCDateTime(), nullable=False),
        sa.Column("attempted_at", UTCDateTime()),
        sa.Column("completed_at", UTCDateTime()),
        sa.CheckConstraint(
            "state IN ('available', 'scheduled', 'executing', 'retryable', 'completed', "
            "'discarded', 'cancelled')",
            name="pgflow_jobs_state_check",
        ),
        sa.CheckConstraint("priority BETWEEN -32768 AND 32767", name="pgflow_jobs_priority_check"),
        sa.CheckConstraint(
            "max_attempts >= 1 AND attempt >= 0 AND attempt <= max_attempts",
            name="pgflow_jobs_attempt_check",
        ),
        postgresql_with={
            "autovacuum_vacuum_scale_factor": "0.02",
            "autovacuum_analyze_scale_factor": "0.02",
        },
        sqlite_autoincrement=True,
    )
    op.create_index(
        "pgflow_jobs_claim_idx",
        "pgflow_jobs",
        ["queue", sa.text("priority DESC"), "scheduled_at", "id"],
        **_partial("state = 'available'"),
    )
    op.create_index("pgflow_jobs_stage_idx", "pgflow_jobs", ["scheduled_at"], **_partial(_STAGED))
    op.create_index(
        "pgflow_jobs_rescue_idx", "pgflow_jobs", ["reserved_by"], **_partial("state = 'executing'")
    )
    op.create_index("pgflow_jobs_prune_idx", "pgflow_jobs", ["completed_at"], **_partial(_FINISHED))
    op.create_index(
        "pgflow_jobs_unique_idx",
        "pgflow_jobs",
        ["unique_key"],
        unique=True,
        **_partial("unique_key IS NOT NULL"),
    )

    op.create_table(
        "pgflow_instances",
        sa.Column("instance_id", sa.String(128), primary_key=True),
        sa.Column("status", sa.String(8), nullable=False),
        sa.Column("heartbeat_at", UTCDateTime(), nullable=False),
        sa.Column("started_at", UTCDateTime(), nullable=False),
        sa.Column("hostname", sa.String(255), nullable=False, server_default=sa.text("''")),
        sa.Column("pid", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("queues", JSONType, nullable=False),
        sa.CheckConstraint("status IN ('online', 'offline')", name="pgflow_instances_status_check"),
    )

    op.create_table(
        "pgflow_runs",
        sa.Column("workflow_id", sa.String(64), primary_key=True),
        sa.Column("workflow", sa.String(255), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("max_attempts", sa.Integer(), nullable=False),
        sa.Column("input", JSONType),
        sa.Column("output", JSONType),
        sa.Column("error", JSONType),
        sa.Column("started_at", UTCDateTime(), nullable=False),
        sa.Column("finished_at", UTCDateTime()),
        sa.Column("job_id", sa.BigInteger()),
        sa.CheckConstraint(
            "state IN ('running', 'completed', 'failed')", name="pgflow_runs_state_check"
        ),
        sa.CheckConstraint("max_attempts >= 1 AND attempt >= 1", name="pgflow_runs_attempt_check"),
    )
    op.create_index("pgflow_runs_started_idx", "pgflow_runs", ["started_at"])
    op.create_index("pgflow_runs_workflow_idx", "pgflow_runs", ["workflow", "started_at"])
    op.create_index(
        "pgflow_runs_prune_idx", "pgflow_runs", ["finished_at"], **_partial("state <> 'running'")
    )

    op.create_table(
        "pgflow_steps",
        sa.Column("id", _BIGID, sa.Identity(), primary_key=True),
        sa.Column(
            "workflow_id",
            sa.String(64),
            sa.ForeignKey("pgflow_runs.workflow_id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("step", sa.String(255), nullable=False),
        sa.Column("idx", sa.Integer(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("output", JSONType),
        sa.Column("error", JSONType),
        sa.Column("started_at", UTCDateTime(), nullable=False),
        sa.Column("duration", sa.Float(), nullable=False),
        sa.CheckConstraint(
            "outcome IN ('completed', 'failed', 'timed_out')", name="pgflow_steps_outcome_check"
        ),
    )
    op.create_index("pgflow_steps_run_idx", "pgflow_steps", ["workflow_id", "id"])

    op.create_table(
        "pgflow_leader",
        sa.Column("name", sa.String(63), primary_key=True),
        sa.Column("instance_id", sa.String(128), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("pgflow_leader")
    op.drop_table("pgflow_steps")
    op.drop_table("pgflow_runs")
    op.drop_table("pgflow_instances")
    op.drop_table("pgflow_jobs")
