"""The dashboard in a real browser (Debian's Chromium through Playwright) against `ledgerflow serve`.

Screenshots of every page go to artifacts/screenshots/ (kept by CI as artifacts).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import httpx
import pytest

from ledgerflow.config import load_settings
from tests.api.conftest import free_port
from tests.conftest import ARTIFACTS, ON_CI, ROOT

TOKEN = "open-sesame-dashboard"
SHOTS = ARTIFACTS / "screenshots"
FAILED_DAY = date(2026, 11, 20)

playwright_api = pytest.importorskip("playwright.sync_api")


def chromium_path() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if ON_CI:
            pytest.fail("Chromium is not installed (.ci/run installs Debian's chromium package)")
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    return path


def seed(db_url: str, tmp: Path) -> None:
    """Demo ledger, one dead job, and a day whose export failed (its destination was a file, not a folder)."""
    from ledgerflow.builtin import build_app
    from ledgerflow.demo import load_demo_ledger
    from ledgerflow.export.saga import ExportSaga
    from tests.apps import web

    blocked = tmp / "not-a-folder"
    blocked.write_text("x")
    app = build_app(
        load_settings(
            database_url=db_url,
            export_destination=f"file://{blocked}/out",
            export_work_dir=str(tmp / "work"),
            log_level="ERROR",
        )
    )
    app.migrate()
    app.sync_schedules()
    load_demo_ledger(app, FAILED_DAY)
    assert ExportSaga(app).run_daily(FAILED_DAY).state == "retryable"
    flaky = app.task(name="web.flaky", max_attempts=1)(web.flaky.func)
    flaky.enqueue("ใบเสร็จ 領収書 receipt")
    app.run_worker("default", burst=True)
    assert app.store.list(state="dead")
    app.close()


@pytest.fixture
def dashboard(tmp_path: Path) -> Iterator[str]:
    db_url = f"sqlite:///{tmp_path / 'ledgerflow.db'}"
    seed(db_url, tmp_path)
    yield from serve(db_url, tmp_path)


def serve(db_url: str, tmp_path: Path) -> Iterator[str]:
    """`ledgerflow serve` (with its worker and scheduler) on loopback; yields its URL."""
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "LEDGERFLOW_DATABASE_URL": db_url,
        "LEDGERFLOW_API_TOKEN": TOKEN,
        "LEDGERFLOW_EXPORT_DESTINATION": f"file://{tmp_path / 'out'}",
        "LEDGERFLOW_EXPORT_WORK_DIR": str(tmp_path / "work"),
        "LEDGERFLOW_RECEIPTS_DIR": str(tmp_path / "receipts"),
        "LEDGERFLOW_LOG_LEVEL": "WARNING",
    }
    log = open(tmp_path / "serve.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "ledgerflow", "serve", "--port", str(port), "--app", "tests.apps.web:app"],
        env=env,
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"{url}/api/health").status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()
        time.sleep(0.2)
    yield url
    proc.terminate()
    proc.wait(60)
    log.close()


@pytest.fixture
def browser() -> Iterator[object]:
    SHOTS.mkdir(parents=True, exist_ok=True)
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=chromium_path(),
            args=[
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        yield b
        b.close()


def reload_until(page: object, text: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while text not in page.content():  # type: ignore[attr-defined]
        assert time.monotonic() < deadline, f"{text!r} never appeared"
        time.sleep(0.5)
        page.reload()  # type: ignore[attr-defined]


def test_operator_journey_through_the_dashboard(dashboard, browser):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    refused: list[str] = []  # what the Content-Security-Policy blocked (nothing may be)
    page.on("console", lambda m: refused.append(m.text) if "Content Security Policy" in m.text else None)
    page.goto(f"{dashboard}/")
    assert page.url.startswith(f"{dashboard}/login")
    page.fill("#password", "wrong")
    page.click("button[type=submit]")
    assert page.get_by_role("alert").inner_text() == "Wrong password."
    page.screenshot(path=str(SHOTS / "login-refused.png"))

    page.fill("#password", TOKEN)
    page.click("button[type=submit]")
    page.wait_for_url(f"{dashboard}/")
    assert "jobs waiting" in page.content() and "workers alive" in page.content()
    cookie = next(c for c in page.context.cookies() if c["name"] == "ledgerflow_session")
    assert cookie["httpOnly"] and cookie["secure"] and cookie["sameSite"] == "Strict"
    page.screenshot(path=str(SHOTS / "overview.png"), full_page=True)

    page.click("text=Dead letters")
    dead_link = page.locator("table a").first
    job_id = dead_link.inner_text()
    dead_link.click()
    assert "ใบเสร็จ 領収書 receipt" in page.content(), "Thai and Japanese arguments rendered"
    assert page.locator("#job-state").inner_text() == "dead"
    page.screenshot(path=str(SHOTS / "job-dead.png"), full_page=True)
    page.click("text=Retry now")
    reload_until(page, 'id="job-state">completed<')
    page.screenshot(path=str(SHOTS / "job-completed.png"), full_page=True)
    assert page.url.endswith(f"/jobs/{job_id}") or f"/jobs/{job_id}?" in page.url

    page.goto(f"{dashboard}/schedules")
    row = page.locator("#schedule-daily_cleanup")
    assert "At 23:00 every day, Asia/Bangkok" in row.inner_text()
    row.get_by_role("button", name="Disable").click()
    assert "disabled" in page.locator("#schedule-daily_cleanup").inner_text()
    page.screenshot(path=str(SHOTS / "schedules.png"), full_page=True)

    page.goto(f"{dashboard}/exports")
    failed = page.locator(f"#batch-daily\\:{FAILED_DAY.isoformat()}")
    assert "retryable" in failed.inner_text()
    failed.get_by_role("button", name="Re-run day").click()
    row = page.locator(f"#batch-daily\\:{FAILED_DAY.isoformat()}")
    deadline = time.monotonic() + 180
    while "completed" not in row.inner_text():
        assert time.monotonic() < deadline, row.inner_text()
        time.sleep(0.5)
        page.reload()
    page.screenshot(path=str(SHOTS / "exports.png"), full_page=True)
    download = page.request.get(
        f"{dashboard}" + page.locator("a[href*='/files/']").first.get_attribute("href")
    )
    assert download.ok and "ภาษีซื้อ" in download.body().decode("utf-8-sig")

    page.goto(f"{dashboard}/jobs?state=completed")
    page.screenshot(path=str(SHOTS / "jobs.png"), full_page=True)

    phone = browser.new_page(viewport={"width": 375, "height": 812}, is_mobile=True)
    phone.context.add_cookies([{**cookie}])
    phone.goto(f"{dashboard}/")
    assert phone.evaluate("document.documentElement.scrollWidth") <= 400, "no horizontal scrolling on a phone"
    phone.screenshot(path=str(SHOTS / "overview-phone.png"), full_page=True)
    assert refused == []

    page.goto(f"{dashboard}/jobs")
    page.click("text=Log out")
    page.wait_for_url(f"{dashboard}/login")
    phone.goto(f"{dashboard}/jobs")
    assert phone.url.startswith(f"{dashboard}/login"), "the copied cookie stopped working at logout"


def test_actions_need_the_csrf_token_and_a_session(dashboard):
    anonymous = httpx.Client(base_url=dashboard)
    assert anonymous.post("/schedules/daily_cleanup/disable", data={"csrf": "x"}).status_code == 403
    assert anonymous.get("/jobs").status_code == 303, "pages redirect to the login form"
    login = anonymous.post("/login", data={"password": TOKEN, "next": "/"})
    assert login.status_code == 303 and "HttpOnly" in login.headers["set-cookie"]
    session = {"ledgerflow_session": login.cookies["ledgerflow_session"]}
    forged = anonymous.post("/schedules/daily_cleanup/disable", data={"csrf": "forged"}, cookies=session)
    assert forged.status_code == 403 and "CSRF" in forged.text
    assert anonymous.get("/jobs", cookies=session).status_code == 200
    assert anonymous.get("/api/jobs", cookies=session).status_code == 401, (
        "the API still wants the bearer token"
    )
    assert anonymous.get("/login?next=//evil.example").status_code == 200
    evil = anonymous.post("/login", data={"password": TOKEN, "next": "//evil.example/x"})
    assert evil.headers["location"] == "/", "no open redirect"
