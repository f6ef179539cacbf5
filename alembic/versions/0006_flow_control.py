"""Flow control across the cluster: queue pauses and holds, partition holds, rate windows.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from pgflow.schema import UTCDateTime

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "pgflow_queue_controls",
        sa.Column("queue", sa.String(63), primary_key=True),
        sa.Column(
            "paused", sa.Boolean(create_constraint=False), nullable=False, server_default=sa.false()
        ),
        sa.Column("paused_at", UTCDateTime()),
        sa.Column("hold_until", UTCDateTime()),
        sa.Column("cursor", sa.String(255)),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
    )
    op.create_table(
        "pgflow_partition_holds",
        sa.Column("queue", sa.String(63), primary_key=True),
        sa.Column("partition", sa.String(255), primary_key=True),
        sa.Column("hold_until", UTCDateTime(), nullable=False),
    )
    op.create_table(
        "pgflow_rate_starts",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            sa.Identity(),
            primary_key=True,
        ),
        sa.Column("queue", sa.String(63), nullable=False),
        sa.Column("partition", sa.String(255), nullable=False),
        sa.Column("started_at", UTCDateTime(), nullable=False),
    )
    op.create_index(
        "pgflow_rate_starts_window_idx",
        "pgflow_rate_starts",
        ["queue", "partition", "started_at"],
    )


def downgrade() -> None:
    op.drop_index("pgflow_rate_starts_window_idx", table_name="pgflow_rate_starts")
    op.drop_table("pgflow_rate_starts")
    op.drop_table("pgflow_partition_holds")
    op.drop_table("pgflow_queue_controls")
