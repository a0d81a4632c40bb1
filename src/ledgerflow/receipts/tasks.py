"""The receipt tasks: email_scan → receipt_process → file_organize, duplicate_cleanup, report.

A receipt mailed in the morning is scanned at 08:00 (`email_monitoring`), read into a draft
journal entry, filed at the destination; once a person approves it, the evening's daily export
delivers it. Each task is an ordinary ledgerflow job: timeouts, retries with backoff, dead
letters and auto-stop apply, and one receipt's failure never blocks another's job.
"""

from __future__ import annotations

import unicodedata
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, select

from ledgerflow.db.tables import receipts
from ledgerflow.errors import LedgerflowError
from ledgerflow.logs import get_logger
from ledgerflow.receipts.store import FILE_TASK

if TYPE_CHECKING:
    from ledgerflow.app import App

log = get_logger("receipts")

SCAN = "ledgerflow.receipts.email_scan"
PROCESS = "ledgerflow.receipts.process"
FILE = FILE_TASK
DEDUP = "ledgerflow.receipts.duplicate_cleanup"
REPORT = "ledgerflow.receipts.report"


def process_and_file(app: App, conn: Connection, receipt_id: int) -> None:
    """Enqueue reading the receipt, then filing it once read (a dependency chain, one transaction)."""
    process = app.registry.get(PROCESS).configure(unique_key=f"receipt-process:{receipt_id}")
    job = app.enqueue(process.prepare(receipt_id), connection=conn)
    file = app.registry.get(FILE).configure(depends_on=[job.id], unique_key=f"receipt-file:{receipt_id}")
    app.enqueue(file.prepare(receipt_id), connection=conn)


def choose_account(
    app: App, vendor: str | None, text: str, total: Any, currency: str | None
) -> tuple[str, str]:
    """(account, where it came from): the first vendor rule that matches (by priority), else the
    account people chose most often for this vendor, else the default."""
    from ledgerflow.receipts.rules import first_match, parse_rules

    rule = first_match(parse_rules(app.settings.receipt_rules), vendor, text, total, currency)
    if rule is not None:
        return rule.account, f"rule: {rule.name} (priority {rule.priority})"
    learned = learned_account(app, vendor)
    if learned is not None:
        account, chosen, approvals = learned
        return account, f"learned: chosen for this vendor in {chosen} of {approvals} approvals"
    return app.settings.receipt_expense_account, "default account (no rule, no earlier approval)"


def learned_account(app: App, vendor: str | None) -> tuple[str, int, int] | None:
    """The expense account most often approved for `vendor` (the latest on a tie), with counts."""
    from sqlalchemy import func, or_

    if not vendor:
        return None
    with app.db.read() as conn:
        rows = conn.execute(
            select(receipts.c.expense_account, func.count(), func.max(receipts.c.updated_at))
            .where(receipts.c.status == "approved", receipts.c.expense_account.is_not(None))
            .where(or_(receipts.c.vendor == vendor, receipts.c.read_vendor == vendor))
            .group_by(receipts.c.expense_account)
        ).all()
    if not rows:
        return None
    best = max(rows, key=lambda r: (r[1], r[2]))
    return str(best[0]), int(best[1]), sum(int(r[1]) for r in rows)


def register_receipt_tasks(app: App) -> None:
    from ledgerflow.receipts.store import ReceiptStore

    store = ReceiptStore(app)

    @app.task(name=SCAN, queue="receipts", max_attempts=5, timeout=600, retry_backoff=60)
    def email_scan(limit: int = 500) -> dict[str, int]:
        """Fetch new mail; keep PDF/JPEG/PNG attachments; queue one processing chain per new receipt."""
        from ledgerflow.receipts.mail import scan

        return scan(app, limit)

    @app.task(name=PROCESS, queue="receipts", max_attempts=3, timeout=300, retry_backoff=30)
    def receipt_process(receipt_id: int) -> dict[str, Any]:
        """Read the receipt: a draft entry when confident, otherwise the review list (with the reason)."""
        from ledgerflow.receipts.extract import Unreadable, extract_text
        from ledgerflow.receipts.parse import read_receipt

        receipt = store.get(receipt_id)
        if receipt.status not in ("received", "review") or receipt.confidence is not None:
            return {"receipt": receipt_id, "status": receipt.status}  # already read (a retried job)
        try:
            text = extract_text(store.path(receipt), receipt.content_type)
        except Unreadable as exc:
            done = store.mark_unreadable(receipt_id, str(exc))
            return {"receipt": receipt_id, "status": done.status, "reason": done.reason}
        arrived = receipt.created_at.astimezone(ZoneInfo(app.settings.timezone)).date()
        reading = read_receipt(text, app.settings.receipt_currency, today=arrived)
        account, note = choose_account(app, reading.vendor, text, reading.total, reading.currency)
        done = store.record_reading(receipt_id, text, reading, account, note)
        log.info("receipt_read", receipt=receipt_id, status=done.status, confidence=done.confidence)
        return {"receipt": receipt_id, "status": done.status, "confidence": done.confidence}

    @app.task(name=FILE, queue="receipts", max_attempts=5, timeout=300, retry_backoff=30)
    def file_organize(receipt_id: int) -> dict[str, Any]:
        """File the receipt as YYYY/MM/YYYY-MM-DD_vendor_amount.ext at the destination, idempotently."""
        return file_receipt(app, receipt_id)

    @app.task(name=DEDUP, queue="receipts", max_attempts=3, timeout=600)
    def duplicate_cleanup() -> dict[str, int]:
        """Flag likely duplicates (same date, amount and vendor) for review; nothing is deleted."""
        return {"flagged": flag_likely_duplicates(app)}

    @app.task(name=REPORT, queue="reports", max_attempts=3, timeout=600)
    def report(month: str | None = None) -> dict[str, Any]:
        """The month's receipts report (CSV and HTML) at the destination."""
        from ledgerflow.receipts.report import publish_report

        return publish_report(app, month)


def slug(text: str, limit: int = 40) -> str:
    """A file-name-safe vendor: letters of any script with their marks (Thai vowels and tone
    marks stay on their letters) and digits; '-' for the rest; company forms left out."""
    text = unicodedata.normalize("NFKC", text).replace("\u0e4d\u0e32", "\u0e33")  # NFKC splits ำ
    for form in ("株式会社", "有限会社", "合同会社", "(株)", "บริษัท", "จำกัด"):
        text = text.replace(form, " ")
    kept = "".join(ch if unicodedata.category(ch)[0] in "LMN" else "-" for ch in text)
    kept = "-".join(part for part in kept.split("-") if part)
    end = min(limit, len(kept))
    while end < len(kept) and unicodedata.category(kept[end])[0] == "M":
        end += 1  # never cut a mark from its letter
    return kept[:end].strip("-") or "unknown"


def filed_name(receipt: Any) -> str | None:
    """YYYY/MM/YYYY-MM-DD_vendor_amount.ext from the booked (else read) values; None until known."""
    from ledgerflow.ledger.money import format_amount

    d = receipt.receipt_date
    if d is None or receipt.total is None or receipt.currency is None:
        return None
    amount = format_amount(receipt.total, receipt.currency)
    return f"{d:%Y}/{d:%m}/{d:%Y-%m-%d}_{slug(receipt.vendor or '')}_{amount}.{receipt.extension}"


def filed_as_booked(receipt: Any) -> bool:
    """Filed under the name its current values give (with the sha256 suffix of a name clash)."""
    name = filed_name(receipt)
    if receipt.filed_name is None or name is None:
        return False
    ext = f".{receipt.extension}"
    return receipt.filed_name in (name, name.removesuffix(ext) + f"_{receipt.sha256[:8]}{ext}")


def file_receipt(app: App, receipt_id: int) -> dict[str, Any]:
    """Upload the receipt under its name; a receipt approved with corrections moves to its new
    name (the old file is removed first, so a retry at any point converges on one file)."""
    from ledgerflow.export.destinations import ExportConflict, destination_for, file_digests
    from ledgerflow.receipts.store import ReceiptStore

    store = ReceiptStore(app)
    receipt = store.get(receipt_id)
    name = filed_name(receipt)
    if receipt.filed_name and (filed_as_booked(receipt) or receipt.status != "approved"):
        return {"receipt": receipt_id, "filed": receipt.filed_name, "link": receipt.filed_link}
    if receipt.status not in ("draft", "approved") or name is None:
        return {"receipt": receipt_id, "filed": None, "waiting": f"receipt is {receipt.status}"}
    destination = destination_for(app.settings, app.settings.receipt_destination)
    if receipt.filed_name:  # filed under the values read; the booked ones differ
        with store.db.read() as conn:
            old_id = conn.execute(select(receipts.c.filed_id).where(receipts.c.id == receipt_id)).scalar()
        if old_id:
            destination.delete(str(old_id), batch_key=f"receipt:{receipt.sha256}", sha256=receipt.sha256)
        store.set_filed(receipt_id, filed_name=None, filed_id=None, filed_link=None)
    path = store.path(receipt)
    sha, md5, size = file_digests(path)
    if sha != receipt.sha256:
        raise LedgerflowError(f"receipt {receipt_id}: stored file {path} does not match its sha256")
    reserved = receipt_reserved_id(store, receipt_id, destination)
    common: dict[str, Any] = {"sha256": sha, "md5": md5, "size": size, "batch_key": f"receipt:{sha}"}
    common["reserved_id"] = reserved
    try:
        remote = destination.upload(path, name, **common)
    except ExportConflict:  # another receipt with the same date, vendor and amount is filed there
        name = name.replace(f".{receipt.extension}", f"_{sha[:8]}.{receipt.extension}")
        remote = destination.upload(path, name, **common)
    store.set_filed(receipt_id, filed_name=name, filed_id=remote.file_id, filed_link=remote.link)
    return {"receipt": receipt_id, "filed": name, "link": remote.link}


def receipt_reserved_id(store: Any, receipt_id: int, destination: Any) -> str | None:
    """Drive: a file id reserved and stored before the upload, so a retry cannot make a second file."""
    with store.db.read() as conn:
        current = conn.execute(select(receipts.c.filed_id).where(receipts.c.id == receipt_id)).scalar()
    if current:
        return str(current)
    ids = destination.reserve(1)
    if not ids:
        return None
    store.set_filed(receipt_id, filed_id=ids[0])
    return str(ids[0])


def flag_likely_duplicates(app: App) -> int:
    """Drafts and reviewed receipts that look like an earlier receipt (approved ones included,
    as booked or as read) or a booked entry go to review with the reason; nothing is deleted."""
    from ledgerflow.receipts.store import ReceiptStore

    store = ReceiptStore(app)
    flagged = 0
    with app.db.begin() as conn:
        rows = conn.execute(
            select(receipts.c.id, receipts.c.receipt_date, receipts.c.total_minor, receipts.c.currency)
            .add_columns(receipts.c.vendor)
            .where(receipts.c.status.in_(("draft", "review")), receipts.c.duplicate_of.is_(None))
            .where(receipts.c.receipt_date.is_not(None), receipts.c.total_minor.is_not(None))
            .order_by(receipts.c.id)
        ).all()
        for r in rows:
            found = store.likely_duplicate(conn, r.id, r.receipt_date, r.total_minor, r.currency, r.vendor)
            if found and store.flag_duplicate(conn, r.id, found[0], found[1]):
                flagged += 1
    if flagged:
        log.warning("receipts_possible_duplicates", flagged=flagged)
    return flagged
