"""Mail as it really arrives, through a real Dovecot, on both backends: what is not a receipt is
recorded with its reason, HTML and inline-text receipts are read, NUL characters are stored,
and concurrent scans store every message once."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from decimal import Decimal
from email.message import EmailMessage

import pytest
from sqlalchemy import func, select

from ledgerflow.db.tables import mail_skipped, receipt_sources, receipts
from ledgerflow.receipts.store import ReceiptStore
from ledgerflow.receipts.tasks import SCAN
from tests.conftest import ROOT, run_cli
from tests.fakes import receipts as samples
from tests.receipts.conftest import api_client, cli_env, mail_app, run_task

pytestmark = pytest.mark.usefixtures("ocr_ready")

HTML_RECEIPT = (
    "<html><body><img src='cid:logo'><h2>Cafe Tokyo 株式会社</h2><table>"
    "<tr><td>ご利用日</td><td>2026年11月20日</td></tr><tr><td>合計</td><td>¥1,100</td></tr>"
    "<tr><td>(内消費税</td><td>¥100)</td></tr></table></body></html>"
)
FORWARDED = (
    "---------- Forwarded message ---------\nFrom: shop@example.test\n\n"
    "บริษัท กาแฟดี จำกัด\nวันที่ 20 พ.ย. 2569\nกาแฟ 500.00\nVAT 7% 35.00\nรวมทั้งสิ้น 535.00 บาท\n"
)


def _message(subject: str) -> EmailMessage:
    msg = samples.message(subject, [])
    msg.clear_content()
    return msg


def not_receipts(max_bytes: int) -> dict[str, EmailMessage]:
    """One message per way mail fails to be a PDF/JPEG/PNG receipt attachment."""
    out = {}
    html = _message("HTML receipt with a logo")
    html.set_content("Cafe Tokyo: 合計 ¥1,100")
    html.add_alternative(HTML_RECEIPT, subtype="html")
    # the logo sits beside the HTML in multipart/related, with no Content-Disposition
    html.get_payload()[1].add_related(samples.image(["LOGO"]), maintype="image", subtype="png", cid="<logo>")
    for part in html.walk():
        if part.get_content_type() == "image/png":
            del part["Content-Disposition"]
    out["html"] = html
    text = _message("Fwd: ใบเสร็จ")
    text.set_content(FORWARDED)
    out["forwarded"] = text
    zipped = samples.message(
        "receipts.zip", [("receipts.zip", b"PK\x03\x04" + b"\0" * 200, "application/zip")]
    )
    out["zip"] = zipped
    big = samples.pdf(samples.japanese_lines()) + b"\n%" + b"x" * max_bytes + b"\n"
    out["big"] = samples.message("big scan", [("scan.pdf", big, "application/pdf")])
    out["doc"] = samples.message("word", [("r.doc", b"\xd0\xcf\x11\xe0 word", "application/msword")])
    out["chat"] = _message("lunch?")
    out["chat"].set_content("Are we still on for lunch tomorrow?")
    return out


def test_mail_that_is_not_a_receipt_attachment_is_recorded_or_read(
    db_url, tmp_path, mailbox, capsys, monkeypatch
):
    dovecot, user, password = mailbox
    limit = 64 * 1024
    app = mail_app(
        db_url, tmp_path, mailbox, receipt_max_bytes=limit, export_destination=f"file://{tmp_path}/o"
    )
    try:
        for msg in not_receipts(limit).values():
            dovecot.deliver(user, password, msg)
        counts = run_task(app, SCAN)
        assert counts["messages"] == 6 and counts["new_receipts"] == 2 and counts["skipped"] == 5
        store = ReceiptStore(app)
        by_type = {r.content_type: r for r in store.list()}
        html, text = by_type["text/html"], by_type["text/plain"]
        assert (html.status, html.total, html.tax, html.tax_rate) == (
            "draft",
            Decimal(1100),
            Decimal(100),
            10,
        )
        assert (text.status, text.total, text.tax, text.vendor) == (
            "draft",
            Decimal("535.00"),
            Decimal("35.00"),
            "บริษัท กาแฟดี จำกัด",
        )
        why = {s["subject"]: s["reason"] for s in store.skipped()}
        size = next(s["size"] for s in store.skipped() if s["subject"] == "big scan")
        assert size > limit
        assert why == {
            "HTML receipt with a logo": "an image inside the HTML message (a logo or picture), "
            "not an attachment",
            "receipts.zip": "a zip archive: not opened (mail the receipts in it as PDF, JPEG or PNG)",
            "big scan": f"larger than LEDGERFLOW_RECEIPT_MAX_BYTES ({size:,} > {limit:,} bytes)",
            "word": "not a PDF, JPEG or PNG (application/msword)",
            "lunch?": "no PDF, JPEG or PNG attachment, and the message is not a receipt "
            "(no total in its text)",
        }

        # visible in `receipts list` and the API
        for key, value in cli_env(app).items():
            if key.startswith("LEDGERFLOW_"):
                monkeypatch.setenv(key, value)
        code, out, _ = run_cli(capsys, "receipts", "list")
        assert code == 0 and "5 message(s) or attachment(s) were not receipts" in out
        code, out, _ = run_cli(capsys, "receipts", "list", "--status", "skipped", "--json")
        assert code == 0 and {s["reason"] for s in json.loads(out)} == set(why.values())
        client = api_client(app)
        listed = client.get("/api/receipts/skipped").json()["skipped"]
        assert {s["subject"] for s in listed} == set(why) and all(s["uid"] for s in listed)
        assert client.get("/api/receipts").json()["counts"]["skipped_mail"] == 5
        assert run_task(app, SCAN)["messages"] == 0  # recorded once, never fetched again
    finally:
        app.close()


def pdf_with_text(lines: list[str]) -> bytes:
    """A minimal PDF with a Helvetica text layer, byte for byte (PDF escapes such as \\000 kept)."""
    content = ("BT /F1 12 Tf 20 250 Td " + " 0 -20 Td ".join(f"({ln}) Tj" for ln in lines) + " ET").encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 300 300] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(content) + content + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def raw_message(subject: str, parts: list[tuple[str, str, bytes]]) -> bytes:
    """A message written byte by byte: `subject` and each (MIME headers, content type, body)."""
    lines = [
        "From: =?utf-8?q?Shop=00?= <shop@example.test>",
        "To: books@example.test",
        f"Subject: {subject}",
        "Date: Fri, 20 Nov 2026 09:30:00 +0000",
        f"Message-ID: <{abs(hash(subject))}@example.test>",
        "MIME-Version: 1.0",
        'Content-Type: multipart/mixed; boundary="b0"',
        "",
    ]
    for headers, content_type, body in parts:
        lines += ["--b0", f"Content-Type: {content_type}", *([headers] if headers else [])]
        lines += ["Content-Transfer-Encoding: base64", ""]
        lines += [base64.encodebytes(body).decode().strip()]
    lines += ["--b0--", ""]
    return "\r\n".join(lines).encode()


def test_nul_characters_are_stored_through_every_receipt_entry_point(
    db_url, tmp_path, mailbox, capsys, monkeypatch
):
    """A mail subject and sender with %00, a file name with NUL, a PDF text and a mail text with
    NUL, a vendor and a reason typed with NUL: every one is stored (as U+FFFD) and nothing stops."""
    dovecot, user, password = mailbox
    app = mail_app(db_url, tmp_path, mailbox, export_destination=f"file://{tmp_path}/out")
    try:
        pdf = pdf_with_text(["Shop A", "2026-11-20", "Total 1,100.00 THB \\000 paid"])
        dovecot.deliver(
            user,
            password,
            raw_message(
                "=?utf-8?q?receipt_=00_one?=",
                [("Content-Disposition: attachment; filename*=utf-8''r%00.pdf", "application/pdf", pdf)],
            ),
        )
        text = b"Shop B\n2026-11-20\nTotal 2,200.00 THB\x00\n"
        dovecot.deliver(
            user, password, raw_message("=?utf-8?q?=00?=", [("", "text/plain; charset=utf-8", text)])
        )
        dovecot.deliver(
            user,
            password,
            raw_message(
                "=?utf-8?q?zip=00?=",
                [
                    (
                        "Content-Disposition: attachment; filename*=utf-8''z%00.zip",
                        "application/zip",
                        b"PK\x03\x04\x00",
                    )
                ],
            ),
        )
        counts = run_task(app, SCAN)  # the scan and both processing chains complete
        assert (counts["messages"], counts["new_receipts"], counts["skipped"]) == (3, 2, 1)
        store = ReceiptStore(app)
        pdf_receipt, text_receipt = sorted(store.list(), key=lambda r: r.id)
        assert pdf_receipt.original_name == "r\ufffd.pdf" and pdf_receipt.total == Decimal("1100.00")
        assert "\ufffd paid" in store.text(pdf_receipt.id) and "\ufffd" in store.text(text_receipt.id)
        assert store.sources(pdf_receipt.id)[0]["subject"] == "receipt \ufffd one"
        assert store.sources(pdf_receipt.id)[0]["sender"].startswith("Shop\ufffd")
        assert store.skipped()[0]["name"] == "z\ufffd.zip" and store.skipped()[0]["subject"] == "zip\ufffd"
        assert {r.status for r in store.list()} == {"draft"}

        client = api_client(app)
        done = client.post(f"/api/receipts/{pdf_receipt.id}/approve", json={"vendor": "Shop\x00A"})
        assert done.status_code == 200 and done.json()["receipt"]["vendor"] == "Shop\ufffdA"
        rejected = client.post(f"/api/receipts/{text_receipt.id}/reject", json={"reason": "dup\x00"})
        assert rejected.status_code == 200 and rejected.json()["reason"] == "dup\ufffd"

        dovecot.deliver(user, password, samples.message("third", [("t.pdf", pdf + b"%3", "application/pdf")]))
        run_task(app, SCAN)
        third = store.list()[0]
        for key, value in cli_env(app).items():
            if key.startswith("LEDGERFLOW_"):
                monkeypatch.setenv(key, value)
        code, out, err = run_cli(
            capsys, "receipts", "approve", str(third.id), "--vendor", "Shop\x00C", "--json"
        )
        assert code == 0, err
        assert json.loads(out)["entry"]["description"].startswith("Shop\ufffdC")
        dovecot.deliver(user, password, samples.message("4th", [("4.pdf", pdf + b"%4", "application/pdf")]))
        run_task(app, SCAN)
        fourth = store.list()[0]
        code, out, err = run_cli(capsys, "receipts", "reject", str(fourth.id), "--reason", "dup\x00licate")
        assert code == 0 and store.get(fourth.id).reason == "dup\ufffdlicate", err
    finally:
        app.close()


def test_concurrent_scans_store_every_message_once_and_exit_cleanly(receipt_app, mailbox):
    """Three real `ledgerflow receipts scan` processes race over one mailbox."""
    app = receipt_app
    dovecot, user, password = mailbox
    total = 24
    base = samples.pdf(samples.japanese_lines())
    for i in range(total):
        same = base if i % 6 == 0 else base + f"\n% copy {i}\n".encode()  # some share one file
        dovecot.deliver(user, password, samples.message(f"r{i}", [(f"r{i}.pdf", same, "application/pdf")]))
    env = cli_env(app)
    args = [sys.executable, "-m", "ledgerflow", "receipts", "scan", "--json"]
    procs = [
        subprocess.Popen(args, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    results = [(*p.communicate(timeout=180), p.returncode) for p in procs]
    for _, err, code in results:
        assert code == 0 and "Error" not in err, err
    counts = [json.loads(out) for out, _, _ in results]
    assert sum(c["messages"] for c in counts) == total
    assert sum(c["messages"] + c["stored_by_another_scan"] for c in counts) >= total
    with app.db.read() as conn:
        uids = conn.execute(select(receipt_sources.c.uid)).scalars().all()
        stored = conn.execute(select(func.count()).select_from(receipts)).scalar_one()
        assert conn.execute(select(func.count()).select_from(mail_skipped)).scalar_one() == 0
    assert sorted(uids) == list(range(1, total + 1))  # every message once
    assert stored == total - total // 6 + 1  # the shared file is one receipt


def test_a_scan_hit_by_a_fault_at_any_statement_stores_each_message_and_skip_once(receipt_app, mailbox):
    """A transient error after each statement of a scan in turn (a COMMIT included: the
    ambiguous case), then the next scan: every receipt, source, skip and chain exactly once."""
    from sqlalchemy import delete

    from ledgerflow.db.tables import jobs, mail_cursors
    from ledgerflow.errors import DatabaseUnavailable
    from ledgerflow.receipts.mail import scan
    from tests.faults import StatementFaults

    app = receipt_app
    dovecot, user, password = mailbox
    messages = not_receipts(64 * 1024)
    for name in ("html", "zip", "chat"):
        dovecot.deliver(user, password, messages[name])
    pdf = samples.pdf(samples.japanese_lines())
    dovecot.deliver(user, password, samples.message("pdf", [("r.pdf", pdf, "application/pdf")]))

    def stored() -> tuple:
        with app.db.read() as conn:
            sources = sorted(conn.execute(select(receipt_sources.c.uid, receipt_sources.c.part)).all())
            skips = sorted(conn.execute(select(mail_skipped.c.uid, mail_skipped.c.part)).all())
            chains = conn.execute(select(func.count()).select_from(jobs)).scalar_one()
            count = conn.execute(select(func.count()).select_from(receipts)).scalar_one()
        return sources, skips, chains, count

    def forget() -> None:
        with app.db.begin() as conn:
            for table in (jobs, receipt_sources, mail_skipped, receipts, mail_cursors):
                conn.execute(delete(table))

    counting = StatementFaults().install(app.db.engine)
    scan(app)
    counting.uninstall()
    expected = stored()
    assert expected[:2] == ([(1, 0), (4, 2)], [(1, 3), (2, 2), (3, 0)])  # (uid, part): 0 the text
    for k in range(1, counting.count + 1):
        forget()
        faults = StatementFaults("error_after", k).install(app.db.engine)
        try:
            scan(app)
        except DatabaseUnavailable:
            pass
        finally:
            faults.uninstall()
        scan(app)  # the job's retry
        assert stored() == expected, (k, faults.fired)
