"""Mail → receipt → draft → approval → the daily export's CSV, against a real Dovecot, on both backends."""

from __future__ import annotations

import csv
import json
from datetime import date
from pathlib import Path

import pytest
from sqlalchemy import func, select

from ledgerflow.builtin import build_app
from ledgerflow.config import load_settings
from ledgerflow.db.tables import receipt_sources, receipts
from ledgerflow.errors import BadInput
from ledgerflow.export.saga import ExportSaga
from ledgerflow.receipts.report import publish_report
from ledgerflow.receipts.store import ReceiptStore
from ledgerflow.receipts.tasks import DEDUP, SCAN
from tests.conftest import run_cli
from tests.fakes import receipts as samples
from tests.receipts.conftest import mail_app, run_task

DAY = date(2026, 11, 20)
pytestmark = pytest.mark.usefixtures("ocr_ready")


def _deliver_samples(mailbox) -> bytes:
    dovecot, user, password = mailbox
    jp_pdf = samples.pdf(samples.japanese_lines())
    th_png = samples.image(samples.thai_lines())
    dovecot.deliver(user, password, samples.message("領収書", [("receipt.pdf", jp_pdf, "application/pdf")]))
    dovecot.deliver(
        user,
        password,
        samples.message(
            "ใบเสร็จ + the same PDF again",
            [("coffee.png", th_png, "image/png"), ("copy.pdf", jp_pdf, "application/pdf")],
        ),
    )
    dovecot.deliver(
        user, password, samples.message("broken", [("broken.pdf", b"%PDF-1.4\n garbage", "application/pdf")])
    )
    dovecot.deliver(user, password, samples.message("no attachment", []))
    return jp_pdf


def test_mail_becomes_drafts_filed_then_approved_into_the_daily_export(receipt_app, mailbox, tmp_path):
    app = receipt_app
    _deliver_samples(mailbox)
    counts = run_task(app, SCAN)
    assert counts == {
        "messages": 4,
        "attachments": 4,
        "new_receipts": 3,
        "duplicates": 1,
        "skipped": 1,  # the message without an attachment, recorded with its reason
        "stored_by_another_scan": 0,
    }
    store = ReceiptStore(app)
    by_name = {r.original_name: r for r in store.list()}
    jp, th, broken = by_name["receipt.pdf"], by_name["coffee.png"], by_name["broken.pdf"]
    assert len(store.sources(jp.id)) == 2  # the exact duplicate was merged into one receipt

    assert (jp.status, jp.vendor, jp.receipt_date) == ("draft", "株式会社サンプル商店", DAY)
    assert (jp.currency, str(jp.total), str(jp.tax), jp.tax_rate) == ("JPY", "2160", "160", 8)
    assert jp.expense_account == "5210:Meeting expenses"  # the keyword rule
    assert (th.status, th.receipt_date, th.currency, str(th.total), str(th.tax)) == (
        "draft",
        DAY,
        "THB",
        "535.00",
        "35.00",
    )
    assert broken.status == "review" and broken.reason.startswith("malformed PDF (cannot read it")

    # filed at the destination by the chained jobs, named by date, vendor and amount
    out = tmp_path / "out"
    assert (out / "2026/11/2026-11-20_サンプル商店_2160.pdf").read_bytes() == store.path(jp).read_bytes()
    assert (out / f"2026/11/{Path(th.filed_name).name}").is_file()
    assert th.filed_name == "2026/11/2026-11-20_ตัวอย่าง_535.00.png"  # the Thai name whole, marks kept

    # a second scan fetches nothing again
    assert run_task(app, SCAN)["messages"] == 0

    # approve: the drafts become journal entries queued for the evening's export
    store.approve(jp.id)
    store.approve(th.id)
    with pytest.raises(BadInput, match="needs --total, --date, --vendor"):
        store.approve(broken.id)
    result = ExportSaga(app).run_daily(DAY)
    assert result.state == "completed" and result.entry_count == 2
    exported = "".join(Path(f["path"]).read_text(encoding="utf-8-sig") for f in result.files if "path" in f)
    if not exported:
        exported = "".join(p.read_text(encoding="utf-8-sig") for p in out.glob("*.csv"))
    assert f"RCPT-{jp.id}" in exported and f"RCPT-{th.id}" in exported
    rows = list(csv.reader(exported.splitlines()))
    assert any("5210" in row and "2000" in row for row in rows)  # expense net of the 8 % tax


def test_duplicates_are_flagged_never_deleted_and_the_month_is_reported(receipt_app, mailbox, tmp_path):
    app = receipt_app
    dovecot, user, password = mailbox
    first = samples.image(samples.thai_lines())
    rephotographed = samples.image(samples.thai_lines(), kind="JPEG")  # same receipt, different file
    dovecot.deliver(user, password, samples.message("a", [("a.png", first, "image/png")]))
    dovecot.deliver(user, password, samples.message("b", [("b.jpg", rephotographed, "image/jpeg")]))
    run_task(app, SCAN)
    # flagged when read (whichever was read second) or by the sweep (both read at once)
    assert run_task(app, DEDUP)["flagged"] in (0, 1)
    assert run_task(app, DEDUP) == {"flagged": 0}  # idempotent
    store = ReceiptStore(app)
    a, b = sorted(store.list(), key=lambda r: r.status)  # draft, review
    assert a.status == "draft" and b.status == "review" and b.duplicate_of == a.id
    assert f"possible duplicate of receipt {a.id}" in b.reason
    assert store.path(b).is_file()
    store.reject(b.id, "duplicate of the photo")
    with app.db.read() as conn:
        assert conn.execute(select(func.count()).select_from(receipts)).scalar_one() == 2
        assert conn.execute(select(func.count()).select_from(receipt_sources)).scalar_one() == 2

    report = publish_report(app, "2026-11")
    assert report["counts"] == {
        "processed": 1,
        "approved": 0,
        "pending_review": 0,
        "failed": 0,
        "rejected": 1,
    }
    folder = tmp_path / "out" / "reports" / "2026-11"
    csv_text = next(folder.glob("*.csv")).read_text(encoding="utf-8-sig")
    assert "account,5900:Miscellaneous expense,THB,1,500.00,35.00,535.00" in csv_text
    assert "tax_rate,7 %,THB,1,500.00,35.00,535.00" in csv_text
    page = next(folder.glob("*.html")).read_text(encoding="utf-8")
    assert "<svg" in page and "ตัวอย่าง" in page and "<script" not in page and "http" not in page


def test_missing_or_wrong_mail_settings_are_one_clear_error(db_url, tmp_path, dovecot):
    from ledgerflow.receipts.mail import scan

    bare = build_app(load_settings(database_url=db_url, log_level="WARNING"))
    with pytest.raises(
        BadInput, match="LEDGERFLOW_IMAP_HOST, LEDGERFLOW_IMAP_USER, LEDGERFLOW_IMAP_PASSWORD"
    ):
        scan(bare)
    bare.close()
    wrong = build_app(
        load_settings(
            database_url=db_url,
            imap_host="127.0.0.1",
            imap_port=dovecot.port,
            imap_ssl=False,
            imap_user="nobody@example.test",
            imap_password="wrong",
            log_level="WARNING",
        )
    )
    with pytest.raises(BadInput, match=r"IMAP login refused for nobody@example\.test"):
        scan(wrong)
    wrong.close()


def test_receipts_through_the_cli_and_the_api(receipt_app, mailbox, monkeypatch, capsys):
    from fastapi.testclient import TestClient

    from ledgerflow.api.app import create_api

    app = receipt_app
    _deliver_samples(mailbox)
    run_task(app, SCAN)
    store = ReceiptStore(app)
    broken = next(r for r in store.list() if r.original_name == "broken.pdf")
    draft = next(r for r in store.list() if r.original_name == "receipt.pdf")

    token = "receipts-test-token-0123"
    client = TestClient(
        create_api(app, token=token),
        base_url="http://localhost",
        headers={"Authorization": f"Bearer {token}"},
    )
    listed = client.get("/api/receipts", params={"status": "review"}).json()
    assert [r["id"] for r in listed["receipts"]] == [broken.id] and listed["counts"]["draft"] == 2
    approved = client.post(f"/api/receipts/{draft.id}/approve", json={"account": "5300:Supplies"}).json()
    assert (
        approved["entry"]["reference"] == f"RCPT-{draft.id}" and approved["receipt"]["status"] == "approved"
    )
    assert client.post(f"/api/receipts/{draft.id}/approve").status_code == 409

    for key, value in app.settings.model_dump().items():
        if value is not None and key.startswith(("imap", "receipt", "database_url", "export")):
            raw = value.get_secret_value() if hasattr(value, "get_secret_value") else value
            monkeypatch.setenv(
                f"LEDGERFLOW_{key.upper()}", json.dumps(raw) if isinstance(raw, dict) else str(raw)
            )

    def cli(*args: str) -> tuple[int, str, str]:
        return run_cli(capsys, *args)

    code, out, _ = cli("receipts", "list", "--status", "review", "--json")
    assert code == 0 and [r["id"] for r in json.loads(out)] == [broken.id]
    code, out, _ = cli(
        "receipts", "approve", str(broken.id), "--total", "1100", "--date", "2026-11-20", "--vendor", "Cafe",
        "--currency", "JPY",
    )  # fmt: skip
    assert code == 0 and f"entry RCPT-{broken.id} queued" in out
    code, _, err = cli("receipts", "approve", "999999")
    assert code == 2 and "no receipt 999999" in err


def test_a_scan_killed_mid_mailbox_resumes_without_losing_or_repeating_a_message(receipt_app, mailbox):
    """SIGKILL a real `ledgerflow receipts scan` after some messages; the next scan takes the rest."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from ledgerflow.db.tables import jobs, mail_cursors
    from tests.conftest import ROOT

    app = receipt_app
    dovecot, user, password = mailbox
    total = 30
    base = samples.pdf(samples.japanese_lines())
    for i in range(total):  # distinct files (a comment after %%EOF), one drawing of the PDF
        data = base + f"\n% copy {i}\n".encode()
        dovecot.deliver(user, password, samples.message(f"r{i}", [(f"r{i}.pdf", data, "application/pdf")]))
    s = app.settings
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "LEDGERFLOW_DATABASE_URL": s.database_url,
        "LEDGERFLOW_IMAP_HOST": "127.0.0.1",
        "LEDGERFLOW_IMAP_PORT": str(s.imap_port),
        "LEDGERFLOW_IMAP_SSL": "false",
        "LEDGERFLOW_IMAP_USER": user,
        "LEDGERFLOW_IMAP_PASSWORD": password,
        "LEDGERFLOW_RECEIPTS_DIR": s.receipts_dir,
        "LEDGERFLOW_LOG_LEVEL": "ERROR",
    }
    proc = subprocess.Popen([sys.executable, "-m", "ledgerflow", "receipts", "scan"], env=env, cwd=ROOT)

    def cursor() -> int:
        with app.db.read() as conn:
            return int(conn.execute(select(func.coalesce(func.max(mail_cursors.c.last_uid), 0))).scalar_one())

    deadline = time.monotonic() + 60
    while cursor() < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    stopped_at = cursor()
    assert 3 <= stopped_at < total, f"the scan was not interrupted mid-mailbox (cursor {stopped_at})"

    assert run_task(app, SCAN)["messages"] == total - stopped_at
    with app.db.read() as conn:
        sources = conn.execute(select(receipt_sources.c.uid)).scalars().all()
        chains = conn.execute(
            select(func.count()).select_from(jobs).where(jobs.c.task == "ledgerflow.receipts.process")
        ).scalar_one()
    assert sorted(sources) == list(range(1, total + 1))  # every message once, none twice
    assert chains == total  # one processing job per receipt
    read = ReceiptStore(app).list(limit=total)
    assert len(read) == total and {r.status for r in read} <= {"draft", "review"}
    # the same receipt 30 times: all but the first read are flagged as its possible duplicates
    assert all(r.reason.startswith("possible duplicate of receipt") for r in read if r.status == "review")


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # filing does not touch the backend
@pytest.mark.parametrize("where", ["s3", "gdrive"])
def test_receipts_are_filed_once_on_s3_and_google_drive(where, db_url, tmp_path, mailbox, request):
    from ledgerflow.receipts.tasks import file_receipt

    dovecot, user, password = mailbox
    if where == "s3":
        endpoint, client, bucket = request.getfixturevalue("moto_s3")
        place = {"receipt_destination": f"s3://{bucket}/receipts", "s3_endpoint_url": endpoint}
    else:
        drive = request.getfixturevalue("fake_drive")
        place = {"receipt_destination": "gdrive://RECEIPTS", "gdrive_endpoint": drive.url}
    app = mail_app(db_url, tmp_path, mailbox, **place)
    try:
        data = samples.pdf(samples.japanese_lines())
        dovecot.deliver(user, password, samples.message("領収書", [("receipt.pdf", data, "application/pdf")]))
        run_task(app, SCAN)
        store = ReceiptStore(app)
        (receipt,) = store.list()
        name = "2026/11/2026-11-20_サンプル商店_2160.pdf"
        assert receipt.filed_name == name
        store.set_filed(receipt.id, filed_name=None)  # as if the job died after the upload
        assert file_receipt(app, receipt.id)["filed"] == name  # the retry finds the same file
        if where == "s3":
            objects = client.list_objects_v2(Bucket=bucket)["Contents"]
            assert [o["Key"] for o in objects] == [f"receipts/{name}"]
            head = client.head_object(Bucket=bucket, Key=f"receipts/{name}")
            assert head["ContentType"] == "application/pdf"
            assert client.get_object(Bucket=bucket, Key=f"receipts/{name}")["Body"].read() == data
        else:
            files = drive.in_folder("RECEIPTS")
            assert [f["name"] for f in files] == [name] and files[0]["content"] == data
            assert files[0]["mimeType"] == "application/pdf"
    finally:
        app.close()
