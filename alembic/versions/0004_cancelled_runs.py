"""Runs can end cancelled (app.cancel_run).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_OLD_STATES = "state IN ('running', 'completed', 'failed')"
_NEW_STATES = "state IN ('running', 'completed', 'failed', 'cancelled')"


def upgrade() -> None:
    with op.batch_alter_table("pgflow_runs") as batch:
        batch.drop_constraint("pgflow_runs_state_check", type_="check")
        batch.create_check_constraint("pgflow_runs_state_check", sa.text(_NEW_STATES))


def downgrade() -> None:
    # A cancelled run has no state in the old schema: it is recorded as failed.
    op.execute("UPDATE pgflow_runs SET state = 'failed' WHERE state = 'cancelled'")
    with op.batch_alter_table("pgflow_runs") as batch:
        batch.drop_constraint("pgflow_runs_state_check", type_="check")
        batch.create_check_constraint("pgflow_runs_state_check", sa.text(_OLD_STATES))
