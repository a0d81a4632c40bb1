"""SQLite: JSON columns declared `TEXT`, so that a document is stored exactly as encoded.

A column declared `JSON` has NUMERIC affinity (https://www.sqlite.org/datatype3.html): a
document that is a bare number was stored as a number, `1.0` as 1, `-0.0` as 0 and 2**63 as a
REAL (its last digits lost). `TEXT` affinity keeps the text as written.

The declared types are edited in place, by SQLite's own procedure for changes that leave
what is on disk valid (https://www.sqlite.org/lang_altertable.html#otheralter: writable
schema, schema version + 1, in the migration's transaction): no row is rewritten and every
index, trigger, foreign key and `sqlite_sequence` entry stays as it was, so writers are held
for a moment whatever the size. A table rebuild was measured and refused: besides copying
every row it would convert the numbers already stored into text with SQLite's 15 digits
(0.30000000000000004 -> '0.3'). Rows stored as numbers before this migration keep the value
they were stored with; the decoder (`backends.loads`, through SQLAlchemy's SQLite JSON type)
reads them as the numbers they are.

PostgreSQL: nothing (jsonb).

Revision ID: 0017
Revises: 0016
Create Date: 2026-11-30
"""

from __future__ import annotations

import re

from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None

#: Every JSON column of the schema at this revision.
JSON_COLUMNS = {
    "jobs": ("args", "kwargs", "errors", "result", "trace_context"),
    "job_executions": ("execution_metadata",),
    "workers": ("queues",),
    "job_limits": ("recent_starts",),
    "alerts": ("context", "delivery"),
    "job_schedules": ("args", "kwargs", "extra_holidays"),
    "export_batches": ("reservation", "files", "manifest", "totals"),
    "export_logs": ("metadata",),
}


def retyped(sql: str, columns: tuple[str, ...], old: str, new: str) -> str:
    """`CREATE TABLE` text `sql` with the declared type of each of `columns` changed from `old`
    to `new`; ValueError unless each is found declared `old` exactly once."""
    for column in columns:
        pattern = re.compile(rf'([(,]\s*"?{column}"?\s+){old}\b', re.IGNORECASE)
        sql, found = pattern.subn(rf"\g<1>{new}", sql)
        if found != 1:
            raise ValueError(f"column {column} declared {old} {found} times in {sql!r}")
    return sql


def _redeclare(old: str, new: str) -> None:
    conn = op.get_bind()
    if conn.dialect.name != "sqlite":
        return
    version = conn.exec_driver_sql("PRAGMA schema_version").scalar_one()
    conn.exec_driver_sql("PRAGMA writable_schema=ON")
    try:
        for table, columns in JSON_COLUMNS.items():
            where = "type = 'table' AND name = ?"
            sql = conn.exec_driver_sql(f"SELECT sql FROM sqlite_master WHERE {where}", (table,)).scalar_one()
            changed = retyped(sql, columns, old, new)
            conn.exec_driver_sql(f"UPDATE sqlite_master SET sql = ? WHERE {where}", (changed, table))
        conn.exec_driver_sql(f"PRAGMA schema_version={version + 1}")  # every connection rereads it
    finally:
        conn.exec_driver_sql("PRAGMA writable_schema=OFF")
    for table, columns in JSON_COLUMNS.items():  # the schema as SQLite now reads it
        declared = {row[1]: row[2] for row in conn.exec_driver_sql(f"PRAGMA table_xinfo({table})")}
        wrong = {c: declared.get(c) for c in columns if declared.get(c) != new}
        if wrong:
            raise RuntimeError(f"{table}: {wrong} not declared {new}")


def upgrade() -> None:
    _redeclare("JSON", "TEXT")


def downgrade() -> None:
    _redeclare("TEXT", "JSON")
