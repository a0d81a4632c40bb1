"""Receipts: IMAP scan cursors, content-addressed receipts with their drafts, and their sources.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import ledgerflow.db.types

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "mail_cursors",
        sa.Column("mailbox", sa.String(length=500), nullable=False),
        sa.Column("uid_validity", sa.BigInteger(), nullable=False),
        sa.Column("last_uid", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", ledgerflow.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("mailbox", name=op.f("pk_mail_cursors")),
    )
    op.create_table(
        "receipts",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("content_type", sa.String(length=100), nullable=False),
        sa.Column("extension", sa.String(length=10), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("original_name", sa.String(length=300), nullable=False),
        sa.Column("status", sa.String(length=10), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("text", sa.Text(), nullable=True),
        sa.Column("vendor", sa.String(length=300), nullable=True),
        sa.Column("receipt_date", sa.Date(), nullable=True),
        sa.Column("currency", sa.String(length=3), nullable=True),
        sa.Column("total_minor", sa.BigInteger(), nullable=True),
        sa.Column("tax_minor", sa.BigInteger(), nullable=True),
        sa.Column("tax_rate", sa.Integer(), nullable=True),
        sa.Column("confidence", sa.Float(), nullable=True),
        sa.Column("expense_account", sa.String(length=100), nullable=True),
        sa.Column("duplicate_of", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("entry_reference", sa.String(length=64), nullable=True),
        sa.Column("filed_name", sa.String(length=500), nullable=True),
        sa.Column("filed_id", sa.String(length=500), nullable=True),
        sa.Column("filed_link", sa.Text(), nullable=True),
        sa.Column("created_at", ledgerflow.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", ledgerflow.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["duplicate_of"], ["receipts.id"], name=op.f("fk_receipts_duplicate_of_receipts")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_receipts")),
        sa.UniqueConstraint("sha256", name=op.f("uq_receipts_sha256")),
    )
    with op.batch_alter_table("receipts", schema=None) as batch_op:
        batch_op.create_index("ix_receipts_date_total", ["receipt_date", "total_minor"], unique=False)
        batch_op.create_index("ix_receipts_status", ["status"], unique=False)

    op.create_table(
        "receipt_sources",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("receipt_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("mailbox", sa.String(length=500), nullable=False),
        sa.Column("uid_validity", sa.BigInteger(), nullable=False),
        sa.Column("uid", sa.BigInteger(), nullable=False),
        sa.Column("part", sa.Integer(), nullable=False),
        sa.Column("message_id", sa.String(length=500), nullable=True),
        sa.Column("sender", sa.String(length=500), nullable=True),
        sa.Column("subject", sa.Text(), nullable=True),
        sa.Column("sent_at", ledgerflow.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("created_at", ledgerflow.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["receipt_id"],
            ["receipts.id"],
            name=op.f("fk_receipt_sources_receipt_id_receipts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_receipt_sources")),
        sa.UniqueConstraint("mailbox", "uid_validity", "uid", "part", name="uq_receipt_sources_message_part"),
    )
    with op.batch_alter_table("receipt_sources", schema=None) as batch_op:
        batch_op.create_index("ix_receipt_sources_receipt", ["receipt_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("receipt_sources", schema=None) as batch_op:
        batch_op.drop_index("ix_receipt_sources_receipt")

    op.drop_table("receipt_sources")
    with op.batch_alter_table("receipts", schema=None) as batch_op:
        batch_op.drop_index("ix_receipts_status")
        batch_op.drop_index("ix_receipts_date_total")

    op.drop_table("receipts")
    op.drop_table("mail_cursors")
