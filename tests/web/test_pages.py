"""The queues, alerts and receipts pages and the job page's progress, through real HTTP on both
backends: every action needs the session's CSRF token, bad input is refused with one message and
changes nothing, and stored receipt files are served only from the receipts folder."""

from __future__ import annotations

import html
import io
import os
import re
from datetime import date
from decimal import Decimal

import httpx
import pytest
from PIL import Image

from ledgerflow.engine.jobs import JobSpec
from ledgerflow.engine.leases import LeaseSQL
from ledgerflow.engine.progress import ProgressReport, write_progress
from ledgerflow.errors import NotFound
from ledgerflow.receipts.parse import Reading
from ledgerflow.receipts.store import ReceiptStore
from tests.web.test_sign_in import csrf_of
from tests.web.test_sign_in import signed_in as signed_in_quick


@pytest.fixture
def service(serve_app, tmp_path):
    """The dashboard's server, keeping receipt files in the test's own folder."""
    return serve_app(receipts_dir=str(tmp_path / "receipts"))


def signed_in(url: str) -> httpx.Client:
    """A signed-in client that waits as long as a loaded machine needs (rendering a PDF page)."""
    client = signed_in_quick(url)
    client.timeout = httpx.Timeout(120)
    return client


def post(client: httpx.Client, path: str, page: str, **fields: str) -> httpx.Response:
    """Submit a dashboard form as a browser would (CSRF from the page, Referer of the page)."""
    return client.post(path, data={"csrf": csrf_of(client, page), **fields}, headers={"referer": page})


def flash(response: httpx.Response, client: httpx.Client) -> str:
    assert response.status_code == 303, response.text
    page = client.get(response.headers["location"]).text
    match = re.search(r'<div class="flash" role="status">(.*?)</div>', page, re.S)
    assert match, page[:500]
    return html.unescape(match.group(1))


# ---------------------------------------------------------------- queues and tasks
def test_queues_and_tasks_pause_and_resume_from_the_queues_page(service):
    app = service.app
    client = signed_in(service.url)
    page = client.get("/queues").text
    assert 'id="queue-default"' in page and 'id="task-ledgerflow.export.daily"' in page

    said = flash(post(client, "/queues/default/pause", "/queues"), client)
    assert said == "queue default paused"
    assert [p.name for p in app.store.pauses() if p.kind == "queue"] == ["default"]
    assert "paused from the dashboard" in client.get("/queues").text
    assert (
        flash(post(client, "/queues/default/pause", "/queues"), client) == "queue default was already paused"
    )
    assert flash(post(client, "/queues/default/resume", "/queues"), client) == "queue default resumed"
    assert app.store.pauses() == []

    assert flash(post(client, "/tasks/ledgerflow.export.daily/pause", "/queues"), client) == (
        "task ledgerflow.export.daily paused"
    )
    assert [(p.kind, p.name) for p in app.store.pauses()] == [("task", "ledgerflow.export.daily")]
    assert flash(post(client, "/tasks/ledgerflow.export.daily/resume", "/queues"), client) == (
        "task ledgerflow.export.daily resumed"
    )
    assert app.store.pauses() == []


def test_resuming_an_auto_stopped_task_resolves_its_alert(service):
    app = service.app
    app.store.pause("task", "web.flaky", "failing 9 of 10", by="autostop")
    app.alerts.raise_alert("autostop:web.flaky", "error", "web.flaky stopped", "failing 9 of 10")
    client = signed_in(service.url)
    assert "auto-stopped" in client.get("/queues").text
    post(client, "/tasks/web.flaky/resume", "/queues")
    assert app.store.pauses() == [] and not app.alerts.is_open("autostop:web.flaky")


@pytest.mark.parametrize(
    ("path", "answer"),
    [
        ("/queues/bad%20name!/pause", "queue name"),
        ("/tasks/" + "x" * 300 + "/pause", "task name"),
    ],
)
def test_a_bad_name_is_refused_and_nothing_is_paused(service, path, answer):
    client = signed_in(service.url)
    said = flash(post(client, path, "/queues"), client)
    assert answer in said, said
    assert service.app.store.pauses() == []


def test_pausing_needs_the_csrf_token(service):
    client = signed_in(service.url)
    forged = client.post("/queues/default/pause", data={"csrf": "forged"})
    assert forged.status_code == 403
    anonymous = httpx.post(f"{service.url}/tasks/web.flaky/pause", data={"csrf": csrf_of(client)})
    assert anonymous.status_code == 403
    assert client.post("/queues/default/explode", data={"csrf": csrf_of(client)}).status_code == 404
    assert service.app.store.pauses() == []


# ---------------------------------------------------------------- alerts
def test_the_alerts_page_lists_open_and_resolved_alerts_with_filters(service):
    alerts = service.app.alerts
    alerts.raise_alert("queue_overflow:mail", "warning", "mail queue overflowing", "5000 waiting")
    alerts.raise_alert("breaker:s3://books", "critical", "exports to s3://books stopped", "open")
    alerts.raise_alert("job_dead:web.flaky", "error", "web.flaky died", "RuntimeError")
    alerts.resolve("job_dead:web.flaky", "retried")
    client = signed_in(service.url)

    every = client.get("/alerts").text
    for title in ("mail queue overflowing", "exports to s3://books stopped", "web.flaky died"):
        assert title in every
    opened = client.get("/alerts", params={"state": "open"}).text
    assert "mail queue overflowing" in opened and "web.flaky died" not in opened
    resolved = client.get("/alerts", params={"state": "resolved"}).text
    assert "web.flaky died" in resolved and "mail queue overflowing" not in resolved
    critical = client.get("/alerts", params={"severity": "critical"}).text
    assert "exports to s3://books stopped" in critical and "mail queue overflowing" not in critical
    by_kind = client.get("/alerts", params={"kind": "queue_overflow"}).text
    assert "mail queue overflowing" in by_kind and "web.flaky died" not in by_kind

    bad = client.get("/alerts", params={"severity": "loud"})
    assert bad.status_code == 200 and "unknown severity 'loud'" in html.unescape(bad.text)
    assert "no alerts match" in bad.text


# ---------------------------------------------------------------- receipts
def png_bytes() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (120, 200), "white").save(out, format="PNG")
    return out.getvalue()


def pdf_bytes() -> bytes:
    from fpdf import FPDF

    pdf = FPDF(format=(105, 148))
    pdf.add_page()
    pdf.set_font("helvetica", size=12)
    pdf.cell(text="Shop K  total 535.00")
    return bytes(pdf.output())


def stored_receipt(app, data: bytes, extension: str, reading: Reading, uid: int) -> int:
    """A receipt kept and read as the receipt tasks would (without the mail and the OCR)."""
    store = ReceiptStore(app)
    sha = store.keep_file(data, extension)
    content_type = {"png": "image/png", "pdf": "application/pdf"}[extension]
    with app.db.begin() as tx:
        source = {"mailbox": "books@example.com/INBOX", "uid_validity": 1, "uid": uid, "part": 1}
        receipt_id, _ = store.ingest(
            tx, sha256=sha, source=source, content_type=content_type, extension=extension,
            size=len(data), name=f"scan-{uid}.{extension}",
        )  # fmt: skip
    store.record_reading(receipt_id, "Shop K 535.00", reading, "5200:Office", "default account")
    return receipt_id


@pytest.fixture
def receipts(service):
    app = service.app
    unsure = Reading(vendor="Shop K", date=date(2026, 11, 20), currency="THB", problems=["no total found"])
    sure = Reading(
        vendor="Shop K", date=date(2026, 11, 21), currency="THB", currency_seen=True,
        total=Decimal("535.00"), tax=Decimal("35.00"), tax_rate=7,
    )  # fmt: skip
    return stored_receipt(app, png_bytes(), "png", unsure, 1), stored_receipt(
        app, pdf_bytes(), "pdf", sure, 2
    )


def test_receipts_to_review_are_listed_and_previewed(service, receipts):
    image_id, pdf_id = receipts
    client = signed_in(service.url)
    listed = client.get("/receipts").text
    assert f'id="receipt-{image_id}"' in listed and f'id="receipt-{pdf_id}"' in listed
    page = client.get(f"/receipts/{image_id}").text
    assert "no total found" in page and 'value="Shop K"' in page and 'value="2026-11-20"' in page

    image = client.get(f"/receipts/{image_id}/preview")
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    assert image.content == png_bytes() or image.content.startswith(b"\x89PNG")
    assert image.headers["x-content-type-options"] == "nosniff"
    rendered = client.get(f"/receipts/{pdf_id}/preview")
    assert rendered.status_code == 200 and rendered.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(rendered.content)).size[0] == 1000, "the first page rendered 1000 px wide"
    original = client.get(f"/receipts/{pdf_id}/file")
    assert original.content.startswith(b"%PDF") and original.headers["content-type"] == "application/pdf"
    assert original.headers["content-disposition"] == f"attachment; filename=receipt-{pdf_id}.pdf"

    assert client.get("/receipts/999999/preview").status_code == 404
    assert client.get("/receipts/999999").status_code == 200 and "There is no receipt 999999" in (
        client.get("/receipts/999999").text
    )
    assert httpx.get(f"{service.url}/receipts/{image_id}/preview", timeout=120).status_code == 303, (
        "signed in only"
    )


@pytest.mark.parametrize("target", ["outside", "inside"])
def test_a_stored_file_replaced_by_a_symlink_is_not_served(service, receipts, tmp_path, target):
    image_id, _ = receipts
    store = ReceiptStore(service.app)
    path = store.path(store.get(image_id))
    secret = tmp_path / "secret.png" if target == "outside" else path.parent / "other.png"
    secret.write_bytes(b"\x89PNG not for you")
    path.unlink()
    os.symlink(secret, path)
    client = signed_in(service.url)
    for view in ("preview", "file"):
        r = client.get(f"/receipts/{image_id}/{view}")
        assert r.status_code == 404 and b"not for you" not in r.content, view


def test_a_stored_file_recorded_outside_its_folder_is_not_served(service, receipts, tmp_path):
    from ledgerflow.db.tables import receipts as receipts_table

    image_id, _ = receipts
    with service.app.db.begin() as conn:
        conn.execute(
            receipts_table.update().where(receipts_table.c.id == image_id).values(sha256="../../etc/passwd")
        )
    client = signed_in(service.url)
    assert client.get(f"/receipts/{image_id}/preview").status_code == 404
    assert client.get(f"/receipts/{image_id}/file").status_code == 404


@pytest.mark.parametrize(
    ("fields", "answer"),
    [
        ({"total": "1,10,0"}, "--total"),
        ({"total": "1e3"}, "--total"),
        ({"total": "535.001"}, "--total"),
        ({"total": "-5"}, "total must be > 0"),
        ({"total": "535.00", "tax": "35.00", "tax_rate": "seven"}, "whole percentage"),
        ({"total": "535.00", "on": "20/11/2026"}, "must be YYYY-MM-DD"),
        ({"total": "535.00", "account": "no colon"}, "account"),
    ],
)
def test_a_bad_correction_is_refused_and_nothing_is_booked(service, receipts, fields, answer):
    image_id, _ = receipts
    client = signed_in(service.url)
    said = flash(post(client, f"/receipts/{image_id}/approve", f"/receipts/{image_id}", **fields), client)
    assert answer in said, said
    receipt = ReceiptStore(service.app).get(image_id)
    assert receipt.status == "review" and receipt.entry_reference is None
    with pytest.raises(NotFound):
        service.app.ledger.get(f"RCPT-{image_id}")


def test_approve_with_corrections_books_the_entry_and_the_account_is_learned(service, receipts):
    image_id, pdf_id = receipts
    client = signed_in(service.url)
    said = flash(
        post(
            client,
            f"/receipts/{image_id}/approve",
            f"/receipts/{image_id}",
            total="1100.00",
            tax="100.00",
            tax_rate="10",
            account="5210:Meeting expenses",
        ),
        client,
    )
    assert said == f"receipt {image_id} approved: entry RCPT-{image_id}"
    receipt = ReceiptStore(service.app).get(image_id)
    assert receipt.status == "approved" and receipt.total == Decimal("1100.00")
    assert receipt.expense_account == "5210:Meeting expenses"
    assert "RCPT-" in client.get(f"/receipts/{image_id}").text
    again = flash(
        post(client, f"/receipts/{pdf_id}/approve", f"/receipts/{pdf_id}", account="5210:Meeting expenses"),
        client,
    )
    assert again == f"receipt {pdf_id} approved: entry RCPT-{pdf_id}"
    booked = ReceiptStore(service.app).get(pdf_id)
    assert (booked.total, booked.tax, booked.tax_rate) == (Decimal("535.00"), Decimal("35.00"), 7), "as read"

    twice = client.post(f"/receipts/{image_id}/approve", data={"csrf": csrf_of(client)})
    assert f"receipt {image_id} is already approved" in client.get(twice.headers["location"]).text

    third = stored_receipt(
        service.app,
        b"%PDF-1.4 unreadable",
        "pdf",
        Reading(vendor="Shop K", date=date(2026, 11, 22), currency="THB"),
        3,
    )
    page = client.get(f"/receipts/{third}").text
    assert 'id="learned"' in page and "5210:Meeting expenses" in page
    assert "chosen in 2 of 2 approvals" in page
    assert client.get(f"/receipts/{third}/preview").status_code == 404, "a PDF PDFium cannot read"
    assert client.get(f"/receipts/{third}/file").content == b"%PDF-1.4 unreadable"


def test_reject_needs_a_reason(service, receipts):
    image_id, _ = receipts
    client = signed_in(service.url)
    said = flash(post(client, f"/receipts/{image_id}/reject", f"/receipts/{image_id}", reason="  "), client)
    assert said == "give the reason for rejecting (1-500 characters)"
    assert ReceiptStore(service.app).get(image_id).status == "review"
    said = flash(
        post(client, f"/receipts/{image_id}/reject", f"/receipts/{image_id}", reason="duplicate of 7"),
        client,
    )
    assert said == f"receipt {image_id} rejected: duplicate of 7"
    receipt = ReceiptStore(service.app).get(image_id)
    assert receipt.status == "rejected" and receipt.reason == "duplicate of 7"
    assert client.post(f"/receipts/{image_id}/reject", data={"csrf": "x", "reason": "y"}).status_code == 403


# ---------------------------------------------------------------- job progress
def test_the_job_page_shows_the_progress_its_worker_wrote(service):
    app = service.app
    job = app.enqueue(JobSpec("web.flaky", args=["x"]))
    with app.db.begin() as conn:
        (claim,) = LeaseSQL(app.db, 60).claim(
            conn, worker_id="w", queues=["default"], tasks=["web.flaky"], limit=1
        )
    report = ProgressReport(job.id, claim.job.attempt, claim.token)
    report.progress(40, "page 2 of 5")
    report.set_metadata({"file": "ใบเสร็จ.pdf"})
    with app.db.begin() as conn:
        write_progress(conn, [(report, report.take_pending())])
    client = signed_in(service.url)
    live = client.get(f"/jobs/{job.id}", params={"partial": 1}).text
    assert 'value="40"' in live and "page 2 of 5" in live and "ใบเสร็จ.pdf" in live
    assert f'data-live="/jobs/{job.id}?partial=1"' in client.get(f"/jobs/{job.id}").text
    shown = service.get(f"/api/jobs/{job.id}").json()["progress"]
    assert shown["progress"] == 40 and shown["metadata"] == {"file": "ใบเสร็จ.pdf"}


def test_every_new_page_works_under_the_content_security_policy(service, receipts):
    client = signed_in(service.url)
    for path in ("/queues", "/alerts", "/receipts", f"/receipts/{receipts[0]}", "/jobs/1?partial=1"):
        r = client.get(path)
        assert r.status_code == 200, path
        assert "<script>" not in r.text and " style=" not in r.text and " onclick=" not in r.text, path
