"""PostgreSQL job search index off the hot path: trigram side tables filled behind a safe mark.

Migration 0012's GIN trigram index on `jobs` (`ix_jobs_search`) was half of an insert's server
time, and since a claim or a completion changes indexed columns (no HOT update), every claim
and every completion added GIN entries too. It is dropped. In its place, as SQLite's 0015:
`job_search` (id, JSON text of args and kwargs) and `job_error_search` (id, JSON text of
errors), each with a GIN trigram index, filled by the workers' maintenance loop
(`engine/search.index_pending`) up to `job_search_mark.indexed_to`. Ids are not committed in
id order on PostgreSQL, so the mark only moves to a `target` (the id sequence's last value)
once every transaction open when the target was read (`waits_for`, their virtual transaction
ids) has ended: no id at or below the mark can commit afterwards (db/postgres.py,
`index_jobs`). A change of `errors` (a failure, never an enqueue, claim or completion) notes
the job in `job_search_dirty` by trigger; a deleted job leaves both side tables by a
statement-level trigger. Nothing is backfilled here: the indexer fills the side tables from
the jobs above the mark (0), and a search scans the jobs above the mark meanwhile, so the
migration holds writers for a moment only (docs/operations.md).

The trigger functions are made with CREATE OR REPLACE: a restore of an older backup replaces
the tables it holds and drops the search tables it does not (backup/snapshot.py), but leaves
functions. SQLite: nothing (its FTS5 index of 0015 stays).

Revision ID: 0018
Revises: 0017
Create Date: 2026-11-30
"""

from __future__ import annotations

from alembic import op
from sqlalchemy import text

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None

#: Migration 0012's index, made again by the downgrade.
OLD_INDEX = (
    "CREATE INDEX ix_jobs_search ON jobs USING gin "
    "((args::text) gin_trgm_ops, (kwargs::text) gin_trgm_ops, (errors::text) gin_trgm_ops)"
)


def _trigrams() -> bool:
    return bool(op.get_bind().execute(text("SELECT 1 FROM pg_extension WHERE extname = 'pg_trgm'")).scalar())


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        return
    op.execute("CREATE TABLE job_search (id bigint PRIMARY KEY, body text NOT NULL)")
    op.execute("CREATE TABLE job_error_search (id bigint PRIMARY KEY, body text NOT NULL)")
    op.execute("CREATE TABLE job_search_dirty (seq bigserial PRIMARY KEY, id bigint NOT NULL)")
    op.execute(
        "CREATE TABLE job_search_mark (one integer PRIMARY KEY CHECK (one = 1), "
        "indexed_to bigint NOT NULL, target bigint NOT NULL, waits_for text[] NOT NULL)"
    )
    op.execute("INSERT INTO job_search_mark (one, indexed_to, target, waits_for) VALUES (1, 0, 0, '{}')")
    if _trigrams():
        op.execute("CREATE INDEX ix_job_search_body ON job_search USING gin (body gin_trgm_ops)")
        op.execute("CREATE INDEX ix_job_error_search_body ON job_error_search USING gin (body gin_trgm_ops)")
    op.execute(
        "CREATE OR REPLACE FUNCTION ledgerflow_job_errors_changed() RETURNS trigger LANGUAGE plpgsql AS $$ "
        "BEGIN INSERT INTO job_search_dirty (id) VALUES (NEW.id); RETURN NULL; END $$"
    )
    op.execute(
        "CREATE TRIGGER jobs_errors_changed AFTER UPDATE OF errors ON jobs FOR EACH ROW "
        "WHEN (OLD.errors IS DISTINCT FROM NEW.errors) EXECUTE FUNCTION ledgerflow_job_errors_changed()"
    )
    op.execute(
        "CREATE OR REPLACE FUNCTION ledgerflow_jobs_leave_search() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        "DELETE FROM job_search WHERE id IN (SELECT id FROM gone); "
        "DELETE FROM job_error_search WHERE id IN (SELECT id FROM gone); RETURN NULL; END $$"
    )
    op.execute(
        "CREATE TRIGGER jobs_leave_search AFTER DELETE ON jobs REFERENCING OLD TABLE AS gone "
        "FOR EACH STATEMENT EXECUTE FUNCTION ledgerflow_jobs_leave_search()"
    )
    op.execute("DROP INDEX IF EXISTS ix_jobs_search")


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        return
    if _trigrams():
        op.execute(OLD_INDEX)
    op.execute("DROP TRIGGER IF EXISTS jobs_leave_search ON jobs")
    op.execute("DROP TRIGGER IF EXISTS jobs_errors_changed ON jobs")
    op.execute("DROP FUNCTION IF EXISTS ledgerflow_jobs_leave_search()")
    op.execute("DROP FUNCTION IF EXISTS ledgerflow_job_errors_changed()")
    for name in ("job_search_mark", "job_search_dirty", "job_error_search", "job_search"):
        op.execute(f"DROP TABLE IF EXISTS {name}")
