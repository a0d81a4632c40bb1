"""Jobs: indexes for the dashboard and metrics with many jobs in the table.

* (state, task, queue) covers the counts by queue, task and state (`/metrics`, the overview,
  `ledgerflow queues`), so they read no table rows; it keeps the (state, task) prefix the old
  index served.
* (state, id) gives the newest jobs of one state without sorting them all.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_jobs_state_task_queue", "jobs", ["state", "task", "queue"], unique=False)
    op.create_index("ix_jobs_state_id", "jobs", ["state", "id"], unique=False)
    op.drop_index("ix_jobs_state_task", table_name="jobs")


def downgrade() -> None:
    op.create_index("ix_jobs_state_task", "jobs", ["state", "task"], unique=False)
    op.drop_index("ix_jobs_state_id", table_name="jobs")
    op.drop_index("ix_jobs_state_task_queue", table_name="jobs")
