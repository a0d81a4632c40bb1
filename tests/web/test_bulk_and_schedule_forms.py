"""The dashboard's search and bulk actions, and its schedule create/edit/remove forms with the
preview of the next fires, in a real browser against `ledgerflow serve` (SQLite)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import httpx

from tests.web.test_dashboard import SHOTS, TOKEN, browser, dashboard, reload_until

__all__ = ["browser", "dashboard"]  # fixtures


def _sign_in(browser, url: str):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    refused: list[str] = []
    page.on("console", lambda m: refused.append(m.text) if "Content Security Policy" in m.text else None)
    page.goto(f"{url}/login")
    page.fill("#password", TOKEN)
    page.click("button[type=submit]")
    page.wait_for_url(f"{url}/")
    return page, refused


def test_search_then_bulk_retry_and_delete_with_a_count_and_a_confirmation(dashboard, browser):
    page, refused = _sign_in(browser, dashboard)
    page.goto(f"{dashboard}/jobs")
    page.fill("#job-filters input[name=search]", "領収書")
    page.click("#job-filters button[type=submit]")
    assert page.locator("#match-count").inner_text() == "1 job(s) match."
    assert "web.flaky" in page.locator("table").inner_text()

    page.get_by_role("button", name="Retry matching…").click()
    confirm = page.locator("#bulk-confirm")
    assert "Retry 1 of the 1 matching job(s)?" in confirm.inner_text()
    page.screenshot(path=str(SHOTS / "jobs-bulk-confirm.png"), full_page=True)
    confirm.get_by_role("button", name="Yes, retry 1 job(s)").click()
    assert page.get_by_role("status").inner_text() == "retried 1 job(s)"
    assert page.locator("#job-filters input[name=search]").input_value() == "領収書", "the filter is kept"
    reload_until(page, ">completed<")  # the serve process's worker ran it again

    page.goto(f"{dashboard}/jobs?search=%E9%A0%98%E5%8F%8E%E6%9B%B8&state=completed")
    page.get_by_role("button", name="Delete matching…").click()
    page.locator("#bulk-confirm").get_by_role("button", name="Yes, delete 1 job(s)").click()
    assert page.get_by_role("status").inner_text() == "deleted 1 job(s)"
    assert page.locator("#match-count").inner_text() == "0 job(s) match."

    page.get_by_role("button", name="Cancel matching…").click()
    assert page.locator("#bulk-confirm").get_by_role("button", name="Yes, cancel 0 job(s)").is_disabled()
    page.goto(f"{dashboard}/jobs?search=ab")  # what the browser's own check would stop
    assert "text to search for must be 3..200 characters" in page.get_by_role("status").inner_text()
    page.goto(f"{dashboard}/jobs?enqueued_after=2026-01-01&enqueued_before=2020-01-01T00%3A00Z")
    assert "is not before enqueued_before" in page.get_by_role("status").inner_text()
    page.screenshot(path=str(SHOTS / "jobs-search.png"), full_page=True)
    assert refused == []


def test_jobs_filtered_by_when_they_were_enqueued_and_finished(dashboard, browser):
    """Dates (that day's start in the app's zone) or date-times with an offset; no guessing."""
    page, refused = _sign_in(browser, dashboard)
    page.goto(f"{dashboard}/jobs")
    today = datetime.now(UTC).date()
    filters = page.locator("#job-filters")
    filters.locator("input[name=finished_after]").fill((today - timedelta(days=1)).isoformat())
    filters.locator("input[name=finished_before]").fill((today + timedelta(days=2)).isoformat())
    filters.locator("button[type=submit]").click()
    listed = page.locator("table").inner_text()
    assert "web.flaky" in listed and "available" not in listed, "only finished jobs are listed"
    assert "finished_after=" in page.url and "finished_before=" in page.url
    page.screenshot(path=str(SHOTS / "jobs-finished-between.png"), full_page=True)

    later = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    filters.locator("input[name=finished_after]").fill(later)
    filters.locator("button[type=submit]").click()
    assert page.locator("#match-count").inner_text() == "0 job(s) match."
    assert filters.locator("input[name=finished_after]").input_value() == later, "the filter is kept"

    filters.locator("input[name=finished_after]").fill("")
    filters.locator("input[name=finished_before]").fill("")
    filters.locator("input[name=enqueued_after]").fill((today + timedelta(days=2)).isoformat())
    filters.locator("button[type=submit]").click()
    assert page.locator("#match-count").inner_text() == "0 job(s) match."

    filters.locator("input[name=enqueued_after]").fill("")
    filters.locator("input[name=finished_after]").fill("2026-11-30T09:00")
    filters.locator("button[type=submit]").click()
    assert page.get_by_role("status").inner_text() == (
        "finished from '2026-11-30T09:00' has no UTC offset: add one "
        "(e.g. 2026-11-30T09:00+07:00 or 2026-11-30T09:00Z), or give a date"
    )
    filters.locator("input[name=finished_after]").fill("last week")
    filters.locator("button[type=submit]").click()
    assert page.get_by_role("status").inner_text().startswith("finished from 'last week' is not a time")
    assert refused == []


def test_schedule_create_edit_remove_with_a_preview_of_the_next_five_fires(dashboard, browser):
    page, refused = _sign_in(browser, dashboard)
    page.goto(f"{dashboard}/schedules")
    page.click("text=New schedule")
    page.fill("input[name=name]", "close")
    page.fill("input[name=cron]", "0 25 * * *")
    page.select_option("select[name=task]", "ledgerflow.cleanup")
    page.get_by_role("button", name="Preview").click()
    assert "hour" in page.locator("#form-error").inner_text()
    assert page.locator("input[name=name]").input_value() == "close", "what was typed is kept"

    page.fill("input[name=cron]", "30 9 * * 1")
    page.fill("input[name=timezone]", "Asia/Tokyo")
    page.get_by_role("button", name="Preview").click()
    page.locator("#preview li").nth(4).wait_for()  # all_inner_texts does not wait for the answer
    fires = page.locator("#preview li").all_inner_texts()
    assert len(fires) == 5 and all(f.endswith("09:30:00+09:00") for f in fires), fires
    page.screenshot(path=str(SHOTS / "schedule-preview.png"), full_page=True)
    client = httpx.Client(base_url=dashboard, headers={"Authorization": f"Bearer {TOKEN}"})
    assert client.get("/api/schedules/close").status_code == 404, "a preview stores nothing"

    page.get_by_role("button", name="Save").click()
    page.wait_for_url(f"{dashboard}/schedules?*")
    assert page.get_by_role("status").inner_text().startswith(f"schedule close saved; next fire {fires[0]}")
    row = page.locator("#schedule-close")
    assert "At 09:30 on Monday, Asia/Tokyo" in row.inner_text()

    row.get_by_role("link", name="Edit").click()
    assert page.locator("input[name=cron]").input_value() == "30 9 * * 1"
    page.locator("#preview li").nth(4).wait_for()
    assert len(page.locator("#preview li").all_inner_texts()) == 5, "the edit form previews the stored timing"
    page.fill("input[name=cron]", "0 7 * * *")
    page.fill("input[name=kwargs]", '{"days": 30')
    page.get_by_role("button", name="Save").click()
    assert page.locator("#form-error").inner_text() == "kwargs is not valid JSON"
    assert client.get("/api/schedules/close").json()["cron_expression"] == "30 9 * * 1", "nothing half-saved"
    page.fill("input[name=kwargs]", "{}")
    page.get_by_role("button", name="Preview").click()
    page.locator("#preview li", has_text="07:00:00+09:00").first.wait_for()  # the new answer is in
    assert all(f.endswith("07:00:00+09:00") for f in page.locator("#preview li").all_inner_texts())
    page.get_by_role("button", name="Save").click()
    page.wait_for_url(f"{dashboard}/schedules?*")
    stored = client.get("/api/schedules/close").json()
    assert (stored["cron_expression"], stored["timezone"]) == ("0 7 * * *", "Asia/Tokyo")
    assert "At 07:00 every day" in page.locator("#schedule-close").inner_text()
    page.screenshot(path=str(SHOTS / "schedules-edited.png"), full_page=True)

    page.locator("#schedule-close").get_by_role("button", name="Remove…").click()
    assert "Remove schedule close" in page.locator("#remove-confirm").inner_text()
    page.get_by_role("button", name="Yes, remove close").click()
    assert page.get_by_role("status").inner_text() == "schedule close removed"
    assert page.locator("#schedule-close").count() == 0
    deadline = time.monotonic() + 30
    while client.get("/api/schedules/close").status_code != 404:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert page.locator("#schedule-daily_cleanup").get_by_role("link", name="Edit").count() == 0, (
        "standard schedules come from the settings: no edit form"
    )
    assert refused == []
