"""Circuit breakers: the half-open trial is a lease with an expiry (a crashed trial ends).

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import ledgerflow.db.types

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("circuit_breakers") as batch:
        batch.add_column(
            sa.Column("trial_expires_at", ledgerflow.db.types.UTCDateTime(timezone=True), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("circuit_breakers") as batch:
        batch.drop_column("trial_expires_at")
