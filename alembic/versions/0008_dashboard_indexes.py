"""The dashboard's job pages: newest jobs of a queue (and state), or of a worker.

Both indexes end with the id, so a page (`ORDER BY id DESC LIMIT 50`) is an index walk
whatever the table's size, and counts by queue and state are an index-only scan. Plain
CREATE INDEX (migrations run in a transaction): writes to pgflow_jobs wait while it is
built, about a second per million jobs.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("pgflow_jobs_queue_state_idx", "pgflow_jobs", ["queue", "state", "id"])
    op.create_index("pgflow_jobs_worker_idx", "pgflow_jobs", ["worker", "id"])


def downgrade() -> None:
    op.drop_index("pgflow_jobs_worker_idx", table_name="pgflow_jobs")
    op.drop_index("pgflow_jobs_queue_state_idx", table_name="pgflow_jobs")
