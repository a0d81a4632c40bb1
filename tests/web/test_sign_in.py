"""Dashboard sign-in and pages through real HTTP on both backends: only the real token signs
in, wrong passwords are throttled, logout revokes the session everywhere, downloads stay inside
the export folder, and no query string makes a page fail."""

from __future__ import annotations

import os
import re
from datetime import date
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledgerflow.export.saga import ExportSaga
from tests.api.conftest import TOKEN
from tests.api.test_api import ENTRY


def sign_in(url: str, password: str = TOKEN) -> httpx.Response:
    return httpx.post(f"{url}/login", data={"password": password, "next": "/jobs"})


def signed_in(url: str) -> httpx.Client:
    r = sign_in(url)
    assert r.status_code == 303 and r.headers["location"] == "/jobs"
    return httpx.Client(base_url=url, cookies={"ledgerflow_session": r.cookies["ledgerflow_session"]})


def csrf_of(client: httpx.Client, path: str = "/jobs") -> str:
    match = re.search(r'name="csrf" value="([0-9a-f]+)"', client.get(path).text)
    assert match
    return match.group(1)


@pytest.mark.parametrize(
    "password", ["", "wrong", TOKEN[:-1], TOKEN + "x", TOKEN.upper(), f" {TOKEN}", "Bearer " + TOKEN]
)
def test_only_the_real_token_signs_in(service, password):
    r = sign_in(service.url, password)
    assert r.status_code == 401 and "Wrong password." in r.text and "ledgerflow_session" not in r.cookies
    assert httpx.get(f"{service.url}/jobs").status_code == 303, "still signed out"


def test_wrong_passwords_are_throttled_with_retry_after(service):
    for _ in range(5):
        assert sign_in(service.url, "wrong-password").status_code == 401
    throttled = sign_in(service.url, "wrong-password")
    assert throttled.status_code == 429
    assert 1 <= int(throttled.headers["retry-after"]) <= 60
    assert "Too many wrong passwords" in throttled.text
    right = sign_in(service.url)
    assert right.status_code == 429 and "ledgerflow_session" not in right.cookies, (
        "no guessing while throttled"
    )


def test_logout_revokes_the_session_so_a_copied_cookie_stops_working(serve_app):
    first, second = serve_app(), serve_app()  # two instances on one database
    browser = signed_in(first.url)
    copied = dict(browser.cookies)
    assert httpx.get(f"{second.url}/jobs", cookies=copied).status_code == 200, "sessions live in the database"
    logout = browser.post("/logout", data={"csrf": csrf_of(browser)})
    assert logout.status_code == 303 and logout.headers["location"] == "/login"
    for url in (first.url, second.url):
        assert httpx.get(f"{url}/jobs", cookies=copied).status_code == 303, url
        refused = httpx.post(
            f"{url}/schedules/daily_cleanup/disable", data={"csrf": csrf_of(signed_in(url))}, cookies=copied
        )
        assert refused.status_code == 403, url
    assert first.app.schedules.get("daily_cleanup").enabled


def test_a_cookie_signed_with_another_token_is_refused(serve_app):
    other = serve_app(api_token="another-token-of-16-chars")
    cookie = sign_in(other.url, "another-token-of-16-chars").cookies["ledgerflow_session"]
    service = serve_app()  # same database, the test token
    assert httpx.get(f"{service.url}/jobs", cookies={"ledgerflow_session": cookie}).status_code == 303


def test_pages_work_under_the_content_security_policy(service):
    client = signed_in(service.url)
    for path in ("/", "/jobs", "/dlq", "/queues", "/schedules", "/exports", "/receipts", "/alerts", "/login"):
        r = client.get(path)
        assert r.status_code == 200, path
        assert "<script>" not in r.text and " style=" not in r.text and " onclick=" not in r.text, path
        assert "frame-ancestors 'none'" in r.headers["content-security-policy"]


def _delivered(service) -> tuple[httpx.Client, str, Path]:
    service.app.ledger.record(ENTRY)
    batch = ExportSaga(service.app).run_daily(date(2026, 11, 26))
    client = signed_in(service.url)
    link = re.search(r'href="(/exports/\d+/files/[^"]+\.csv)"', client.get("/exports").text)
    assert link
    return client, link.group(1), Path(batch.files[0]["remote_id"])


def test_a_delivered_file_downloads(service):
    client, link, path = _delivered(service)
    r = client.get(link)
    assert r.status_code == 200 and r.content == path.read_bytes()
    assert r.headers["content-disposition"].startswith("attachment; filename*=UTF-8''")


@pytest.mark.parametrize("target", ["outside", "inside"])
def test_a_delivered_file_replaced_by_a_symlink_is_not_served(service, tmp_path, target):
    client, link, path = _delivered(service)
    secret = tmp_path / "secret.txt" if target == "outside" else path.parent / "other.csv"
    secret.write_text("not for download")
    path.unlink()
    os.symlink(secret, path)
    r = client.get(link)
    assert r.status_code == 404 and "not for download" not in r.text


def test_a_file_outside_the_folder_recorded_for_a_batch_is_not_served(service, tmp_path):
    from ledgerflow.db.tables import export_batches

    client, link, path = _delivered(service)
    outside = tmp_path / "elsewhere.csv"
    outside.write_text("not for download")
    with service.app.db.begin() as conn:
        row = conn.execute(export_batches.select()).first()
        files = [{**f, "remote_id": str(path.parent / ".." / outside.name)} for f in row.files]
        conn.execute(export_batches.update().values(files=files))
    (path.parent.parent / outside.name).write_text("not for download")
    r = client.get(link)
    assert r.status_code == 404 and "not for download" not in r.text


PAGES = [
    "/", "/jobs", "/jobs/1", "/dlq", "/schedules", "/exports", "/login",
    "/queues", "/alerts", "/receipts", "/receipts/1", "/receipts/1/preview",
]  # fmt: skip
PARAMS = [
    "state", "queue", "task", "id", "before_id", "before", "flash", "partial", "confirm", "next", "x",
    "status", "severity", "kind",
]  # fmt: skip
text = st.text(st.characters(codec="utf-8"), max_size=40) | st.sampled_from(
    ["", "0", "-1", "99999999999999999999999", "9999-12-31", "notadate", "%00", "\u200f", "'\"<>"]
)


def test_no_query_string_makes_a_dashboard_page_fail(service):
    client = signed_in(service.url)

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    @given(page=st.sampled_from(PAGES), query=st.dictionaries(st.sampled_from(PARAMS), text, max_size=4))
    def check(page: str, query: dict[str, str]) -> None:
        r = client.get(page, params=query)
        assert r.status_code < 500, (page, query, r.text[:300])
        assert r.status_code in (200, 303, 400, 404, 422), (page, query, r.status_code)

    check()
    assert client.get("/exports", params={"before": "notadate"}).status_code == 422


def test_the_dashboard_lists_open_and_resolved_alerts_escaped(service):
    """docs/operations.md promised a dashboard alerts page; alerts come from outside (error
    messages, mail), so they are shown escaped."""
    alerts = service.app.alerts
    alerts.raise_alert(
        "job_dead:mail<x>", "error", "Job <b>mail</b> is dead", "RuntimeError: <script>x</script>"
    )
    alerts.raise_alert("scheduler_down", "critical", "No scheduler is running", "start one")
    alerts.resolve("scheduler_down", "a scheduler is running again")
    browser = signed_in(service.url)
    r = browser.get("/alerts")
    assert r.status_code == 200 and 'href="/alerts"' in r.text
    assert "job_dead:mail&lt;x&gt;" in r.text and "scheduler_down" in r.text, "open and resolved"
    opened, resolved = (browser.get("/alerts", params={"state": s}).text for s in ("open", "resolved"))
    assert "job_dead:mail&lt;x&gt;" in opened and "Job &lt;b&gt;mail&lt;/b&gt; is dead" in opened
    assert "<script>x" not in r.text and "&lt;script&gt;" in opened
    assert "scheduler_down" in resolved and "scheduler_down" not in opened
    assert httpx.get(f"{service.url}/alerts").status_code == 303, "signed out: to the login form"
