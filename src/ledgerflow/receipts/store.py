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

from sqlalchemy import Connection, func, insert, select, update

from ledgerflow.db.tables import mail_cursors, receipt_sources, receipts
from ledgerflow.errors import BadInput, Conflict, NotFound
from ledgerflow.ledger.entries import Entry, Line
from ledgerflow.ledger.money import check_currency, format_amount, from_minor, parse_amount, to_minor

if TYPE_CHECKING:
    from ledgerflow.app import App
    from ledgerflow.receipts.parse import Reading

FILE_TASK = "ledgerflow.receipts.file"
#: received → draft (read with confidence) | review (needs a person) → approved | rejected
STATES = ("received", "draft", "review", "approved", "rejected")


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
        conn.execute(insert(receipt_sources).values(receipt_id=existing, created_at=now, **source))
        return int(existing), new

    def cursor(self, mailbox: str) -> tuple[int, int] | None:
        """(uid_validity, last_uid) of the last scan of `mailbox`."""
        with self.db.read() as conn:
            row = conn.execute(select(mail_cursors).where(mail_cursors.c.mailbox == mailbox)).first()
        return (int(row.uid_validity), int(row.last_uid)) if row else None

    def advance(self, conn: Connection, mailbox: str, uid_validity: int, uid: int) -> None:
        """Move the cursor to `uid` (in the transaction that stored that message's receipts)."""
        values = {"uid_validity": uid_validity, "last_uid": uid, "updated_at": datetime.now(UTC)}
        done = conn.execute(update(mail_cursors).where(mail_cursors.c.mailbox == mailbox).values(values))
        if done.rowcount == 0:
            conn.execute(insert(mail_cursors).values(mailbox=mailbox, **values))

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
    def record_reading(self, receipt_id: int, text: str, reading: Reading, account: str) -> Receipt:
        """Store what was read: a draft when confident enough, otherwise the review list."""
        minimum = self.app.settings.receipt_min_confidence
        problems = list(reading.problems)
        if reading.confidence < minimum:
            problems.insert(0, f"confidence {reading.confidence:.2f} < {minimum:.2f}")
        status = "draft" if reading.total is not None and reading.confidence >= minimum else "review"
        currency = reading.currency
        values = {
            "status": status,
            "reason": "; ".join(problems) if status == "review" else None,
            "text": text[:20000],
            "vendor": reading.vendor,
            "receipt_date": reading.date,
            "currency": currency,
            "total_minor": to_minor(reading.total, currency) if reading.total is not None else None,
            "tax_minor": to_minor(reading.tax, currency) if reading.tax is not None else None,
            "tax_rate": reading.tax_rate,
            "confidence": reading.confidence,
            "expense_account": account,
        }
        return self._move(receipt_id, ("received", "review"), values)

    def mark_unreadable(self, receipt_id: int, reason: str) -> Receipt:
        return self._move(receipt_id, ("received", "review"), {"status": "review", "reason": reason})

    def flag_duplicate(self, conn: Connection, receipt_id: int, original_id: int) -> bool:
        done = conn.execute(
            update(receipts)
            .where(receipts.c.id == receipt_id, receipts.c.status.in_(("draft", "review")))
            .where(receipts.c.duplicate_of.is_(None))
            .values(
                status="review",
                duplicate_of=original_id,
                reason=f"possible duplicate of receipt {original_id} (same date, amount and vendor)",
                updated_at=datetime.now(UTC),
            )
        )
        return done.rowcount == 1

    def set_filed(self, receipt_id: int, **values: Any) -> None:
        with self.db.begin() as conn:
            conn.execute(
                update(receipts)
                .where(receipts.c.id == receipt_id)
                .values(updated_at=datetime.now(UTC), **values)
            )

    def _move(self, receipt_id: int, sources: tuple[str, ...], values: dict[str, Any]) -> Receipt:
        with self.db.begin() as conn:
            done = conn.execute(
                update(receipts)
                .where(receipts.c.id == receipt_id, receipts.c.status.in_(sources))
                .values(updated_at=datetime.now(UTC), **values)
            )
            current = self.get(receipt_id, conn)
            if done.rowcount == 0:
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
    ) -> tuple[Receipt, Entry]:
        """Turn a draft (or a reviewed receipt, with the missing facts given) into a journal entry.

        The entry (reference `RCPT-<id>`) is recorded and queued for the daily export in the
        same transaction that marks the receipt approved.
        """
        from ledgerflow.config import check_account

        with self.db.begin() as conn:
            r = self.get(receipt_id, conn)
            if r.status not in ("draft", "review"):
                raise Conflict(
                    f"receipt {receipt_id} is {r.status}; only drafts and reviewed receipts approve"
                )
            cur = check_currency(currency or r.currency or self.app.settings.receipt_currency)
            amount = parse_amount(total, cur, "total") if total is not None else r.total
            tax_amount = parse_amount(tax, cur, "tax") if tax is not None else r.tax
            day = on or r.receipt_date
            name = (vendor or r.vendor or "").strip()
            missing = [w for w, v in (("--total", amount), ("--date", day), ("--vendor", name)) if not v]
            if missing:
                raise BadInput(f"receipt {receipt_id} needs {', '.join(missing)} before it can be approved")
            assert amount is not None and day is not None
            if amount <= 0 or (tax_amount is not None and not 0 <= tax_amount < amount):
                raise BadInput(f"receipt {receipt_id}: total must be > 0 and tax between 0 and the total")
            try:
                expense = check_account(
                    account or r.expense_account or self.app.settings.receipt_expense_account
                )
            except ValueError as exc:
                raise BadInput(str(exc)) from None
            entry = self._entry(
                receipt_id, day, name, cur, amount, tax_amount or Decimal(0), r.tax_rate, expense
            )
            # through the mapping form, so the entry is validated like any other (balanced, exportable)
            stored = self.app.ledger.record(entry.to_dict(), source="receipt", connection=conn)
            conn.execute(
                update(receipts)
                .where(receipts.c.id == receipt_id)
                .values(
                    status="approved",
                    reason=None,
                    vendor=name,
                    receipt_date=day,
                    currency=cur,
                    total_minor=to_minor(amount, cur),
                    tax_minor=to_minor(tax_amount, cur) if tax_amount is not None else None,
                    expense_account=expense,
                    entry_reference=entry.reference,
                    updated_at=datetime.now(UTC),
                )
            )
            if r.filed_name is None and FILE_TASK in self.app.registry:  # a reviewed receipt: file it now
                task = self.app.registry.get(FILE_TASK).configure(unique_key=f"receipt-file:{receipt_id}")
                self.app.enqueue(task.prepare(receipt_id), connection=conn)
            return self.get(receipt_id, conn), stored

    def reject(self, receipt_id: int, reason: str = "rejected by a person") -> Receipt:
        """Keep the file and its history, but never book it (e.g. a confirmed duplicate)."""
        return self._move(
            receipt_id, ("received", "draft", "review"), {"status": "rejected", "reason": reason}
        )

    def _entry(
        self, receipt_id: int, day: date, vendor: str, currency: str, total: Decimal, tax: Decimal,
        rate: int | None, expense: str,
    ) -> Entry:  # fmt: skip
        settings = self.app.settings
        code, _, name = expense.partition(":")
        tax_code = f"{'JCT' if currency == 'JPY' else 'VAT'}{rate}" if rate else None
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
