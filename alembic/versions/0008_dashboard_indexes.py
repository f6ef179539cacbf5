"""The dashboard's job pages: newest retryable, discarded and cancelled jobs, by state and by
queue and state.

Partial indexes of those three states only: available, executing and completed jobs never
enter them, so inserting, claiming and completing a job writes no entry (full indexes on
(queue, state, id) and (worker, id) cost the job path 20-25%: every state change is a non-HOT
update). Other filters use the claim, executing and stage indexes or a newest-first walk of
the primary key, bounded to the newest 50,000 jobs. Plain CREATE INDEX (migrations run in a
transaction): writes wait while it is built, well under a second per million jobs.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_SETTLED_OR_FAILED = "state IN ('retryable', 'discarded', 'cancelled')"


def upgrade() -> None:
    where = {
        "postgresql_where": sa.text(_SETTLED_OR_FAILED),
        "sqlite_where": sa.text(_SETTLED_OR_FAILED),
    }
    op.create_index("pgflow_jobs_failed_idx", "pgflow_jobs", ["state", "id"], **where)
    op.create_index(
        "pgflow_jobs_failed_queue_idx", "pgflow_jobs", ["queue", "state", "id"], **where
    )


def downgrade() -> None:
    op.drop_index("pgflow_jobs_failed_queue_idx", table_name="pgflow_jobs")
    op.drop_index("pgflow_jobs_failed_idx", table_name="pgflow_jobs")
