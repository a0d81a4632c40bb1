"""Snoozes counted apart from attempts; on SQLite, ids that are never reused after pruning.

`jobs.snoozes` counts the attempts that ended in a snooze: they no longer raise
`max_attempts`, and past `LEDGERFLOW_MAX_SNOOZES` the job fails.

SQLite gives a new row max(rowid) + 1 unless the table is declared AUTOINCREMENT, so once the
newest jobs were pruned their ids came back, and a job id kept outside (a log, a ticket, an
alert) could name another job. The tables whose ids are seen outside are rebuilt with
AUTOINCREMENT (batch mode copies rows and indexes; `ledgerflow.db.migrate` runs SQLite
migrations with foreign keys off, as SQLite's table rebuild procedure requires, and checks
them before committing). PostgreSQL sequences never hand an id out twice: nothing to do there.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

#: Tables whose ids are shown or referenced outside the database (pages, API paging, alerts).
NEVER_REUSED = ("jobs", "job_executions", "schedule_fires", "export_batches", "alerts")


def upgrade() -> None:
    op.add_column("jobs", sa.Column("snoozes", sa.Integer(), server_default="0", nullable=False))
    if op.get_bind().dialect.name != "sqlite":
        return
    for table in NEVER_REUSED:
        # copying the rows into the new table records their largest id in sqlite_sequence
        with op.batch_alter_table(table, recreate="always", table_kwargs={"sqlite_autoincrement": True}):
            pass


def downgrade() -> None:
    # AUTOINCREMENT stays on SQLite: ids that are never reused harm no earlier revision
    op.drop_column("jobs", "snoozes")
