"""An index on schedule_fires.job_id, so pruning jobs does not scan every fire row per job.

Deleting a job sets `schedule_fires.job_id` to NULL (ON DELETE SET NULL); without an index the
database looks for referencing fires by scanning the table once per deleted job.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-30
"""

from __future__ import annotations

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_schedule_fires_job", "schedule_fires", ["job_id"])


def downgrade() -> None:
    op.drop_index("ix_schedule_fires_job", table_name="schedule_fires")
