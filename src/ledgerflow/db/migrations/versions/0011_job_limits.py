"""Limits shared by all workers (job_limits), and an index for uniqueness over a period.

`job_limits` holds a global concurrency limit and a rate limit per queue or task type;
`ix_jobs_unique_key_created` finds the latest job of a unique key, finished or not, for
`unique_for` windows.

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from ledgerflow.db.types import String, UTCDateTime

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "job_limits",
        sa.Column("kind", String(10), nullable=False),
        sa.Column("name", String(200), nullable=False),
        sa.Column("concurrency", sa.Integer()),
        sa.Column("rate_limit", sa.Integer()),
        sa.Column("rate_period", sa.Float()),
        # declared JSON as at this revision (0017 makes it TEXT on SQLite)
        sa.Column("recent_starts", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=False),
        sa.Column("set_by", String(50), nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("kind", "name", name="pk_job_limits"),
    )
    op.create_index(
        "ix_jobs_unique_key_created",
        "jobs",
        ["unique_key", "created_at"],
        sqlite_where=sa.text("unique_key IS NOT NULL"),
        postgresql_where=sa.text("unique_key IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_jobs_unique_key_created", table_name="jobs")
    op.drop_table("job_limits")
