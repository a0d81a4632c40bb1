"""Job engine: jobs, dependencies, executions, workers, pauses, alerts.

Revision ID: 0001
Revises: (none)
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import ledgerflow.db.types

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# Wake idle workers when jobs are inserted ready to run (one NOTIFY per queue per statement).
NOTIFY_FUNCTION = """
CREATE OR REPLACE FUNCTION ledgerflow_notify_jobs() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE q text;
BEGIN
    FOR q IN SELECT DISTINCT queue FROM new_jobs WHERE state = 'available' LOOP
        PERFORM pg_notify('ledgerflow_jobs', q);
    END LOOP;
    RETURN NULL;
END $$
"""
NOTIFY_TRIGGER = """
CREATE TRIGGER jobs_notify_insert AFTER INSERT ON jobs
REFERENCING NEW TABLE AS new_jobs FOR EACH STATEMENT EXECUTE FUNCTION ledgerflow_notify_jobs()
"""


def upgrade() -> None:
    op.create_table(
        "alerts",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("incident_key", sa.String(length=255), nullable=False),
        sa.Column("severity", sa.String(length=16), nullable=False),
        sa.Column("title", sa.String(length=500), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("context", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=False),
        sa.Column("opened_at", ledgerflow.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("resolved_at", ledgerflow.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("delivery", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_alerts")),
    )
    with op.batch_alter_table("alerts", schema=None) as batch_op:
        batch_op.create_index("ix_alerts_opened", ["opened_at"], unique=False)
        batch_op.create_index(
            "uq_alerts_open_incident",
            ["incident_key"],
            unique=True,
            sqlite_where=sa.text("resolved_at IS NULL"),
            postgresql_where=sa.text("resolved_at IS NULL"),
        )

    op.create_table(
        "jobs",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("task", sa.String(length=200), nullable=False),
        sa.Column("queue", sa.String(length=100), nullable=False),
        sa.Column("priority", sa.SmallInteger(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("args", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=False),
        sa.Column("kwargs", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=False),
        sa.Column("attempt", sa.Integer(), server_default="0", nullable=False),
        sa.Column("max_attempts", sa.Integer(), nullable=False),
        sa.Column("timeout", sa.Float(), nullable=False),
        sa.Column("unique_key", sa.String(length=255), nullable=True),
        sa.Column("has_dependencies", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("scheduled_at", ledgerflow.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("created_at", ledgerflow.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("started_at", ledgerflow.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("finished_at", ledgerflow.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("worker_id", sa.String(length=120), nullable=True),
        sa.Column("lease_token", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("lease_expires_at", ledgerflow.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("errors", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=False),
        sa.Column("result", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=True),
        sa.Column("state_reason", sa.Text(), nullable=True),
        sa.Column("schedule_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("fire_time", ledgerflow.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jobs")),
    )
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.create_index(
            "ix_jobs_claim",
            ["queue", "priority", "scheduled_at", "id"],
            unique=False,
            sqlite_where=sa.text("state IN ('scheduled', 'available', 'retryable')"),
            postgresql_where=sa.text("state IN ('scheduled', 'available', 'retryable')"),
        )
        batch_op.create_index(
            "ix_jobs_lease",
            ["lease_expires_at"],
            unique=False,
            sqlite_where=sa.text("state = 'running'"),
            postgresql_where=sa.text("state = 'running'"),
        )
        batch_op.create_index("ix_jobs_schedule", ["schedule_id", "state"], unique=False)
        batch_op.create_index("ix_jobs_state_finished", ["state", "finished_at"], unique=False)
        batch_op.create_index("ix_jobs_state_task", ["state", "task"], unique=False)
        batch_op.create_index(
            "uq_jobs_unique_key",
            ["unique_key"],
            unique=True,
            sqlite_where=sa.text(
                "unique_key IS NOT NULL AND state IN ('scheduled', 'available', 'running', 'retryable')"
            ),
            postgresql_where=sa.text(
                "unique_key IS NOT NULL AND state IN ('scheduled', 'available', 'running', 'retryable')"
            ),
        )

    op.create_table(
        "pauses",
        sa.Column("kind", sa.String(length=10), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("paused_by", sa.String(length=50), nullable=False),
        sa.Column("paused_at", ledgerflow.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("kind", "name", name=op.f("pk_pauses")),
    )
    op.create_table(
        "workers",
        sa.Column("id", sa.String(length=120), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("hostname", sa.String(length=255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("queues", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=False),
        sa.Column("concurrency", sa.Integer(), nullable=False),
        sa.Column("started_at", ledgerflow.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", ledgerflow.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("stopped_at", ledgerflow.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_workers")),
    )
    op.create_table(
        "job_dependencies",
        sa.Column("job_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("depends_on_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.ForeignKeyConstraint(
            ["depends_on_id"],
            ["jobs.id"],
            name=op.f("fk_job_dependencies_depends_on_id_jobs"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["jobs.id"],
            name=op.f("fk_job_dependencies_job_id_jobs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("job_id", "depends_on_id", name=op.f("pk_job_dependencies")),
    )
    with op.batch_alter_table("job_dependencies", schema=None) as batch_op:
        batch_op.create_index("ix_job_dependencies_parent", ["depends_on_id"], unique=False)

    op.create_table(
        "job_executions",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("job_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("schedule_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("task", sa.String(length=200), nullable=False),
        sa.Column("queue", sa.String(length=100), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("worker_id", sa.String(length=120), nullable=True),
        sa.Column("started_at", ledgerflow.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("completed_at", ledgerflow.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("duration_seconds", sa.Float(), nullable=True),
        sa.Column("error_type", sa.String(length=200), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column(
            "execution_metadata",
            sa.JSON().with_variant(postgresql.JSONB(), "postgresql"),
            nullable=True,
        ),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_job_executions_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_job_executions")),
        sa.UniqueConstraint("job_id", "attempt", name="uq_job_executions_job_attempt"),
    )
    with op.batch_alter_table("job_executions", schema=None) as batch_op:
        batch_op.create_index("ix_job_executions_schedule", ["schedule_id", "started_at"], unique=False)
        batch_op.create_index("ix_job_executions_started", ["started_at"], unique=False)
        batch_op.create_index("ix_job_executions_task_completed", ["task", "completed_at"], unique=False)

    if op.get_bind().dialect.name == "postgresql":
        op.execute(NOTIFY_FUNCTION)
        op.execute(NOTIFY_TRIGGER)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS jobs_notify_insert ON jobs")
        op.execute("DROP FUNCTION IF EXISTS ledgerflow_notify_jobs()")
    with op.batch_alter_table("job_executions", schema=None) as batch_op:
        batch_op.drop_index("ix_job_executions_task_completed")
        batch_op.drop_index("ix_job_executions_started")
        batch_op.drop_index("ix_job_executions_schedule")

    op.drop_table("job_executions")
    with op.batch_alter_table("job_dependencies", schema=None) as batch_op:
        batch_op.drop_index("ix_job_dependencies_parent")

    op.drop_table("job_dependencies")
    op.drop_table("workers")
    op.drop_table("pauses")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index(
            "uq_jobs_unique_key",
            sqlite_where=sa.text(
                "unique_key IS NOT NULL AND state IN ('scheduled', 'available', 'running', 'retryable')"
            ),
            postgresql_where=sa.text(
                "unique_key IS NOT NULL AND state IN ('scheduled', 'available', 'running', 'retryable')"
            ),
        )
        batch_op.drop_index("ix_jobs_state_task")
        batch_op.drop_index("ix_jobs_state_finished")
        batch_op.drop_index("ix_jobs_schedule")
        batch_op.drop_index(
            "ix_jobs_lease",
            sqlite_where=sa.text("state = 'running'"),
            postgresql_where=sa.text("state = 'running'"),
        )
        batch_op.drop_index(
            "ix_jobs_claim",
            sqlite_where=sa.text("state IN ('scheduled', 'available', 'retryable')"),
            postgresql_where=sa.text("state IN ('scheduled', 'available', 'retryable')"),
        )

    op.drop_table("jobs")
    with op.batch_alter_table("alerts", schema=None) as batch_op:
        batch_op.drop_index(
            "uq_alerts_open_incident",
            sqlite_where=sa.text("resolved_at IS NULL"),
            postgresql_where=sa.text("resolved_at IS NULL"),
        )
        batch_op.drop_index("ix_alerts_opened")

    op.drop_table("alerts")
