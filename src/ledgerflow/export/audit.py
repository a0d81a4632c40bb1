"""The export audit trail: `export_logs` is append-only and hash-chained.

Each row stores the SHA-256 of the previous row and `row_hash = sha256(prev_hash + content)`,
so editing or deleting any row breaks every hash after it. Appends are serialised (an
advisory lock on PostgreSQL, the write lock on SQLite) so the chain never forks.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import Connection, insert, select, text

from ledgerflow.db.database import Database
from ledgerflow.db.tables import export_logs

GENESIS = "0" * 64
_CHAIN_LOCK = 72_771_002


def _content(
    batch_key: str | None,
    action: str,
    batch_date: date | None,
    message: str,
    metadata: dict[str, Any],
    created_at: datetime,
) -> str:
    return json.dumps(
        {
            "batch_key": batch_key,
            "action": action,
            "batch_date": batch_date.isoformat() if batch_date else None,
            "message": message,
            "metadata": metadata,
            "created_at": created_at.astimezone(UTC).isoformat(),
        },
        sort_keys=True,
        ensure_ascii=False,
        separators=(",", ":"),
        default=str,
    )


def row_hash(prev_hash: str, content: str) -> str:
    return hashlib.sha256((prev_hash + content).encode()).hexdigest()


def append_log(
    db: Database,
    conn: Connection,
    *,
    action: str,
    message: str,
    batch_id: int | None = None,
    batch_key: str | None = None,
    batch_date: date | None = None,
    metadata: dict[str, Any] | None = None,
) -> int:
    """Append one audit row inside the caller's transaction; returns its id."""
    if not db.is_sqlite:
        conn.execute(text(f"SELECT pg_advisory_xact_lock({_CHAIN_LOCK})"))
    prev = conn.execute(select(export_logs.c.row_hash).order_by(export_logs.c.id.desc()).limit(1)).scalar()
    prev = prev or GENESIS
    metadata = json.loads(json.dumps(metadata or {}, default=str, ensure_ascii=False))
    now = datetime.now(UTC)
    digest = row_hash(prev, _content(batch_key, action, batch_date, message, metadata, now))
    return int(
        conn.execute(
            insert(export_logs)
            .values(
                batch_id=batch_id,
                batch_key=batch_key,
                action=action,
                batch_date=batch_date,
                message=message,
                metadata=metadata,
                prev_hash=prev,
                row_hash=digest,
                created_at=now,
            )
            .returning(export_logs.c.id)
        ).scalar_one()
    )


@dataclass(frozen=True)
class ChainReport:
    rows: int
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_chain(db: Database) -> ChainReport:
    """Recompute every hash; report the first row of each break."""
    problems: list[str] = []
    prev = GENESIS
    count = 0
    with db.read(transaction=True) as conn:  # the rows come through a server-side cursor
        rows = conn.execution_options(yield_per=2000).execute(select(export_logs).order_by(export_logs.c.id))
        for r in rows:
            count += 1
            if r.prev_hash != prev:
                problems.append(f"export_logs row {r.id}: prev_hash does not match row before it")
            expected = row_hash(
                r.prev_hash,
                _content(r.batch_key, r.action, r.batch_date, r.message, r.metadata, r.created_at),
            )
            if expected != r.row_hash:
                problems.append(f"export_logs row {r.id} ({r.action} {r.batch_key}): content was altered")
            prev = r.row_hash
    return ChainReport(count, problems)
