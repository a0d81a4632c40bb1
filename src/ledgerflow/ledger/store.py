"""LedgerStore: record entries (with their export queue rows) and read them back."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, delete, exc, func, insert, select

from ledgerflow.db.tables import export_queue, journal_entries, journal_lines
from ledgerflow.errors import BadInput, Conflict, NotFound
from ledgerflow.ledger.entries import Entry, Line, parse_entry, reversal_of
from ledgerflow.ledger.money import from_minor, to_minor

if TYPE_CHECKING:
    from ledgerflow.app import App


class LedgerStore:
    def __init__(self, app: App) -> None:
        self.app = app
        self.db = app.db

    # ---------------------------------------------------------------- write
    def record(
        self,
        entry: Entry | Mapping[str, Any],
        *,
        upsert: bool = False,
        source: str = "api",
        connection: Connection | None = None,
    ) -> Entry:
        """Validate and store one entry, queued for export in the same transaction."""
        return self.record_many([entry], upsert=upsert, source=source, connection=connection)[0]

    def record_many(
        self,
        entries: Iterable[Entry | Mapping[str, Any]],
        *,
        upsert: bool = False,
        source: str = "api",
        connection: Connection | None = None,
    ) -> list[Entry]:
        """All or nothing: one invalid entry or duplicate reference stores none of them."""
        parsed = [e if isinstance(e, Entry) else parse_entry(e) for e in entries]
        refs = [e.reference for e in parsed]
        if len(set(refs)) != len(refs):
            raise BadInput(f"reference {next(r for r in refs if refs.count(r) > 1)} appears twice")
        self.check_exportable(parsed)
        if connection is not None:
            return self._insert(connection, parsed, upsert, source)
        try:
            stored = self.db.run(lambda conn: self._insert(conn, parsed, upsert, source))
        except exc.IntegrityError:  # a concurrent writer recorded the same reference first
            raise BadInput(
                "an entry with one of these references was recorded concurrently; nothing stored"
            ) from None
        if any(e.export_path == "immediate" for e in stored):
            self.app._wake_local()
        return stored

    def import_file(self, path: str | Path, *, upsert: bool = False) -> list[Entry]:
        from ledgerflow.ledger.importers import read_entries

        return self.record_many(read_entries(Path(path)), upsert=upsert, source="import")

    def check_exportable(self, entries: Sequence[Entry]) -> None:
        """Refuse entries the configured export profile could never deliver (encoding, yen, sign)."""
        from ledgerflow.export.profiles import check_entry

        profile = self.app.export_profile
        for entry in entries:
            check_entry(entry, profile)

    def _insert(self, conn: Connection, entries: list[Entry], upsert: bool, source: str) -> list[Entry]:
        if not entries:
            return []
        existing = {
            r.reference: r
            for r in conn.execute(
                select(
                    journal_entries.c.id,
                    journal_entries.c.reference,
                    export_queue.c.status,
                    export_queue.c.batch_id,
                )
                .select_from(
                    journal_entries.outerjoin(export_queue, export_queue.c.entry_id == journal_entries.c.id)
                )
                .where(journal_entries.c.reference.in_([e.reference for e in entries]))
            )
        }
        for ref, row in existing.items():
            if not upsert:
                raise BadInput(
                    f"reference {ref} is already recorded (nothing stored; use upsert to replace an "
                    f"entry that has not been exported)"
                )
            if row.status != "queued" or row.batch_id is not None:
                raise Conflict(
                    f"reference {ref} is already in an export batch or exported; record a reversal "
                    f"instead (nothing stored)"
                )
        if existing:
            conn.execute(
                delete(journal_entries).where(journal_entries.c.id.in_([r.id for r in existing.values()]))
            )
        now = datetime.now(UTC)
        ids = (
            conn.execute(
                insert(journal_entries).returning(journal_entries.c.id, sort_by_parameter_order=True),
                [
                    {
                        "reference": e.reference,
                        "entry_date": e.date,
                        "description": e.description,
                        "currency": e.currency,
                        "export_path": e.export_path,
                        "status": "posted",
                        "source": e.source if e.source != "api" else source,
                        "reverses_id": e.reverses_id,
                        "created_at": now,
                        "updated_at": now,
                    }
                    for e in entries
                ],
            )
            .scalars()
            .all()
        )
        conn.execute(
            insert(journal_lines),
            [
                {
                    "entry_id": entry_id,
                    "line_no": n,
                    "account": ln.account,
                    "account_name": ln.account_name,
                    "debit_minor": to_minor(ln.debit, e.currency),
                    "credit_minor": to_minor(ln.credit, e.currency),
                    "tax_code": ln.tax_code,
                    "memo": ln.memo,
                }
                for entry_id, e in zip(ids, entries, strict=True)
                for n, ln in enumerate(e.lines, 1)
            ],
        )
        conn.execute(
            insert(export_queue),
            [
                {"entry_id": entry_id, "export_path": e.export_path, "status": "queued", "queued_at": now}
                for entry_id, e in zip(ids, entries, strict=True)
            ],
        )
        immediate = [i for i, e in zip(ids, entries, strict=True) if e.export_path == "immediate"]
        if immediate:
            from ledgerflow.engine.jobs import JobSpec
            from ledgerflow.export.tasks import IMMEDIATE_TASK

            self.app.store.enqueue(
                conn,
                [
                    JobSpec(
                        task=IMMEDIATE_TASK,
                        args=(int(i),),
                        queue="exports",
                        priority=1,
                        max_attempts=4,
                        unique_key=f"export:immediate:{i}",
                    )
                    for i in immediate
                ],
            )
        return [
            Entry(
                **{
                    **e.__dict__,
                    "id": int(i),
                    "created_at": now,
                    "source": e.source if e.source != "api" else source,
                }
            )
            for i, e in zip(ids, entries, strict=True)
        ]

    def reverse(self, reference: str, on: date | None = None) -> Entry:
        """Record the entry that cancels `reference` (queued for the next batch); never edits it."""
        original = self.get(reference)
        with self.db.read() as conn:
            already = conn.execute(
                select(journal_entries.c.reference).where(journal_entries.c.reverses_id == original.id)
            ).scalar()
        if already:
            raise Conflict(f"{reference} was already reversed by {already}")
        day = on or datetime.now(ZoneInfo(self.app.settings.timezone)).date()
        return self.record(reversal_of(original, day), source="reversal")

    # ---------------------------------------------------------------- read
    def get(self, reference: str) -> Entry:
        with self.db.read() as conn:
            row = conn.execute(
                select(journal_entries).where(journal_entries.c.reference == reference)
            ).first()
            if row is None:
                raise NotFound(f"unknown entry reference {reference!r}")
            lines = conn.execute(
                select(journal_lines)
                .where(journal_lines.c.entry_id == row.id)
                .order_by(journal_lines.c.line_no)
            ).all()
        return entry_from_rows(row, lines)

    def export_status(self, reference: str) -> dict[str, Any]:
        with self.db.read() as conn:
            row = conn.execute(
                select(export_queue)
                .join(journal_entries, journal_entries.c.id == export_queue.c.entry_id)
                .where(journal_entries.c.reference == reference)
            ).first()
        if row is None:
            raise NotFound(f"unknown entry reference {reference!r}")
        return dict(row._mapping)

    def list(
        self, *, limit: int = 50, offset: int = 0, status: str | None = None, since: date | None = None
    ) -> list[dict[str, Any]]:
        query = (
            select(
                journal_entries.c.id,
                journal_entries.c.reference,
                journal_entries.c.entry_date,
                journal_entries.c.description,
                journal_entries.c.currency,
                journal_entries.c.export_path,
                export_queue.c.status.label("export_status"),
                export_queue.c.batch_id,
                export_queue.c.file_link,
                func.coalesce(func.sum(journal_lines.c.debit_minor), 0).label("debit_minor"),
            )
            .select_from(
                journal_entries.join(export_queue, export_queue.c.entry_id == journal_entries.c.id).join(
                    journal_lines, journal_lines.c.entry_id == journal_entries.c.id
                )
            )
            .group_by(
                journal_entries.c.id, export_queue.c.status, export_queue.c.batch_id, export_queue.c.file_link
            )
            .order_by(journal_entries.c.id.desc())
            .limit(max(1, min(limit, 1000)))
            .offset(offset)
        )
        if status:
            query = query.where(export_queue.c.status == status)
        if since:
            query = query.where(journal_entries.c.entry_date >= since)
        with self.db.read() as conn:
            rows = [dict(r._mapping) for r in conn.execute(query)]
        for r in rows:
            r["debit_total"] = str(from_minor(int(r.pop("debit_minor")), r["currency"]))
        return rows


def entry_from_rows(row: Any, lines: Sequence[Any]) -> Entry:
    cur = row.currency
    return Entry(
        id=int(row.id),
        reference=row.reference,
        date=row.entry_date,
        description=row.description,
        currency=cur,
        export_path=row.export_path,
        status=row.status,
        source=row.source,
        reverses_id=row.reverses_id,
        created_at=row.created_at,
        lines=tuple(line_from_row(ln, cur) for ln in lines),
    )


def line_from_row(row: Any, currency: str) -> Line:
    """A journal line from a database row with `account … memo` and minor-unit amounts."""
    return Line(
        row.account,
        row.account_name,
        from_minor(row.debit_minor, currency),
        from_minor(row.credit_minor, currency),
        row.tax_code,
        row.memo,
    )
