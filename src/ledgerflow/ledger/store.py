"""LedgerStore: record entries (with their export queue rows) and read them back.

The ledger knows nothing of file layouts or jobs: the composition root (`App`) hands it
`checks` (each refuses an entry the configured export could never deliver) and
`on_immediate` (queues the export of `immediate` entries inside the recording transaction).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, delete, exc, exists, func, insert, select

from ledgerflow.db.database import Database
from ledgerflow.db.tables import (
    export_batch_entries,
    export_batches,
    export_queue,
    journal_entries,
    journal_lines,
)
from ledgerflow.errors import BadInput, Conflict, NotFound
from ledgerflow.ledger.dates import today_in
from ledgerflow.ledger.entries import Entry, Line, Problems, check_built_entry, parse_entry, reversal_of
from ledgerflow.ledger.importers import read_entries
from ledgerflow.ledger.money import from_minor, to_minor

#: Refuses (BadInput, naming the entry) an entry the configured export could never deliver.
EntryCheck = Callable[[Entry], None]
#: Queues the export of newly recorded `immediate` entries (their ids), in the same transaction.
ImmediateHook = Callable[[Connection, list[int]], None]


class LedgerStore:
    def __init__(
        self,
        db: Database,
        *,
        timezone: str,
        checks: Sequence[EntryCheck] = (),
        on_immediate: ImmediateHook | None = None,
        wake: Callable[[], None] | None = None,
    ) -> None:
        self.db = db
        self.timezone = timezone
        self.checks = tuple(checks)
        self.on_immediate = on_immediate
        self.wake = wake

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
        """All or nothing: every invalid entry or duplicate reference is reported, none stored."""
        items = list(entries)
        problems = Problems()
        parsed = []
        for n, item in enumerate(items, 1):
            where = "entry" if len(items) == 1 else f"item {n}"
            entry = problems.attempt(_entry_from, item, where)
            if entry is not None:
                parsed.append(("", entry))
        return self._record(parsed, problems, upsert, source, connection)

    def import_file(self, path: str | Path, *, upsert: bool = False) -> list[Entry]:
        """Record every entry of a JSON, JSON-lines or CSV file; every problem is reported with
        its place in the file, and nothing is stored unless all of it is valid."""
        problems = Problems()
        found = read_entries(Path(path), problems)
        return self._record([(f.place, f.entry) for f in found], problems, upsert, "import", None)

    def _record(
        self,
        located: list[tuple[str, Entry]],
        problems: Problems,
        upsert: bool,
        source: str,
        connection: Connection | None,
    ) -> list[Entry]:
        first: dict[str, str] = {}
        for place, entry in located:
            if entry.reference in first:
                problems.add(f"{place + ': ' if place else ''}reference {entry.reference} appears twice")
                continue
            first[entry.reference] = place
            for check in self.checks:
                problems.attempt(check, entry, place=place)
        entries = [entry for _, entry in located]
        places = dict(first)

        def insert_all(conn: Connection) -> list[Entry]:
            return self._insert(conn, entries, places, problems, upsert, source)

        if connection is not None:
            return insert_all(connection)
        try:
            stored = self.db.run(insert_all)
        except exc.IntegrityError:  # a concurrent writer recorded the same reference first
            raise BadInput(
                "an entry with one of these references was recorded concurrently; nothing stored"
            ) from None
        if self.wake is not None and any(e.export_path == "immediate" for e in stored):
            self.wake()
        return stored

    def _insert(
        self,
        conn: Connection,
        entries: list[Entry],
        places: dict[str, str],
        problems: Problems,
        upsert: bool,
        source: str,
    ) -> list[Entry]:
        replaced = self._to_replace(conn, entries, places, problems, upsert)
        if not entries:
            return []
        if replaced:
            conn.execute(delete(journal_entries).where(journal_entries.c.id.in_(replaced)))
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
        immediate = [int(i) for i, e in zip(ids, entries, strict=True) if e.export_path == "immediate"]
        if immediate and self.on_immediate is not None:
            self.on_immediate(conn, immediate)
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

    def _to_replace(
        self,
        conn: Connection,
        entries: list[Entry],
        places: dict[str, str],
        problems: Problems,
        upsert: bool,
    ) -> list[int]:
        """Ids of stored entries that `upsert` replaces; raises (nothing stored) for every
        reference already recorded without upsert, or already in the books."""
        q, e = export_queue, journal_entries
        delivered = exists().where(
            export_batch_entries.c.entry_id == e.c.id,
            export_batch_entries.c.batch_id == export_batches.c.id,
            export_batches.c.state == "completed",
        )
        rows = conn.execute(
            select(
                e.c.id, e.c.reference, q.c.status, q.c.batch_id, q.c.exported_at, delivered.label("delivered")
            )
            .select_from(e.outerjoin(q, q.c.entry_id == e.c.id))
            .where(e.c.reference.in_([entry.reference for entry in entries]))
        ).all()
        conflicts = []
        for row in rows:
            place = places.get(row.reference, "")
            prefix = f"{place}: " if place else ""
            if not upsert:
                problems.add(
                    f"{prefix}reference {row.reference} is already recorded (use upsert to replace an "
                    f"entry that never reached the books)"
                )
            elif not _may_replace(row):
                conflicts.append(f"{prefix}{_why_not_replaceable(row)}")
        problems.raise_if_any()
        if conflicts:
            raise Conflict("; ".join(conflicts) + " (nothing stored)")
        return [int(row.id) for row in rows]

    def reverse(self, reference: str, on: date | None = None) -> Entry:
        """Record the entry that cancels `reference` (queued for the next batch); never edits it.

        Only an entry that reached the books (exported) is reversed; one that did not is
        corrected with an upsert. The reversal is dated `on` (default today), never before
        the original.
        """
        original = self.get(reference)
        status = self.export_status(reference)
        with self.db.read() as conn:
            already = conn.execute(
                select(journal_entries.c.reference).where(journal_entries.c.reverses_id == original.id)
            ).scalar()
        if already:
            raise Conflict(f"{reference} was already reversed by {already}")
        if status["status"] != "completed":
            raise Conflict(_not_in_the_books(reference, status))
        day = on or today_in(self.timezone)
        if day < original.date:
            raise BadInput(
                f"a reversal of {reference} cannot be dated {day.isoformat()}, before the entry itself "
                f"({original.date.isoformat()}); give a date on or after {original.date.isoformat()}"
            )
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
                # quotient and remainder by 10^9 (truncated): SQLite's SUM stops at 2^63, and an
                # entry of up to 1,000 lines of the largest amount goes past it
                func.sum(journal_lines.c.debit_minor // _SPLIT).label("debit_high"),
                func.sum(journal_lines.c.debit_minor % _SPLIT).label("debit_low"),
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
            minor = int(r.pop("debit_high")) * _SPLIT + int(r.pop("debit_low"))
            r["debit_total"] = str(from_minor(minor, r["currency"]))
        return rows


#: Amounts are summed in SQL as quotient and remainder by this (see `LedgerStore.list`).
_SPLIT = 10**9


def _entry_from(item: Entry | Mapping[str, Any], where: str) -> Entry:
    return check_built_entry(item) if isinstance(item, Entry) else parse_entry(item, where)


def _may_replace(row: Any) -> bool:
    """Not exported, not in a batch being exported, or held back and never delivered."""
    if row.delivered or row.exported_at is not None or row.batch_id is not None:
        return False
    return row.status in ("queued", "failed", None)


def _why_not_replaceable(row: Any) -> str:
    if row.delivered or row.exported_at is not None or row.status == "completed":
        return f"reference {row.reference} is already exported; record a reversal instead"
    return f"reference {row.reference} is in an export batch being delivered now; try again when it ends"


def _not_in_the_books(reference: str, status: dict[str, Any]) -> str:
    if status["status"] == "failed":
        return (
            f"{reference} was held back from the export and never reached the books "
            f"({status.get('error') or 'no reason recorded'}); correct it with an upsert "
            f"(`entries import --upsert`) instead of reversing it"
        )
    if status["status"] == "processing" or status.get("batch_id") is not None:
        return f"{reference} is being exported right now; reverse it once its batch has completed"
    return (
        f"{reference} has not been exported yet, so it is not in the books; correct it with an "
        f"upsert (`entries import --upsert`) instead of reversing it"
    )


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
