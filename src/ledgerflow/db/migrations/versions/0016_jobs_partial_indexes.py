"""Indexes of `jobs` a plain job enters only when it finishes, or never.

An enqueue wrote the new row into every index of `jobs`, and a claim or completion (a change of
`state`) rewrote the entries of the indexes holding `state` (on PostgreSQL, whose update of an
indexed column is never HOT, a new entry in every index). Three of them serve finished or
scheduled jobs only:

* `ix_jobs_finished_at` holds only finished jobs (`finished_at IS NOT NULL`): every query on it
  bounds `finished_at` (retention, purge, search by finish time), which implies the predicate;
* `ix_jobs_state_finished` (`state`, `finished_at`) is dropped: retention and purge read
  `ix_jobs_finished_at` (or `ix_jobs_state_id` for the dead jobs), and it held every job;
* `ix_jobs_schedule` holds only the jobs of a schedule (`schedule_id IS NOT NULL`): its one
  query (a schedule's overlap check) looks up one `schedule_id`.

Revision ID: 0016
Revises: 0015
Create Date: 2026-11-30
"""

from __future__ import annotations

from alembic import op
from sqlalchemy import text

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

FINISHED = text("finished_at IS NOT NULL")
SCHEDULED = text("schedule_id IS NOT NULL")


def upgrade() -> None:
    op.drop_index("ix_jobs_state_finished", table_name="jobs")
    op.drop_index("ix_jobs_finished_at", table_name="jobs")
    op.create_index(
        "ix_jobs_finished_at", "jobs", ["finished_at"], sqlite_where=FINISHED, postgresql_where=FINISHED
    )
    op.drop_index("ix_jobs_schedule", table_name="jobs")
    op.create_index(
        "ix_jobs_schedule",
        "jobs",
        ["schedule_id", "state"],
        sqlite_where=SCHEDULED,
        postgresql_where=SCHEDULED,
    )


def downgrade() -> None:
    op.drop_index("ix_jobs_schedule", table_name="jobs")
    op.create_index("ix_jobs_schedule", "jobs", ["schedule_id", "state"])
    op.drop_index("ix_jobs_finished_at", table_name="jobs")
    op.create_index("ix_jobs_finished_at", "jobs", ["finished_at"])
    op.create_index("ix_jobs_state_finished", "jobs", ["state", "finished_at"])
