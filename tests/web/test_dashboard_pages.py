"""The queues, alerts and receipts pages and a job's live progress in a real browser (Debian's
Chromium through Playwright) against `ledgerflow serve` and its own worker, on both backends."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import date
from decimal import Decimal
from pathlib import Path

import pytest
from playwright.sync_api import expect

from ledgerflow.config import load_settings
from ledgerflow.engine.jobs import JobSpec
from ledgerflow.receipts.parse import Reading
from ledgerflow.receipts.store import ReceiptStore
from tests.web.test_dashboard import SHOTS, TOKEN, browser, serve
from tests.web.test_pages import pdf_bytes, png_bytes, stored_receipt

__all__ = ["browser"]
WAIT = 120_000  # ms: a loaded machine renders a page slowly; nothing here measures time


@pytest.fixture
def seeded(db_url: str, tmp_path: Path) -> Iterator[tuple[str, dict[str, int]]]:
    """A server over a database holding two receipts to review, an open alert and a job that
    reports progress and then waits for the file `tmp_path/release`."""
    from ledgerflow.builtin import build_app

    app = build_app(
        load_settings(database_url=db_url, receipts_dir=str(tmp_path / "receipts"), log_level="ERROR")
    )
    app.sync_schedules()
    unsure = Reading(vendor="ร้านกาแฟ", date=date(2026, 11, 20), currency="THB", problems=["no total found"])
    sure = Reading(
        vendor="Shop K", date=date(2026, 11, 21), currency="THB", currency_seen=True,
        total=Decimal("535.00"), tax=Decimal("35.00"), tax_rate=7,
    )  # fmt: skip
    ids = {
        "image": stored_receipt(app, png_bytes(), "png", unsure, 1),
        "pdf": stored_receipt(app, pdf_bytes(), "pdf", sure, 2),
        "job": app.enqueue(JobSpec("web.pages", kwargs={"release": str(tmp_path / "release")})).id,
    }
    app.alerts.raise_alert("disk:receipts", "warning", "receipts disk 91% full", "9 GB left")
    app.close()
    for url in serve(db_url, tmp_path):
        yield url, ids


def shown_width(page: object) -> int:
    """The preview's natural width once the browser has loaded it (polled from here: the page's
    Content-Security-Policy forbids the eval that `wait_for_function` needs)."""
    preview = page.locator("#receipt-preview")  # type: ignore[attr-defined]
    deadline = time.monotonic() + WAIT / 1000
    while not (width := preview.evaluate("img => img.complete ? img.naturalWidth : 0")):
        assert time.monotonic() < deadline, "the preview never loaded"
        time.sleep(0.2)
    return int(width)


def test_pause_alerts_receipts_and_live_progress_in_the_browser(seeded, browser, tmp_path, backend, db_url):
    url, ids = seeded
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    refused: list[str] = []
    page.on("console", lambda m: refused.append(m.text) if "Content Security Policy" in m.text else None)
    page.goto(f"{url}/login")
    page.fill("#password", TOKEN)
    page.click("button[type=submit]")
    page.wait_for_url(f"{url}/")

    # a job's progress appears and its end shows up, without reloading the page
    page.goto(f"{url}/jobs/{ids['job']}")
    expect(page.locator("#progress-message")).to_have_text("page 2 of 3", timeout=WAIT)
    assert page.locator("progress").get_attribute("value") == "40"
    assert "ธนาคาร 2026-11" in page.locator("#progress-metadata").inner_text()
    page.screenshot(path=str(SHOTS / f"job-progress-{backend}.png"), full_page=True)
    (tmp_path / "release").touch()
    expect(page.locator("#live-state")).to_have_text("completed", timeout=WAIT)
    assert page.locator("#progress-message").inner_text() == "all 3 pages"

    # pause and resume a queue (each check waits for the page the form led to)
    page.click("header >> text=Queues")
    page.locator("#queue-default").get_by_role("button", name="Pause").click()
    expect(page.get_by_role("status")).to_have_text("queue default paused", timeout=WAIT)
    expect(page.locator("#queue-default")).to_contain_text("paused from the dashboard", timeout=WAIT)
    page.screenshot(path=str(SHOTS / f"queues-{backend}.png"), full_page=True)
    page.locator("#queue-default").get_by_role("button", name="Resume").click()
    expect(page.get_by_role("status")).to_have_text("queue default resumed", timeout=WAIT)
    page.locator("#task-web\\.flaky").get_by_role("button", name="Pause").click()
    expect(page.get_by_role("status")).to_have_text("task web.flaky paused", timeout=WAIT)

    # alerts, filtered
    page.click("header >> text=Alerts")
    expect(page.locator("table")).to_contain_text("receipts disk 91% full", timeout=WAIT)
    page.select_option("select[name=state]", "resolved")
    page.click("text=Filter")
    expect(page.locator("table")).to_contain_text("no alerts match", timeout=WAIT)
    page.select_option("select[name=state]", "open")
    page.select_option("select[name=severity]", "warning")
    page.click("text=Filter")
    expect(page.locator("table")).to_contain_text("receipts disk 91% full", timeout=WAIT)
    page.screenshot(path=str(SHOTS / f"alerts-{backend}.png"), full_page=True)

    # receipts: preview, correct and approve one, reject the other
    page.click("header >> text=Receipts")
    page.locator(f"#receipt-{ids['image']} a").click()
    assert shown_width(page) > 0
    expect(page.locator("#receipt-reason")).to_contain_text("no total found")
    page.fill("input[name=total]", "1,10,0")
    page.click("text=Approve into the books")
    expect(page.get_by_role("status")).to_contain_text("--total", timeout=WAIT)  # a bad amount is refused
    expect(page.locator("#receipt-status")).to_have_text("review")
    page.fill("input[name=total]", "85.00")
    page.click("text=Approve into the books")
    approved = f"receipt {ids['image']} approved: entry RCPT-{ids['image']}"
    expect(page.get_by_role("status")).to_have_text(approved, timeout=WAIT)
    expect(page.locator("#entry-reference")).to_have_text(f"RCPT-{ids['image']}")

    page.goto(f"{url}/receipts/{ids['pdf']}")
    assert shown_width(page) == 1000, "the PDF's first page, rendered 1000 px wide"
    page.screenshot(path=str(SHOTS / f"receipt-pdf-{backend}.png"), full_page=True)
    page.fill("input[name=reason]", "paid twice: see receipt 1")
    page.click("text=Reject")
    expect(page.locator("#receipt-status")).to_have_text("rejected", timeout=WAIT)

    phone = browser.new_page(viewport={"width": 375, "height": 812}, is_mobile=True)
    phone.context.add_cookies([c for c in page.context.cookies() if c["name"] == "ledgerflow_session"])
    for path in ("/queues", "/alerts", f"/receipts/{ids['pdf']}"):
        phone.goto(f"{url}{path}")
        assert phone.evaluate("document.documentElement.scrollWidth") <= 400, path
    assert refused == []

    from ledgerflow.builtin import build_app

    app = build_app(load_settings(database_url=db_url, receipts_dir=str(tmp_path / "receipts")))
    try:
        assert ReceiptStore(app).get(ids["image"]).total == Decimal("85.00")
        assert [(p.kind, p.name) for p in app.store.pauses()] == [("task", "web.flaky")]
    finally:
        app.close()
