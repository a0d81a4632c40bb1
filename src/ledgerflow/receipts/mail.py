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
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any

from ledgerflow.errors import BadInput, LedgerflowError
from ledgerflow.logs import get_logger
from ledgerflow.receipts.extract import ACCEPTED, MESSAGE_TEXT, sniff
from ledgerflow.receipts.store import ReceiptStore

if TYPE_CHECKING:
    from ledgerflow.app import App

log = get_logger("receipts")
ZIP_TYPES = ("application/zip", "application/x-zip-compressed")


class MailError(LedgerflowError):
    """The IMAP server refused or failed (the job retries with backoff)."""


def mailbox_key(app: App) -> str:
    s = app.settings
    return f"{s.imap_user}@{s.imap_host}/{s.imap_mailbox}"


def missing_mail_settings(settings: Any) -> list[str]:
    """The variables a scan still needs: host, user, and a password or an OAuth 2.0 token file."""
    secret = "imap_oauth2_token_file" if settings.imap_oauth2_token_file else "imap_password"
    return [f"LEDGERFLOW_{n.upper()}" for n in ("imap_host", "imap_user", secret) if not getattr(settings, n)]


@contextmanager
def imap_session(app: App) -> Iterator[imaplib.IMAP4]:
    """A logged-in IMAP connection: XOAUTH2 with LEDGERFLOW_IMAP_OAUTH2_TOKEN_FILE, else a password."""
    s = app.settings
    missing = missing_mail_settings(s)
    if missing:
        raise BadInput(f"email_scan needs {', '.join(missing)}")
    assert s.imap_host and s.imap_user
    port = s.imap_port or (993 if s.imap_ssl else 143)
    try:
        if s.imap_ssl:
            conn: imaplib.IMAP4 = imaplib.IMAP4_SSL(s.imap_host, port, timeout=s.imap_timeout)
        else:
            conn = imaplib.IMAP4(s.imap_host, port, timeout=s.imap_timeout)
    except (OSError, imaplib.IMAP4.error) as exc:
        raise MailError(f"cannot reach IMAP server {s.imap_host}:{port}: {exc}") from None
    try:
        _login(app, conn)
        yield conn
    except (TimeoutError, OSError, imaplib.IMAP4.abort) as exc:
        raise MailError(f"IMAP connection to {s.imap_host} failed: {exc}") from None
    finally:
        with suppress(OSError, imaplib.IMAP4.error):
            conn.logout()


def _login(app: App, conn: imaplib.IMAP4) -> None:
    s = app.settings
    assert s.imap_user
    if not s.imap_oauth2_token_file:
        assert s.imap_password
        try:
            conn.login(s.imap_user, s.imap_password.get_secret_value())
        except imaplib.IMAP4.error:
            raise BadInput(f"IMAP login refused for {s.imap_user} at {s.imap_host}") from None
        return
    from ledgerflow.receipts.oauth import TokenEndpointUnavailable, TokenFile, xoauth2

    tokens = TokenFile(s.imap_oauth2_token_file, timeout=s.imap_timeout)
    try:
        for force_refresh in (False, True):  # a stored token the server refuses: refresh once
            response = xoauth2(s.imap_user, tokens.access_token(force_refresh))
            sent: list[int] = []

            def answer(challenge: bytes, response: bytes = response, sent: list[int] = sent) -> bytes:
                sent.append(1)  # after a failure the server sends its error as a challenge
                return response if len(sent) == 1 else b""

            try:
                conn.authenticate("XOAUTH2", answer)
                return
            except imaplib.IMAP4.error as exc:
                refused = str(exc)
    except TokenEndpointUnavailable as exc:
        raise MailError(str(exc)) from None
    raise BadInput(
        f"IMAP XOAUTH2 login refused for {s.imap_user} at {s.imap_host} with a freshly refreshed "
        f"token ({refused}): check the account and the token's scope"
    )


def _ok(result: tuple[str, list[Any]], what: str) -> list[Any]:
    status, data = result
    if status != "OK":
        raise MailError(f"IMAP {what} failed: {data!r}")
    return data


def scan(app: App, limit: int = 500) -> dict[str, int]:
    """Fetch messages above the cursor (at most `limit` per run); store and queue their receipts,
    and record every message or attachment that is not one, with the reason."""
    from ledgerflow.receipts.tasks import process_and_file

    store = ReceiptStore(app)
    key = mailbox_key(app)
    counts = {"messages": 0, "attachments": 0, "new_receipts": 0, "duplicates": 0, "skipped": 0}
    counts["stored_by_another_scan"] = 0
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
            parts = read_message(message, app.settings.receipt_max_bytes)
            counts["attachments"] += sum(1 for p in parts if p.number > 0)
            kept = [(p, store.keep_file(p.data, p.extension)) for p in parts if p.reason is None]
            where = {"mailbox": key, "uid_validity": validity, "uid": uid}
            with app.db.begin() as tx:
                if not store.claim(tx, key, validity, uid):
                    counts["stored_by_another_scan"] += 1
                    continue
                for part in parts:
                    if part.reason is not None:
                        log.info("receipt_mail_skipped", uid=uid, part=part.number, reason=part.reason)
                        store.skip(
                            tx,
                            reason=part.reason,
                            size=len(part.data),
                            part=part.number,
                            name=part.name[:300] if part.name else None,
                            content_type=part.content_type[:100],
                            **where,
                            **header,
                        )
                        counts["skipped"] += 1
                for part, sha in kept:
                    receipt_id, new = store.ingest(
                        tx,
                        sha256=sha,
                        content_type=part.content_type,
                        extension=part.extension,
                        size=len(part.data),
                        name=part.name,
                        source={**where, "part": part.number, **header},
                    )
                    if new:
                        process_and_file(app, tx, receipt_id)
                        counts["new_receipts"] += 1
                    else:
                        counts["duplicates"] += 1
            counts["messages"] += 1
    log.info("email_scan_done", mailbox=key, **counts)
    return counts


@dataclass(frozen=True)
class Part:
    """One part of a message: a receipt to keep (`reason` None) or what was skipped and why.

    `number` counts the message's leaf parts from 1; 0 is the message's own text.
    """

    number: int
    name: str
    content_type: str
    data: bytes
    reason: str | None = None

    @property
    def extension(self) -> str:
        return {**ACCEPTED, **MESSAGE_TEXT}.get(self.content_type, "bin")


def read_message(message: EmailMessage, max_bytes: int) -> list[Part]:
    """Every attachment as a receipt or a skip with its reason; without a receipt attachment,
    the message's own text (HTML, else plain) is a receipt when it reads as one (a total), and
    a message with nothing at all is recorded as not a receipt."""
    from ledgerflow.receipts.extract import html_text
    from ledgerflow.receipts.parse import read_receipt

    parts: list[Part] = []
    texts: dict[str, str] = {}
    for number, (part, related) in enumerate(_leaves(message), 1):
        declared = part.get_content_type()
        disposition = part.get_content_disposition()
        name = part.get_filename() or ""
        if part.get_content_maintype() == "text" and disposition != "attachment" and not name:
            texts.setdefault(declared, _decoded_text(part))
            continue
        data = part.get_payload(decode=True)
        data = data if isinstance(data, bytes) else b""
        name = name or f"part{number}.{part.get_content_subtype()}"
        kind = sniff(data)
        reason = None
        if related and disposition is None and part.get_content_maintype() == "image":
            reason = "an image inside the HTML message (a logo or picture), not an attachment"
        elif not data:
            reason = "an empty attachment"
        elif len(data) > max_bytes:
            reason = f"larger than LEDGERFLOW_RECEIPT_MAX_BYTES ({len(data):,} > {max_bytes:,} bytes)"
        elif data.startswith(b"PK\x03\x04") or declared in ZIP_TYPES:
            reason = "a zip archive: not opened (mail the receipts in it as PDF, JPEG or PNG)"
        elif kind not in ACCEPTED:
            reason = f"not a PDF, JPEG or PNG ({declared})"
        parts.append(Part(number, name, kind if reason is None and kind else declared, data, reason))
    if any(p.reason is None for p in parts):
        return parts
    body, kind = (html_text(texts["text/html"]), "text/html") if "text/html" in texts else (
        texts.get("text/plain", ""), "text/plain"
    )  # fmt: skip
    data = (texts.get(kind) or "").encode("utf-8")
    if body.strip() and read_receipt(body).total is not None:
        parts.append(Part(0, f"message.{MESSAGE_TEXT[kind]}", kind, data))
    elif not parts:  # skipped attachments already say why
        why = "no total in its text" if body.strip() else "no text"
        reason = f"no PDF, JPEG or PNG attachment, and the message is not a receipt ({why})"
        parts.append(Part(0, "message", kind, data, reason))
    return parts


def _leaves(part: EmailMessage, related: bool = False) -> Iterator[tuple[EmailMessage, bool]]:
    """The message's leaf parts in order (into forwarded messages too), each with whether it
    sits in a multipart/related."""
    if part.is_multipart():  # multipart/* and message/rfc822
        inner = related or part.get_content_type() == "multipart/related"
        for child in part.get_payload():
            assert isinstance(child, EmailMessage)
            yield from _leaves(child, inner)
    else:
        yield part, related


def _decoded_text(part: EmailMessage) -> str:
    try:
        return str(part.get_content())
    except (LookupError, UnicodeError, ValueError):  # an unknown or wrong charset
        payload = part.get_payload(decode=True)
        return payload.decode("utf-8", errors="replace") if isinstance(payload, bytes) else ""


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
