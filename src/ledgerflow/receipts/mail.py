"""`email_scan`: fetch new messages from an IMAP mailbox and keep their receipt attachments.

Nothing is fetched twice: the mailbox's last UID (with its UIDVALIDITY) advances in the same
transaction that stores a message's receipts and enqueues their processing, so a crash at any
point either stored the whole message or none of it (its files are content-addressed, so
writing one again is harmless). Messages are read with BODY.PEEK: they stay unread for people.
"""

from __future__ import annotations

import email
import email.policy
import imaplib
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any

from ledgerflow.errors import BadInput, LedgerflowError
from ledgerflow.logs import get_logger
from ledgerflow.receipts.extract import ACCEPTED, sniff
from ledgerflow.receipts.store import ReceiptStore

if TYPE_CHECKING:
    from ledgerflow.app import App

log = get_logger("receipts")


class MailError(LedgerflowError):
    """The IMAP server refused or failed (the job retries with backoff)."""


def mailbox_key(app: App) -> str:
    s = app.settings
    return f"{s.imap_user}@{s.imap_host}/{s.imap_mailbox}"


@contextmanager
def imap_session(app: App) -> Iterator[imaplib.IMAP4]:
    s = app.settings
    missing = [n for n in ("imap_host", "imap_user", "imap_password") if not getattr(s, n)]
    if missing:
        raise BadInput("email_scan needs " + ", ".join(f"LEDGERFLOW_{n.upper()}" for n in missing))
    assert s.imap_host and s.imap_user and s.imap_password
    port = s.imap_port or (993 if s.imap_ssl else 143)
    try:
        if s.imap_ssl:
            conn: imaplib.IMAP4 = imaplib.IMAP4_SSL(s.imap_host, port, timeout=s.imap_timeout)
        else:
            conn = imaplib.IMAP4(s.imap_host, port, timeout=s.imap_timeout)
    except (OSError, imaplib.IMAP4.error) as exc:
        raise MailError(f"cannot reach IMAP server {s.imap_host}:{port}: {exc}") from None
    try:
        try:
            conn.login(s.imap_user, s.imap_password.get_secret_value())
        except imaplib.IMAP4.error:
            raise BadInput(f"IMAP login refused for {s.imap_user} at {s.imap_host}") from None
        yield conn
    except (TimeoutError, OSError, imaplib.IMAP4.abort) as exc:
        raise MailError(f"IMAP connection to {s.imap_host} failed: {exc}") from None
    finally:
        with suppress(OSError, imaplib.IMAP4.error):
            conn.logout()


def _ok(result: tuple[str, list[Any]], what: str) -> list[Any]:
    status, data = result
    if status != "OK":
        raise MailError(f"IMAP {what} failed: {data!r}")
    return data


def scan(app: App, limit: int = 500) -> dict[str, int]:
    """Fetch messages above the cursor (at most `limit` per run); store and queue their receipts."""
    from ledgerflow.receipts.tasks import process_and_file

    store = ReceiptStore(app)
    key = mailbox_key(app)
    counts = {"messages": 0, "attachments": 0, "new_receipts": 0, "duplicates": 0, "skipped": 0}
    with imap_session(app) as conn:
        _ok(conn.select(_quote(app.settings.imap_mailbox), readonly=True), "SELECT")
        _, reported = conn.response("UIDVALIDITY")
        if not reported or reported[0] is None:
            raise MailError("the IMAP server reported no UIDVALIDITY for the mailbox")
        validity = int(reported[0])
        cursor = store.cursor(key)
        last = cursor[1] if cursor and cursor[0] == validity else 0  # new UIDVALIDITY: UIDs restarted
        found = _ok(conn.uid("SEARCH", None, f"UID {last + 1}:*"), "SEARCH")
        uids = sorted(u for u in (int(x) for x in b" ".join(found).split()) if u > last)[:limit]
        for uid in uids:
            data = _ok(conn.uid("FETCH", str(uid), "(BODY.PEEK[])"), "FETCH")
            raw = next((part[1] for part in data if isinstance(part, tuple)), None)
            if raw is None:
                raise MailError(f"IMAP FETCH of UID {uid} returned no message")
            message = email.message_from_bytes(raw, policy=email.policy.default)
            assert isinstance(message, EmailMessage)
            header = _header(message)
            files = []
            for part_no, (name, data_bytes) in enumerate(_attachments(message), 1):
                counts["attachments"] += 1
                kind = sniff(data_bytes)
                if kind not in ACCEPTED or len(data_bytes) > app.settings.receipt_max_bytes:
                    counts["skipped"] += 1
                    log.info("receipt_attachment_skipped", uid=uid, name=name, size=len(data_bytes))
                    continue
                sha = store.keep_file(data_bytes, ACCEPTED[kind])
                files.append((part_no, name, kind, sha, len(data_bytes)))
            where = {"mailbox": key, "uid_validity": validity, "uid": uid}
            with app.db.begin() as tx:
                for part_no, name, kind, sha, size in files:
                    receipt_id, new = store.ingest(
                        tx,
                        sha256=sha,
                        content_type=kind,
                        extension=ACCEPTED[kind],
                        size=size,
                        name=name,
                        source={**where, "part": part_no, **header},
                    )
                    if new:
                        process_and_file(app, tx, receipt_id)
                        counts["new_receipts"] += 1
                    else:
                        counts["duplicates"] += 1
                store.advance(tx, key, validity, uid)
            counts["messages"] += 1
    log.info("email_scan_done", mailbox=key, **counts)
    return counts


def _quote(mailbox: str) -> str:
    return mailbox if mailbox.isalnum() else '"' + mailbox.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _header(message: EmailMessage) -> dict[str, Any]:
    sent = None
    if message["Date"]:
        try:
            sent = parsedate_to_datetime(str(message["Date"]))
            sent = sent if sent.tzinfo else sent.replace(tzinfo=UTC)
        except (TypeError, ValueError):
            sent = None
    return {
        "message_id": str(message["Message-ID"] or "")[:500] or None,
        "sender": str(message["From"] or "")[:500] or None,
        "subject": str(message["Subject"] or "") or None,
        "sent_at": sent.astimezone(UTC) if isinstance(sent, datetime) else None,
    }


def _attachments(message: EmailMessage) -> Iterator[tuple[str, bytes]]:
    """(file name, bytes) of every attachment and inline image, in message order."""
    for part in message.walk():
        if part.is_multipart():
            continue
        disposition = part.get_content_disposition()
        if disposition not in ("attachment", "inline") and part.get_content_maintype() == "text":
            continue
        if disposition is None and part.get_content_maintype() not in ("application", "image"):
            continue
        payload = part.get_payload(decode=True)
        if isinstance(payload, bytes) and payload:
            yield (part.get_filename() or f"attachment.{part.get_content_subtype()}"), payload
