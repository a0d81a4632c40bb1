"""Ledger and export: journal entries and lines, export queue, batches, audit logs, breakers.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import ledgerflow.db.types

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "circuit_breakers",
        sa.Column("destination", sa.String(length=500), nullable=False),
        sa.Column("state", sa.String(length=10), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("opened_at", ledgerflow.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("open_until", ledgerflow.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("trial_token", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("updated_at", ledgerflow.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("destination", name=op.f("pk_circuit_breakers")),
    )
    op.create_table(
        "export_batches",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("batch_key", sa.String(length=100), nullable=False),
        sa.Column("kind", sa.String(length=10), nullable=False),
        sa.Column("batch_date", sa.Date(), nullable=False),
        sa.Column("state", sa.String(length=12), nullable=False),
        sa.Column("step", sa.String(length=12), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("max_attempts", sa.Integer(), nullable=False),
        sa.Column("next_retry_at", ledgerflow.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("error_type", sa.String(length=40), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("cutoff_at", ledgerflow.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("profile", sa.String(length=20), nullable=False),
        sa.Column("destination", sa.String(length=500), nullable=False),
        sa.Column("lock_token", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("lock_expires_at", ledgerflow.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("reservation", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=False),
        sa.Column("files", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=False),
        sa.Column("manifest", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=True),
        sa.Column("entry_count", sa.Integer(), server_default="0", nullable=False),
        sa.Column("line_count", sa.Integer(), server_default="0", nullable=False),
        sa.Column("totals", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=False),
        sa.Column("created_at", ledgerflow.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", ledgerflow.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("completed_at", ledgerflow.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("duration_seconds", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_export_batches")),
        sa.UniqueConstraint("batch_key", name=op.f("uq_export_batches_batch_key")),
    )
    with op.batch_alter_table("export_batches", schema=None) as batch_op:
        batch_op.create_index("ix_export_batches_kind_date", ["kind", "batch_date"], unique=False)
        batch_op.create_index("ix_export_batches_state", ["state"], unique=False)

    op.create_table(
        "journal_entries",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("reference", sa.String(length=64), nullable=False),
        sa.Column("entry_date", sa.Date(), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("export_path", sa.String(length=10), nullable=False),
        sa.Column("status", sa.String(length=10), nullable=False),
        sa.Column("source", sa.String(length=20), nullable=False),
        sa.Column("reverses_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("created_at", ledgerflow.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", ledgerflow.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["reverses_id"],
            ["journal_entries.id"],
            name=op.f("fk_journal_entries_reverses_id_journal_entries"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_journal_entries")),
        sa.UniqueConstraint("reference", name=op.f("uq_journal_entries_reference")),
    )
    with op.batch_alter_table("journal_entries", schema=None) as batch_op:
        batch_op.create_index("ix_journal_entries_date", ["entry_date"], unique=False)

    op.create_table(
        "export_batch_entries",
        sa.Column("batch_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("entry_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("late", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.ForeignKeyConstraint(
            ["batch_id"],
            ["export_batches.id"],
            name=op.f("fk_export_batch_entries_batch_id_export_batches"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["entry_id"],
            ["journal_entries.id"],
            name=op.f("fk_export_batch_entries_entry_id_journal_entries"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("batch_id", "entry_id", name=op.f("pk_export_batch_entries")),
    )
    op.create_table(
        "export_logs",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("batch_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("batch_key", sa.String(length=100), nullable=True),
        sa.Column("action", sa.String(length=30), nullable=False),
        sa.Column("batch_date", sa.Date(), nullable=True),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("metadata", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=False),
        sa.Column("prev_hash", sa.String(length=64), nullable=False),
        sa.Column("row_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", ledgerflow.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["batch_id"],
            ["export_batches.id"],
            name=op.f("fk_export_logs_batch_id_export_batches"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_export_logs")),
    )
    with op.batch_alter_table("export_logs", schema=None) as batch_op:
        batch_op.create_index("ix_export_logs_batch", ["batch_id"], unique=False)
        batch_op.create_index(
            "uq_export_logs_delivery",
            ["batch_key", "action"],
            unique=True,
            sqlite_where=sa.text("action IN ('csv_generated', 'no_entries')"),
            postgresql_where=sa.text("action IN ('csv_generated', 'no_entries')"),
        )

    op.create_table(
        "export_queue",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("entry_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("export_path", sa.String(length=10), nullable=False),
        sa.Column("status", sa.String(length=12), nullable=False),
        sa.Column("batch_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("file_id", sa.Text(), nullable=True),
        sa.Column("file_link", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("queued_at", ledgerflow.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("exported_at", ledgerflow.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["batch_id"],
            ["export_batches.id"],
            name=op.f("fk_export_queue_batch_id_export_batches"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["entry_id"],
            ["journal_entries.id"],
            name=op.f("fk_export_queue_entry_id_journal_entries"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_export_queue")),
        sa.UniqueConstraint("entry_id", name=op.f("uq_export_queue_entry_id")),
    )
    with op.batch_alter_table("export_queue", schema=None) as batch_op:
        batch_op.create_index("ix_export_queue_batch", ["batch_id"], unique=False)
        batch_op.create_index("ix_export_queue_status_path", ["status", "export_path"], unique=False)

    op.create_table(
        "journal_lines",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("entry_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("line_no", sa.Integer(), nullable=False),
        sa.Column("account", sa.String(length=40), nullable=False),
        sa.Column("account_name", sa.String(length=100), nullable=False),
        sa.Column("debit_minor", sa.BigInteger(), nullable=False),
        sa.Column("credit_minor", sa.BigInteger(), nullable=False),
        sa.Column("tax_code", sa.String(length=40), nullable=True),
        sa.Column("memo", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["entry_id"],
            ["journal_entries.id"],
            name=op.f("fk_journal_lines_entry_id_journal_entries"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_journal_lines")),
        sa.UniqueConstraint("entry_id", "line_no", name="uq_journal_lines_entry_line"),
    )


def downgrade() -> None:
    op.drop_table("journal_lines")
    with op.batch_alter_table("export_queue", schema=None) as batch_op:
        batch_op.drop_index("ix_export_queue_status_path")
        batch_op.drop_index("ix_export_queue_batch")

    op.drop_table("export_queue")
    with op.batch_alter_table("export_logs", schema=None) as batch_op:
        batch_op.drop_index(
            "uq_export_logs_delivery",
            sqlite_where=sa.text("action IN ('csv_generated', 'no_entries')"),
            postgresql_where=sa.text("action IN ('csv_generated', 'no_entries')"),
        )
        batch_op.drop_index("ix_export_logs_batch")

    op.drop_table("export_logs")
    op.drop_table("export_batch_entries")
    with op.batch_alter_table("journal_entries", schema=None) as batch_op:
        batch_op.drop_index("ix_journal_entries_date")

    op.drop_table("journal_entries")
    with op.batch_alter_table("export_batches", schema=None) as batch_op:
        batch_op.drop_index("ix_export_batches_state")
        batch_op.drop_index("ix_export_batches_kind_date")

    op.drop_table("export_batches")
    op.drop_table("circuit_breakers")
