"""Search jobs by text and time: trigram indexes on the JSON text, indexes on the time columns.

PostgreSQL: one GIN index (pg_trgm) over `args::text`, `kwargs::text` and `errors::text`,
which answers `ILIKE '%term%'`. Where the pg_trgm extension is not available (it ships with
PostgreSQL's contrib package), the index is left out and the same searches scan the table.

SQLite: an FTS5 table with the trigram tokenizer, `jobs_search`, whose content is the jobs
table itself (no copy of the text is kept, only the index), kept in step by triggers on
insert, delete and update of the JSON columns.

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-30
"""

from __future__ import annotations

from alembic import op
from sqlalchemy import text

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

_COLUMNS = "args, kwargs, errors"
SQLITE_UP = [
    "CREATE VIRTUAL TABLE jobs_search USING fts5("
    f"{_COLUMNS}, content='jobs', content_rowid='id', tokenize='trigram')",
    "INSERT INTO jobs_search(jobs_search) VALUES ('rebuild')",
    "CREATE TRIGGER jobs_search_insert AFTER INSERT ON jobs BEGIN "
    f"INSERT INTO jobs_search(rowid, {_COLUMNS}) VALUES (new.id, new.args, new.kwargs, new.errors); END",
    "CREATE TRIGGER jobs_search_delete AFTER DELETE ON jobs BEGIN "
    f"INSERT INTO jobs_search(jobs_search, rowid, {_COLUMNS}) "
    "VALUES ('delete', old.id, old.args, old.kwargs, old.errors); END",
    "CREATE TRIGGER jobs_search_update AFTER UPDATE OF args, kwargs, errors ON jobs BEGIN "
    f"INSERT INTO jobs_search(jobs_search, rowid, {_COLUMNS}) "
    "VALUES ('delete', old.id, old.args, old.kwargs, old.errors); "
    f"INSERT INTO jobs_search(rowid, {_COLUMNS}) VALUES (new.id, new.args, new.kwargs, new.errors); END",
]
SQLITE_DOWN = [
    "DROP TRIGGER IF EXISTS jobs_search_update",
    "DROP TRIGGER IF EXISTS jobs_search_delete",
    "DROP TRIGGER IF EXISTS jobs_search_insert",
    "DROP TABLE IF EXISTS jobs_search",
]
POSTGRES_INDEX = (
    "CREATE INDEX ix_jobs_search ON jobs USING gin "
    "((args::text) gin_trgm_ops, (kwargs::text) gin_trgm_ops, (errors::text) gin_trgm_ops)"
)


def upgrade() -> None:
    op.create_index("ix_jobs_created_at", "jobs", ["created_at"])
    op.create_index("ix_jobs_finished_at", "jobs", ["finished_at"])
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        for statement in SQLITE_UP:
            op.execute(statement)
        return
    available = bind.execute(text("SELECT 1 FROM pg_available_extensions WHERE name = 'pg_trgm'")).scalar()
    if available:
        op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
        op.execute(POSTGRES_INDEX)


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for statement in SQLITE_DOWN:
            op.execute(statement)
    else:
        op.execute("DROP INDEX IF EXISTS ix_jobs_search")
    op.drop_index("ix_jobs_finished_at", table_name="jobs")
    op.drop_index("ix_jobs_created_at", table_name="jobs")
