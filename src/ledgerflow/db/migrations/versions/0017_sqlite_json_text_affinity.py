"""SQLite: JSON columns declared `TEXT`, so that a document is stored exactly as encoded.

A column declared `JSON` has NUMERIC affinity (https://www.sqlite.org/datatype3.html): a
document that is a bare number was stored as a number, `1.0` as 1, `-0.0` as 0 and 2**63 as a
REAL (its last digits lost). `TEXT` affinity keeps the text as written.

The declared types are edited in place, by SQLite's own procedure for a change of the schema
text (https://www.sqlite.org/lang_altertable.html#otheralter: writable schema, schema
version + 1, in the migration's transaction), so every index, trigger, FTS5 table, foreign
key and `sqlite_sequence` entry stays exactly as it was. Then the values NUMERIC affinity had
stored as numbers (rare: a document that is a bare number) are written back as the JSON text
of the number read (Python's shortest exact form), in one scan of each table: a TEXT column
holding an INTEGER or REAL fails `PRAGMA integrity_check` (which every backup snapshot runs).
A stored number keeps the value it was stored with (2**63 stored as a REAL stays that REAL's
value: what was lost cannot be recovered), and reads as it read before. An integer past a
REAL's range (10**400) was stored as an infinite REAL: it is written `1e999` (`-1e999`), JSON
that reads as that infinity again, not `json.dumps`'s `Infinity`, which is no JSON at all
(SQLite's `json_valid` refuses it) and which the downgrade would not store as a REAL again.

A table rebuild (the 12-step procedure, Alembic batch mode) was measured and refused: it
copies every row, converts the stored REALs to text with SQLite's 15 digits
(0.30000000000000004 -> 0.3), and batch mode drops the triggers of 0015 and the
AUTOINCREMENT of 0010 (docs/benchmarks.md, "SQLite JSON columns").

Downgrade: the columns declared `JSON` again, and the documents that are bare numbers stored
again as that affinity stores them (as the earlier version would have), for the same reason.

Were SQLite to refuse the edit (a connection set to SQLITE_DBCONFIG_DEFENSIVE: ledgerflow sets
no such thing), the migration fails inside its transaction and changes nothing.

PostgreSQL: nothing (jsonb).

Revision ID: 0017
Revises: 0016
Create Date: 2026-11-30
"""

from __future__ import annotations

import json
import math
import re

from alembic import op
from sqlalchemy.engine import Connection

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
        pattern = re.compile(rf'([(,]\s*"?{re.escape(column)}"?\s+){old}\b', re.IGNORECASE)
        sql, found = pattern.subn(rf"\g<1>{new}", sql)
        if found != 1:
            raise ValueError(f"column {column} declared {old} {found} times in {sql!r}")
    return sql


def _redeclare(conn: Connection, old: str, new: str) -> None:
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


def json_number(value: float) -> str:
    """The JSON text of a number NUMERIC affinity stored (an INTEGER or a REAL, maybe infinite)."""
    if math.isinf(value):
        return "1e999" if value > 0 else "-1e999"  # JSON whose value overflows to that infinity
    return json.dumps(value)


def _rewrite(conn: Connection, where: str, value: str) -> None:
    """Set each JSON column matching `where` to `value` (`{c}`: the column), one scan a table."""
    for table, columns in JSON_COLUMNS.items():
        quoted = [f'"{c}"' for c in columns]
        changes = ", ".join(
            f"{c} = CASE WHEN {where.format(c=c)} THEN {value.format(c=c)} ELSE {c} END" for c in quoted
        )
        matched = " OR ".join(where.format(c=c) for c in quoted)
        conn.exec_driver_sql(f"UPDATE {table} SET {changes} WHERE {matched}")


def upgrade() -> None:
    conn = op.get_bind()
    if conn.dialect.name != "sqlite":
        return
    _redeclare(conn, "JSON", "TEXT")
    raw = conn.connection.driver_connection
    assert raw is not None
    raw.create_function("ledgerflow_json_text", 1, json_number, deterministic=True)
    _rewrite(conn, "typeof({c}) IN ('integer', 'real')", "ledgerflow_json_text({c})")


def downgrade() -> None:
    conn = op.get_bind()
    if conn.dialect.name != "sqlite":
        return
    _redeclare(conn, "TEXT", "JSON")
    # a JSON document is a bare number if and only if it starts with a digit or a minus sign
    _rewrite(conn, "(typeof({c}) = 'text' AND {c} GLOB '[0-9-]*')", "{c}")
