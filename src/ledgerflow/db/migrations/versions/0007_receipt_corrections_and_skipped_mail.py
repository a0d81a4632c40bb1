"""Receipts: corrections keep what was read; skipped mail is recorded with its reason.

* receipts.tax_code (set by a correction), account_note (rule, learned or default account),
  read_vendor / read_date / read_total_minor (the values read, compared for duplicates after
  a person corrected the booked ones), indexed by (read_date, read_total_minor); vendor and
  read_vendor indexed for the accounts learned per vendor.
* mail_skipped: one row per message or attachment that did not become a receipt.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import ledgerflow.db.types

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("receipts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("tax_code", sa.String(length=40), nullable=True))
        batch_op.add_column(sa.Column("account_note", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("read_vendor", sa.String(length=300), nullable=True))
        batch_op.add_column(sa.Column("read_date", sa.Date(), nullable=True))
        batch_op.add_column(sa.Column("read_total_minor", sa.BigInteger(), nullable=True))
        batch_op.create_index("ix_receipts_read_date_total", ["read_date", "read_total_minor"], unique=False)
        batch_op.create_index("ix_receipts_vendor", ["vendor"], unique=False)
        batch_op.create_index("ix_receipts_read_vendor", ["read_vendor"], unique=False)
    op.execute(
        "UPDATE receipts SET read_vendor = vendor, read_date = receipt_date, read_total_minor = total_minor"
    )
    op.create_table(
        "mail_skipped",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("mailbox", sa.String(length=500), nullable=False),
        sa.Column("uid_validity", sa.BigInteger(), nullable=False),
        sa.Column("uid", sa.BigInteger(), nullable=False),
        sa.Column("part", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=300), nullable=True),
        sa.Column("content_type", sa.String(length=100), nullable=True),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("message_id", sa.String(length=500), nullable=True),
        sa.Column("sender", sa.String(length=500), nullable=True),
        sa.Column("subject", sa.Text(), nullable=True),
        sa.Column("sent_at", ledgerflow.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("created_at", ledgerflow.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_mail_skipped")),
        sa.UniqueConstraint("mailbox", "uid_validity", "uid", "part", name="uq_mail_skipped_message_part"),
    )


def downgrade() -> None:
    op.drop_table("mail_skipped")
    with op.batch_alter_table("receipts", schema=None) as batch_op:
        batch_op.drop_index("ix_receipts_read_vendor")
        batch_op.drop_index("ix_receipts_vendor")
        batch_op.drop_index("ix_receipts_read_date_total")
        batch_op.drop_column("read_total_minor")
        batch_op.drop_column("read_date")
        batch_op.drop_column("read_vendor")
        batch_op.drop_column("account_note")
        batch_op.drop_column("tax_code")
