"""SQLite job search index kept off the enqueue path: an FTS5 trigram table filled behind a mark.

`job_search` holds, per job, the case-folded JSON text of args and kwargs (detail=none: which
jobs hold a trigram, not where). Enqueue does not touch it: `engine/search.index_pending`
(run by each worker's maintenance loop) indexes the jobs above `job_search_mark.indexed_to`
in chunks and moves the mark; a search looks up the index for the jobs up to the mark and
scans the few above it. A deleted job leaves the index by trigger (deletes are not on the
enqueue path). Errors are not in it (they change after insert): a partial index on the jobs
that have any (`errors <> '[]'`, which an insert never enters) lets a search read only those.

PostgreSQL: nothing (its GIN trigram index of migration 0012 stays).

Revision ID: 0015
Revises: 0013
Create Date: 2026-11-30
"""

from __future__ import annotations

from alembic import op

revision = "0015"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    op.execute(
        "CREATE VIRTUAL TABLE job_search USING fts5(body, detail=none, tokenize='trigram case_sensitive 1')"
    )
    op.execute(
        "CREATE TABLE job_search_mark (one INTEGER PRIMARY KEY CHECK (one = 1), indexed_to INTEGER NOT NULL)"
    )
    op.execute("INSERT INTO job_search_mark (one, indexed_to) VALUES (1, 0)")
    op.execute(
        "CREATE TRIGGER jobs_leave_search AFTER DELETE ON jobs "
        "BEGIN DELETE FROM job_search WHERE rowid = old.id; END"
    )
    op.execute("CREATE INDEX ix_jobs_with_errors ON jobs (id) WHERE errors <> '[]'")


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    op.execute("DROP INDEX IF EXISTS ix_jobs_with_errors")
    op.execute("DROP TRIGGER IF EXISTS jobs_leave_search")
    op.execute("DROP TABLE IF EXISTS job_search_mark")
    op.execute("DROP TABLE IF EXISTS job_search")
