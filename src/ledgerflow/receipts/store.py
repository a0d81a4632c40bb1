"""Receipts in the database and on disk: ingest (content-addressed), drafts, review, approval."""

from __future__ import annotations

import hashlib
import os
import secrets
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, and_, exc, func, insert, or_, select, update

from ledgerflow.db.tables import (
    journal_entries,
    journal_lines,
    mail_cursors,
    mail_skipped,
    receipt_sources,
    receipts,
)
from ledgerflow.db.types import storable_text
from ledgerflow.errors import BadInput, Conflict, NotFound
from ledgerflow.ledger.entries import Entry, Line
from ledgerflow.ledger.money import check_currency, format_amount, from_minor, parse_amount, to_minor
from ledgerflow.receipts.rules import fold, same_vendor

if TYPE_CHECKING:
    from ledgerflow.app import App
    from ledgerflow.receipts.parse import Reading

FILE_TASK = "ledgerflow.receipts.file"
#: received → draft (read with confidence) | review (needs a person) → approved | rejected
STATES = ("received", "draft", "review", "approved", "rejected")
#: Tax codes written on the entry's lines, from the currency and the rate (JCT10, VAT7).
TAX_CODE_PREFIX = {"JPY": "JCT"}


def tax_code_for(currency: str, rate: int | None) -> str | None:
    return f"{TAX_CODE_PREFIX.get(currency, 'VAT')}{rate}" if rate is not None else None


class LikelyDuplicate(Conflict):
    """Approving would book what looks like a receipt or entry already in the books."""

    exit_code = 2
    code = "likely_duplicate"


@dataclass(frozen=True)
class Receipt:
    id: int
    sha256: str
    content_type: str
    extension: str
    size: int
    original_name: str
    status: str
    reason: str | None
    vendor: str | None
    receipt_date: date | None
    currency: str | None
    total: Decimal | None
    tax: Decimal | None
    tax_rate: int | None
    confidence: float | None
    expense_account: str | None
    duplicate_of: int | None
    entry_reference: str | None
    filed_name: str | None
    filed_link: str | None
    created_at: datetime
    tax_code: str | None = None
    account_note: str | None = None

    @classmethod
    def from_row(cls, row: Any) -> Receipt:
        m = row._mapping
        currency = m["currency"]

        def money(minor: int | None) -> Decimal | None:
            return None if minor is None or currency is None else from_minor(minor, currency)

        return cls(
            **{k: m[k] for k in cls.__dataclass_fields__ if k in m and k not in ("total", "tax")},
            total=money(m["total_minor"]),
            tax=money(m["tax_minor"]),
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("total", "tax"):
            value = getattr(self, key)
            data[key] = format_amount(value, self.currency) if value is not None and self.currency else None
        data["receipt_date"] = self.receipt_date.isoformat() if self.receipt_date else None
        data["created_at"] = self.created_at.isoformat()
        return data


class ReceiptStore:
    def __init__(self, app: App) -> None:
        self.app = app
        self.db = app.db
        self.root = Path(app.settings.receipts_dir)

    # ------------------------------------------------------------ files
    def path(self, receipt: Receipt | Any) -> Path:
        """Where the file is kept: receipts_dir/ab/abcdef….ext (content-addressed)."""
        sha, ext = receipt.sha256, receipt.extension
        return self.root / sha[:2] / f"{sha}.{ext}"

    def keep_file(self, data: bytes, extension: str) -> str:
        """Store the bytes under their sha256 (fsynced, atomic, idempotent); returns the sha256."""
        sha = hashlib.sha256(data).hexdigest()
        final = self.root / sha[:2] / f"{sha}.{extension}"
        if final.exists() and final.stat().st_size == len(data):
            return sha
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f".{final.name}.{secrets.token_hex(4)}.tmp")
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
        return sha

    # ------------------------------------------------------------ ingest
    def ingest(
        self, conn: Connection, *, sha256: str, content_type: str, extension: str, size: int, name: str,
        source: dict[str, Any],
    ) -> tuple[int, bool]:  # fmt: skip
        """Record one attachment (in the caller's transaction); (receipt id, whether it is new).

        The same file from another message is the same receipt (sha256 is unique): the exact
        duplicate is merged and only its source is added.
        """
        now = datetime.now(UTC)
        existing = conn.execute(select(receipts.c.id).where(receipts.c.sha256 == sha256)).scalar()
        new = existing is None
        if new:
            try:
                with conn.begin_nested():
                    existing = conn.execute(
                        insert(receipts)
                        .values(
                            sha256=sha256,
                            content_type=content_type,
                            extension=extension,
                            size=size,
                            original_name=name[:300],
                            status="received",
                            created_at=now,
                            updated_at=now,
                        )
                        .returning(receipts.c.id)
                    ).scalar_one()
            except exc.IntegrityError:  # another scan (another mailbox) stored the same file first
                existing = conn.execute(select(receipts.c.id).where(receipts.c.sha256 == sha256)).scalar_one()
                new = False
        conn.execute(insert(receipt_sources).values(receipt_id=existing, created_at=now, **source))
        return int(existing), new

    def skip(self, conn: Connection, *, reason: str, size: int, **where: Any) -> None:
        """Record a message or attachment that is not a receipt (in the cursor's transaction)."""
        conn.execute(
            insert(mail_skipped).values(reason=reason, size=size, created_at=datetime.now(UTC), **where)
        )

    def skipped_count(self) -> int:
        with self.db.read() as conn:
            return int(conn.execute(select(func.count()).select_from(mail_skipped)).scalar_one())

    def skipped(self, limit: int = 100) -> list[dict[str, Any]]:
        """What mail did not become a receipt, newest first, with the reason."""
        query = select(mail_skipped).order_by(mail_skipped.c.id.desc()).limit(max(1, min(limit, 1000)))
        with self.db.read() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    def cursor(self, mailbox: str) -> tuple[int, int] | None:
        """(uid_validity, last_uid) of the last scan of `mailbox`."""
        with self.db.read() as conn:
            row = conn.execute(select(mail_cursors).where(mail_cursors.c.mailbox == mailbox)).first()
        return (int(row.uid_validity), int(row.last_uid)) if row else None

    def claim(self, conn: Connection, mailbox: str, uid_validity: int, uid: int) -> bool:
        """Move the cursor to `uid`, first thing in the transaction that stores that message.

        False when another scan of the mailbox already stored it: the guarded UPDATE waits for
        that scan's transaction (the row lock on PostgreSQL, the write lock on SQLite), then sees
        its cursor and matches nothing. Scans take UIDs in ascending order, so a cursor at or
        past `uid` means the message was stored.
        """
        values = {"uid_validity": uid_validity, "last_uid": uid, "updated_at": datetime.now(UTC)}
        behind = or_(mail_cursors.c.uid_validity != uid_validity, mail_cursors.c.last_uid < uid)
        guarded = update(mail_cursors).where(mail_cursors.c.mailbox == mailbox, behind).values(values)
        if conn.execute(guarded).rowcount == 1:
            return True
        if conn.execute(select(mail_cursors.c.mailbox).where(mail_cursors.c.mailbox == mailbox)).first():
            return False
        try:
            with conn.begin_nested():
                conn.execute(insert(mail_cursors).values(mailbox=mailbox, **values))
            return True
        except exc.IntegrityError:  # the first scan of this mailbox, raced by another
            return conn.execute(guarded).rowcount == 1

    # ------------------------------------------------------------ reading
    def get(self, receipt_id: int, conn: Connection | None = None) -> Receipt:
        if conn is None:
            with self.db.read() as fresh:
                return self.get(receipt_id, fresh)
        row = conn.execute(select(receipts).where(receipts.c.id == receipt_id)).first()
        if row is None:
            raise NotFound(f"no receipt {receipt_id}")
        return Receipt.from_row(row)

    def text(self, receipt_id: int) -> str | None:
        with self.db.read() as conn:
            return conn.execute(select(receipts.c.text).where(receipts.c.id == receipt_id)).scalar()

    def list(self, status: str | None = None, limit: int = 100) -> list[Receipt]:
        query = select(receipts).order_by(receipts.c.id.desc()).limit(max(1, min(limit, 1000)))
        if status:
            if status not in STATES:
                raise BadInput(f"unknown receipt status {status!r} (known: {', '.join(STATES)})")
            query = query.where(receipts.c.status == status)
        with self.db.read() as conn:
            return [Receipt.from_row(r) for r in conn.execute(query)]

    def counts(self) -> dict[str, int]:
        with self.db.read() as conn:
            rows = conn.execute(select(receipts.c.status, func.count()).group_by(receipts.c.status))
            return {r[0]: int(r[1]) for r in rows}

    def sources(self, receipt_id: int) -> list[dict[str, Any]]:
        with self.db.read() as conn:
            rows = conn.execute(
                select(receipt_sources)
                .where(receipt_sources.c.receipt_id == receipt_id)
                .order_by(receipt_sources.c.id)
            )
            return [dict(r._mapping) for r in rows]

    # ------------------------------------------------------------ processing
    def record_reading(
        self, receipt_id: int, text: str, reading: Reading, account: str, account_note: str
    ) -> Receipt:
        """Store what was read: a draft when it is complete (total, date, vendor) and confident
        enough, otherwise the review list with every reason; a likely duplicate of a receipt or
        a booked entry goes to review too."""
        minimum = self.app.settings.receipt_min_confidence
        problems = list(reading.problems)
        if reading.confidence < minimum:
            problems.insert(0, f"confidence {reading.confidence:.2f} < {minimum:.2f}")
        complete = reading.total is not None and reading.date is not None and bool(reading.vendor)
        currency = reading.currency or self.app.settings.receipt_currency  # always set by read_receipt
        total_minor = to_minor(reading.total, currency) if reading.total is not None else None
        values = {
            "text": text[:20000],
            "vendor": reading.vendor,
            "receipt_date": reading.date,
            "currency": currency,
            "total_minor": total_minor,
            "tax_minor": to_minor(reading.tax, currency) if reading.tax is not None else None,
            "tax_rate": reading.tax_rate,
            "confidence": reading.confidence,
            "expense_account": account,
            "account_note": account_note,
            "read_vendor": reading.vendor,
            "read_date": reading.date,
            "read_total_minor": total_minor,
        }
        with self.db.begin() as conn:
            duplicate = None
            if reading.date is not None and total_minor is not None:
                duplicate = self.likely_duplicate(
                    conn, receipt_id, reading.date, total_minor, currency, reading.vendor
                )
            if duplicate:
                problems.insert(0, duplicate[1])
            status = "draft" if complete and reading.confidence >= minimum and not duplicate else "review"
            values |= {
                "status": status,
                "reason": "; ".join(problems) if status == "review" else None,
                "duplicate_of": duplicate[0] if duplicate else None,
            }
            return self._move(receipt_id, ("received", "review"), values, conn)

    def likely_duplicate(
        self, conn: Connection, receipt_id: int, day: date, total_minor: int, currency: str,
        vendor: str | None,
    ) -> tuple[int | None, str] | None:  # fmt: skip
        """Another receipt (not rejected, not itself flagged) with the same date and amount, as
        booked or as read, and the same vendor; else a journal entry booked by hand that day for
        that amount (not a reversal) naming the vendor. Returns (the receipt's id or None, the
        reason) or None."""
        booked = and_(receipts.c.receipt_date == day, receipts.c.total_minor == total_minor)
        read = and_(receipts.c.read_date == day, receipts.c.read_total_minor == total_minor)
        rows = conn.execute(
            select(receipts.c.id, receipts.c.status, receipts.c.vendor, receipts.c.read_vendor)
            .add_columns(receipts.c.entry_reference)
            .where(or_(booked, read), receipts.c.currency == currency)
            .where(receipts.c.id != receipt_id, receipts.c.status != "rejected")
            .where(receipts.c.duplicate_of.is_(None))  # the original of a pair, never both ways
            .order_by(receipts.c.id)
        ).all()
        amount = format_amount(from_minor(total_minor, currency), currency)
        for row in rows:
            if same_vendor(vendor, row.vendor) or same_vendor(vendor, row.read_vendor):
                booked_as = f", booked as entry {row.entry_reference}" if row.entry_reference else ""
                return row.id, (
                    f"possible duplicate of receipt {row.id} ({row.status}{booked_as}: "
                    f"same date, amount and vendor)"
                )
        entries = conn.execute(
            select(journal_entries.c.reference, journal_entries.c.description)
            .join(journal_lines, journal_lines.c.entry_id == journal_entries.c.id)
            .where(journal_entries.c.entry_date == day, journal_entries.c.currency == currency)
            .where(journal_entries.c.source != "receipt", journal_entries.c.reverses_id.is_(None))
            .group_by(journal_entries.c.id, journal_entries.c.reference, journal_entries.c.description)
            # quotient and remainder by 10^9: SQLite's SUM of a whole entry can pass 2^63 and fail;
            # past 2^63 the product becomes a REAL, never equal to a receipt's total
            .having(
                func.sum(journal_lines.c.debit_minor // 10**9) * 10**9
                + func.sum(journal_lines.c.debit_minor % 10**9)
                == total_minor
            )
        ).all()
        name = fold(vendor)
        for entry in entries:
            if len(name) >= 3 and name in fold(entry.description):
                return None, (
                    f"possible duplicate of entry {entry.reference} (same date {day}, amount {amount} "
                    f"and vendor)"
                )
        return None

    def mark_unreadable(self, receipt_id: int, reason: str) -> Receipt:
        return self._move(receipt_id, ("received", "review"), {"status": "review", "reason": reason})

    def flag_duplicate(self, conn: Connection, receipt_id: int, original_id: int | None, reason: str) -> bool:
        done = conn.execute(
            update(receipts)
            .where(receipts.c.id == receipt_id, receipts.c.status.in_(("draft", "review")))
            .where(receipts.c.duplicate_of.is_(None))
            .values(status="review", duplicate_of=original_id, reason=reason, updated_at=datetime.now(UTC))
        )
        return done.rowcount == 1

    def set_filed(self, receipt_id: int, **values: Any) -> None:
        with self.db.begin() as conn:
            conn.execute(
                update(receipts)
                .where(receipts.c.id == receipt_id)
                .values(updated_at=datetime.now(UTC), **values)
            )

    def _move(
        self,
        receipt_id: int,
        sources: tuple[str, ...],
        values: dict[str, Any],
        conn: Connection | None = None,
    ) -> Receipt:
        """The one guarded state change: UPDATE … WHERE status IN sources; a lost race is a Conflict."""
        if conn is None:
            with self.db.begin() as fresh:
                return self._move(receipt_id, sources, values, fresh)
        done = conn.execute(
            update(receipts)
            .where(receipts.c.id == receipt_id, receipts.c.status.in_(sources))
            .values(updated_at=datetime.now(UTC), **values)
        )
        current = self.get(receipt_id, conn)
        if done.rowcount == 0:
            if current.status in ("approved", "rejected"):
                raise Conflict(f"receipt {receipt_id} is already {current.status}")
            raise Conflict(f"receipt {receipt_id} is {current.status}; expected {' or '.join(sources)}")
        return current

    # ------------------------------------------------------------ a person decides
    def approve(
        self,
        receipt_id: int,
        *,
        total: str | None = None,
        tax: str | None = None,
        on: date | None = None,
        vendor: str | None = None,
        account: str | None = None,
        currency: str | None = None,
        tax_rate: int | None = None,
        not_duplicate: bool = False,
    ) -> tuple[Receipt, Entry]:
        """Turn a draft (or a reviewed receipt, with the missing facts given) into a journal entry.

        The receipt is claimed first (a guarded UPDATE), so of two concurrent approvals one books
        and the other is told "receipt N is already approved". The entry (reference `RCPT-<id>`)
        is recorded and queued for the daily export in the same transaction. Corrections are
        read by the ledger's strict amount rule; the receipt is (re)filed under the booked values.
        With the values to be booked it is compared again with the other receipts and the books:
        a likely duplicate is refused (`LikelyDuplicate`) unless `not_duplicate`.
        """
        from ledgerflow.config import check_account
        from ledgerflow.receipts.tasks import filed_as_booked

        with self.db.begin() as conn:
            r = self._move(receipt_id, ("draft", "review"), {"status": "approved"}, conn)
            cur = check_currency(currency or r.currency or self.app.settings.receipt_currency)
            amount = parse_amount(total, cur, "--total") if total is not None else r.total
            if amount is not None and total is None and currency is not None:
                amount = parse_amount(format(amount, "f"), cur, "the total read")  # another currency
            tax_amount = parse_amount(tax, cur, "--tax") if tax is not None else r.tax
            day = on or r.receipt_date
            name = storable_text((vendor or r.vendor or "").strip())  # the entry says what is stored
            missing = [w for w, v in (("--total", amount), ("--date", day), ("--vendor", name)) if not v]
            if missing:
                raise BadInput(f"receipt {receipt_id} needs {', '.join(missing)} before it can be approved")
            assert amount is not None and day is not None
            if amount <= 0 or (tax_amount is not None and not 0 <= tax_amount < amount):
                raise BadInput(f"receipt {receipt_id}: total must be > 0 and tax between 0 and the total")
            if tax_rate is not None and not 0 <= tax_rate <= 100:
                raise BadInput(f"receipt {receipt_id}: --tax-rate {tax_rate} must be a percentage 0-100")
            rate = tax_rate if tax_rate is not None else r.tax_rate
            if tax_amount and rate is None:
                raise BadInput(
                    f"receipt {receipt_id}: give --tax-rate for the tax {tax_amount} (no rate was read)"
                )
            try:
                expense = check_account(
                    account or r.expense_account or self.app.settings.receipt_expense_account
                )
            except ValueError as exc:
                raise BadInput(str(exc)) from None
            if not not_duplicate:
                found = self.likely_duplicate(conn, receipt_id, day, to_minor(amount, cur), cur, name)
                if found:
                    raise LikelyDuplicate(
                        f"receipt {receipt_id} looks like a duplicate of "
                        f"{found[1].removeprefix('possible duplicate of ')}; reject it, or approve "
                        'it with --not-a-duplicate (API: "not_duplicate": true) if it is another purchase'
                    )
            code = tax_code_for(cur, rate)
            entry = self._entry(receipt_id, day, name, cur, amount, tax_amount or Decimal(0), code, expense)
            # through the mapping form, so the entry is validated like any other (balanced, exportable)
            stored = self.app.ledger.record(entry.to_dict(), source="receipt", connection=conn)
            values = {
                "reason": None,
                "vendor": name,
                "receipt_date": day,
                "currency": cur,
                "total_minor": to_minor(amount, cur),
                "tax_minor": to_minor(tax_amount, cur) if tax_amount is not None else None,
                "tax_rate": rate,
                "tax_code": code,
                "expense_account": expense,
                "entry_reference": entry.reference,
            }
            conn.execute(update(receipts).where(receipts.c.id == receipt_id).values(values))
            approved = self.get(receipt_id, conn)
            if not filed_as_booked(approved) and FILE_TASK in self.app.registry:
                # a reviewed receipt is filed now; a corrected one moves to its booked name
                task = self.app.registry.get(FILE_TASK).configure(unique_key=f"receipt-file:{receipt_id}")
                self.app.enqueue(task.prepare(receipt_id), connection=conn)
            return approved, stored

    def reject(self, receipt_id: int, reason: str = "rejected by a person") -> Receipt:
        """Keep the file and its history, but never book it (e.g. a confirmed duplicate)."""
        return self._move(
            receipt_id, ("received", "draft", "review"), {"status": "rejected", "reason": reason}
        )

    def _entry(
        self, receipt_id: int, day: date, vendor: str, currency: str, total: Decimal, tax: Decimal,
        tax_code: str | None, expense: str,
    ) -> Entry:  # fmt: skip
        settings = self.app.settings
        code, _, name = expense.partition(":")
        lines = [Line(code, name, total - tax, Decimal(0), tax_code, vendor[:200])]
        if tax:
            tcode, _, tname = settings.receipt_tax_account.partition(":")
            lines.append(Line(tcode, tname, tax, Decimal(0), tax_code, None))
        ccode, _, cname = settings.receipt_credit_account.partition(":")
        lines.append(Line(ccode, cname, Decimal(0), total, None, None))
        return Entry(
            reference=f"RCPT-{receipt_id}",
            date=day,
            description=f"{vendor} (receipt {receipt_id})"[:500],
            currency=currency,
            lines=tuple(lines),
        )
