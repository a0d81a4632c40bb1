"""Scheduler: job_schedules and schedule_fires (one row per schedule and fire time).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import ledgerflow.db.types

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "job_schedules",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("cron_expression", sa.String(length=100), nullable=False),
        sa.Column("timezone", sa.String(length=64), nullable=False),
        sa.Column("job_type", sa.String(length=200), nullable=False),
        sa.Column("args", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=False),
        sa.Column("kwargs", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=False),
        sa.Column("queue", sa.String(length=100), nullable=False),
        sa.Column("priority", sa.SmallInteger(), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("misfire_policy", sa.String(length=8), nullable=False),
        sa.Column("misfire_max", sa.Integer(), nullable=False),
        sa.Column("allow_overlap", sa.Boolean(), nullable=False),
        sa.Column("holiday_calendar", sa.String(length=8), nullable=True),
        sa.Column("extra_holidays", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=False),
        sa.Column("business_day", sa.String(length=10), nullable=True),
        sa.Column("disabled_reason", sa.Text(), nullable=True),
        sa.Column("standard", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("created_at", ledgerflow.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", ledgerflow.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("last_fire_time", ledgerflow.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("next_fire_time", ledgerflow.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_job_schedules")),
        sa.UniqueConstraint("name", name=op.f("uq_job_schedules_name")),
    )
    op.create_table(
        "schedule_fires",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("schedule_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("fire_time", ledgerflow.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("run_at", ledgerflow.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("status", sa.String(length=10), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("job_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("trigger", sa.String(length=10), nullable=False),
        sa.Column("run_key", sa.String(length=100), nullable=True),
        sa.Column("created_at", ledgerflow.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_schedule_fires_job_id_jobs"), ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(
            ["schedule_id"],
            ["job_schedules.id"],
            name=op.f("fk_schedule_fires_schedule_id_job_schedules"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_schedule_fires")),
        sa.UniqueConstraint("schedule_id", "fire_time", name="uq_schedule_fires_schedule_time"),
        sa.UniqueConstraint("schedule_id", "run_key", name="uq_schedule_fires_run_key"),
    )
    with op.batch_alter_table("schedule_fires", schema=None) as batch_op:
        batch_op.create_index("ix_schedule_fires_status", ["status", "fire_time"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("schedule_fires", schema=None) as batch_op:
        batch_op.drop_index("ix_schedule_fires_status")

    op.drop_table("schedule_fires")
    op.drop_table("job_schedules")
