"""SQLite job search index kept off the enqueue path: an FTS5 trigram table filled behind a mark.

`job_search` holds, per job, the case-folded JSON text of args and kwargs (detail=none: which
jobs hold a trigram, not where). Enqueue does not touch it: `engine/search.index_pending`
(run by each worker's maintenance loop) indexes the jobs above `job_search_mark.indexed_to`
in chunks and moves the mark; a search looks up the index for the jobs up to the mark and
scans the few above it. Errors change after insert: `job_error_search` holds the case-folded
errors of failed jobs, and a trigger on a change of `errors` (a failure, never an enqueue)
notes the job in `job_search_dirty`, which a search reads as candidates and the indexer
re-indexes. A deleted job leaves both indexes by trigger (deletes are not on the enqueue path).

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
    for name in ("job_search", "job_error_search"):
        op.execute(
            f"CREATE VIRTUAL TABLE {name} USING fts5(body, detail=none, tokenize='trigram case_sensitive 1')"
        )
    op.execute(
        "CREATE TABLE job_search_mark (one INTEGER PRIMARY KEY CHECK (one = 1), indexed_to INTEGER NOT NULL)"
    )
    op.execute("INSERT INTO job_search_mark (one, indexed_to) VALUES (1, 0)")
    op.execute("CREATE TABLE job_search_dirty (id INTEGER PRIMARY KEY)")
    op.execute(
        "CREATE TRIGGER jobs_errors_changed AFTER UPDATE OF errors ON jobs WHEN new.errors IS NOT old.errors "
        "BEGIN INSERT OR IGNORE INTO job_search_dirty (id) VALUES (new.id); END"
    )
    op.execute(
        "CREATE TRIGGER jobs_leave_search AFTER DELETE ON jobs BEGIN "
        "DELETE FROM job_search WHERE rowid = old.id; DELETE FROM job_error_search WHERE rowid = old.id; "
        "DELETE FROM job_search_dirty WHERE id = old.id; END"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    op.execute("DROP TRIGGER IF EXISTS jobs_leave_search")
    op.execute("DROP TRIGGER IF EXISTS jobs_errors_changed")
    for name in ("job_search_dirty", "job_search_mark", "job_error_search", "job_search"):
        op.execute(f"DROP TABLE IF EXISTS {name}")
