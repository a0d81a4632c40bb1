"""The HTTP API on both backends, through real HTTP: auth, validation, paging, every route."""

from __future__ import annotations

import contextlib
import json
import math
import threading
import time
from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, insert, select

from ledgerflow.api.app import GAP_SECONDS, MAX_GAPS, FeedCursor
from ledgerflow.db.tables import job_executions, jobs
from ledgerflow.export.saga import ExportSaga
from tests.api.conftest import TOKEN
from tests.conftest import completed_job_row, run_cli, wait_until

ENTRY = {
    "date": "2026-11-26",
    "reference": "API-1",
    "description": "ค่ากาแฟ",
    "currency": "THB",
    "lines": [
        {"account": "5100", "account_name": "Meals", "debit": "107.00", "credit": "0", "tax_code": "VAT7"},
        {"account": "1000", "account_name": "Cash", "debit": "0", "credit": "107.00"},
    ],
}


def test_token_is_required_except_for_health_and_metrics(service):
    anonymous = httpx.Client(base_url=service.url)
    for path in ("/api/jobs", "/api/schedules", "/api/entries", "/openapi.json"):
        r = anonymous.get(path)
        assert r.status_code == 401 and r.json() == {
            "error": {"code": "unauthorized", "message": "missing or invalid bearer token"}
        }
    wrong = anonymous.get("/api/jobs", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and TOKEN not in wrong.text
    assert anonymous.get("/api/health").status_code == 200
    assert anonymous.get("/metrics").status_code == 200
    assert service.get("/openapi.json").json()["info"]["title"] == "ledgerflow"
    anonymous.close()


def test_health_reports_database_and_heartbeats(service):
    body = service.get("/api/health").json()
    assert body["status"] == "healthy" and body["database"] == "ok" and body["workers"] == []
    worker = service.app.worker("default", 1)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        workers = wait_until(
            lambda: service.get("/api/health").json()["workers"], 60, 0.1, "the worker's heartbeat"
        )
    finally:
        worker.stop()
        thread.join(30)
    assert len(workers) == 1 and workers[0]["heartbeat_age_seconds"] < 5


def test_cron_health_goes_unhealthy_when_the_last_export_is_27_hours_old(service):
    before = service.get("/api/health/cron")
    assert (
        before.status_code == 503
        and before.json()["last_run"] is None
        and before.json()["status"] == "unhealthy"
    )
    service.app.ledger.record(ENTRY)
    ExportSaga(service.app).run_daily(date(2026, 11, 26))
    now = service.get("/api/health/cron")
    body = now.json()
    assert now.status_code == 200 and body["status"] == "healthy" and body["hours_since_last_run"] < 1
    assert body["next_run"].endswith("+07:00") and "T18:00:00" in body["next_run"]
    service.clock.set(service.clock() + timedelta(hours=27))
    late = service.get("/api/health/cron")
    assert late.status_code == 503 and late.json()["status"] == "unhealthy"
    assert late.json()["hours_since_last_run"] >= 27


def test_jobs_enqueue_list_page_show_cancel_retry(service):
    created = [
        service.post("/api/jobs", json={"task": "ledgerflow.cleanup", "args": [i + 1]}) for i in range(5)
    ]
    assert [r.status_code for r in created] == [201] * 5
    first = service.get("/api/jobs", params={"limit": 2}).json()
    assert len(first["jobs"]) == 2 and first["next_before_id"] == first["jobs"][-1]["id"]
    second = service.get("/api/jobs", params={"limit": 2, "before_id": first["next_before_id"]}).json()
    assert second["jobs"][0]["id"] < first["jobs"][-1]["id"]
    job_id = created[0].json()["id"]
    assert service.post(f"/api/jobs/{job_id}/cancel").json()["state"] == "cancelled"
    assert service.post(f"/api/jobs/{job_id}/cancel").status_code == 409
    assert service.post(f"/api/jobs/{job_id}/retry").json()["state"] == "available"
    shown = service.get(f"/api/jobs/{job_id}").json()
    assert shown["task"] == "ledgerflow.cleanup" and shown["executions"] == []
    assert service.get("/api/jobs", params={"state": "available"}).status_code == 200


def test_bad_requests_get_one_clear_error_and_store_nothing(service):
    r = service.post("/api/jobs", json={"task": "ledgerflow.cleanup", "priority": 12})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request" and "priority" in r.text
    r = service.post("/api/jobs", json={"task": "nope"})
    assert r.status_code == 404 and r.json()["error"] == {
        "code": "unknown_task",
        "message": "unknown task 'nope'",
    }
    r = service.post("/api/jobs", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 422
    r = service.post(
        "/api/entries", content=b"x" * (11 * 2**20), headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"
    assert service.get("/api/jobs/999999").status_code == 404
    unbalanced = {
        **ENTRY,
        "reference": "BAD-1",
        "lines": [{**ENTRY["lines"][0]}, {**ENTRY["lines"][1], "credit": "100"}],
    }
    r = service.post("/api/entries", json=[ENTRY, unbalanced])
    assert r.status_code == 400 and "BAD-1" in r.json()["error"]["message"] and "unbalanced" in r.text
    assert service.get("/api/entries").json()["entries"] == [], "nothing half-written"
    with service.app.db.read() as conn:
        assert conn.execute(select(func.count()).select_from(jobs)).scalar_one() == 0


def test_entries_record_show_reverse_and_duplicates(service):
    r = service.post("/api/entries", json=ENTRY)
    assert r.status_code == 201 and r.json()["entries"][0]["lines"][0]["debit"] == "107.00"
    assert service.post("/api/entries", json=ENTRY).status_code == 400
    shown = service.get("/api/entries/API-1").json()
    assert shown["export"]["status"] == "queued" and shown["description"] == "ค่ากาแฟ"
    ExportSaga(service.app).run_daily(date(2026, 11, 26))  # only an entry in the books is reversed
    rev = service.post("/api/entries/API-1/reverse", json={"date": "2026-11-27"})
    assert rev.status_code == 201 and rev.json()["reference"] == "REV-API-1"
    assert len(service.get("/api/entries", params={"status": "queued"}).json()["entries"]) == 1


def test_export_run_status_and_batches(service):
    service.post("/api/entries", json=ENTRY)
    queued = service.post("/api/exports/run", json={"date": "2026-11-26"})
    assert queued.status_code == 202 and queued.json()["job"]["task"] == "ledgerflow.export.daily"
    service.app.run_worker("exports", burst=True)
    batches = service.get("/api/exports").json()["batches"]
    assert batches[0]["batch_key"] == "daily:2026-11-26" and batches[0]["state"] == "completed"
    assert batches[0]["totals"] == {"THB": {"debit": "107.00", "credit": "107.00"}}
    status = service.get("/api/exports/status").json()
    assert status["healthy"] and status["last_batch"]["entry_count"] == 1 and status["failing_batches"] == []
    again = service.post("/api/exports/run", json={"date": "2026-11-26"})
    service.app.run_worker("exports", burst=True)
    assert service.app.get_job(again.json()["job"]["id"]).result["already"] is True


def test_schedules_create_next_run_fires_and_toggle(service):
    body = {
        "name": "close",
        "cron": "0 18 L * *",
        "task": "ledgerflow.cleanup",
        "holiday_calendar": "TH",
        "business_day": "previous",
    }
    r = service.post("/api/schedules", json=body)
    assert r.status_code == 201 and r.json()["description"].startswith("At 18:00 on the last day")
    assert service.post("/api/schedules", json=body).status_code == 400
    assert service.post("/api/schedules", json={**body, "name": "x", "cron": "0 25 * * *"}).status_code == 400
    nxt = service.get(
        "/api/schedules/close/next", params={"n": 1, "after": "2026-12-01T00:00:00+07:00"}
    ).json()
    assert nxt["fires"] == ["2026-12-30T18:00:00+07:00"]
    assert service.post("/api/schedules/close/disable").json()["enabled"] is False
    run = service.post("/api/schedules/close/run", json={"run_id": "r1"})
    assert (
        run.status_code == 200
        and service.post("/api/schedules/close/run", json={"run_id": "r1"}).status_code == 409
    )
    assert service.get("/api/schedules/close/fires").json()["fires"][0]["trigger"] == "manual"
    assert service.post("/api/schedules/close/enable").json()["enabled"] is True
    names = [s["name"] for s in service.get("/api/schedules").json()["schedules"]]
    assert "close" in names and "daily_export" in names
    assert service.get("/api/schedules/close").json()["business_day"] == "previous"


def test_dead_letter_queue_queues_tasks_executions_and_alerts(service):
    app = service.app

    @app.task(name="api_fails", max_attempts=1)
    def api_fails() -> None:
        raise RuntimeError("no")

    job = api_fails.enqueue()
    app.run_worker(burst=True)
    dead = service.get("/api/dlq").json()["jobs"]
    assert [j["id"] for j in dead] == [job.id]
    execs = service.get("/api/executions", params={"task": "api_fails", "status": "failed"}).json()[
        "executions"
    ]
    assert execs[0]["job_id"] == job.id and execs[0]["error_type"] == "RuntimeError"
    alerts = service.get("/api/alerts", params={"open_only": True}).json()["alerts"]
    assert alerts[0]["incident_key"] == "job_dead:api_fails"
    assert service.post("/api/dlq/retry", json={"ids": [job.id]}).json() == {"retried": 1, "refused": []}
    app.run_worker(burst=True)
    assert service.client.delete("/api/dlq").json() == {"purged": 1}
    assert service.post("/api/queues/default/pause").json()["changed"] is True
    queues = {q["queue"]: q for q in service.get("/api/queues").json()["queues"]}
    assert queues["default"]["paused"] is True
    assert service.post("/api/queues/default/resume").json()["changed"] is True
    assert service.post("/api/tasks/api_fails/pause").json()["changed"] is True
    task = next(t for t in service.get("/api/tasks").json()["tasks"] if t["task"] == "api_fails")
    assert task["paused"] and task["paused_by"] == "user"
    assert service.post("/api/tasks/api_fails/resume").json()["changed"] is True


def test_metrics_match_the_database(service):
    app = service.app
    for i in range(3):
        service.post("/api/jobs", json={"task": "ledgerflow.cleanup", "args": [i + 1]})
    service.post("/api/entries", json=ENTRY)
    ExportSaga(app).run_daily(date(2026, 11, 26))
    text = httpx.get(f"{service.url}/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert {
        "daily_batch_export_duration_seconds",
        "daily_batch_export_entries",
        "daily_batch_export_errors",
        "ledgerflow_jobs",
        "ledgerflow_queue_depth",
        "ledgerflow_dead_jobs",
        "ledgerflow_job_duration_seconds",
        "ledgerflow_circuit_breaker_state",
    } <= set(families)
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples
    }
    assert samples[("daily_batch_export_entries_total", ())] == 1
    buckets = [
        s.labels["le"]
        for s in families["daily_batch_export_duration_seconds"].samples
        if s.name.endswith("_bucket")
    ]
    assert buckets == ["1.0", "5.0", "10.0", "30.0", "60.0", "+Inf"]
    assert {s.labels["error_type"] for s in families["daily_batch_export_errors"].samples} == {
        "timeout",
        "google_drive",
        "s3",
        "unknown",
    }
    counts = app.store.counts()
    for (queue, task, state), n in counts.items():
        assert samples[("ledgerflow_jobs", (("queue", queue), ("state", state), ("task", task)))] == n
    assert samples[("ledgerflow_queue_depth", (("queue", "maintenance"),))] == 3


def test_server_sent_events_report_job_attempts(service):
    received: list[str] = []

    def listen() -> None:
        with httpx.stream(
            "GET", f"{service.url}/api/events", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=120
        ) as response:
            for line in response.iter_lines():
                received.append(line)
                if line.startswith("data:") and "event: execution" in received:
                    return

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    wait_until(lambda: ": connected" in received, 60, 0.05, "the event stream to connect")
    service.post("/api/jobs", json={"task": "ledgerflow.cleanup", "args": [1]})
    service.app.run_worker("maintenance", burst=True)
    thread.join(120)
    assert "event: execution" in received
    data = next(line for line in received if line.startswith("data:"))
    assert '"task": "ledgerflow.cleanup"' in data


def test_autostop_pauses_a_task_that_keeps_failing_and_resume_undoes_it(make_app):
    from ledgerflow.engine.autostop import AutoStop

    app = make_app(autostop_consecutive_failures=3)

    @app.task(name="flaky_mail", max_attempts=1)
    def flaky_mail() -> None:
        raise ConnectionError("SMTP refused")

    for _ in range(3):
        flaky_mail.enqueue()
    app.run_worker(burst=True)
    AutoStop(app).check()  # the worker's own periodic check may have paused it already
    pause = next(p for p in app.store.pauses() if p.name == "flaky_mail")
    assert pause.paused_by == "autostop" and "3 consecutive failed attempts" in pause.reason
    assert app.alerts.is_open("autostop:flaky_mail")
    flaky_mail.enqueue()
    app.run_worker(burst=True)
    assert app.store.list(task="flaky_mail", state="available"), "a paused task's jobs wait"
    assert AutoStop(app).check() == [], "already paused"
    app.store.resume("task", "flaky_mail")
    app.alerts.resolve("autostop:flaky_mail")
    assert not app.alerts.is_open("autostop:flaky_mail")


def test_failure_rate_and_dead_job_limits_also_stop_a_task(make_app):
    from ledgerflow.engine.autostop import AutoStop

    app = make_app(
        autostop_consecutive_failures=100,
        autostop_min_attempts=4,
        autostop_failure_rate=0.5,
        autostop_dead_jobs=2,
    )
    state = {"n": 0}

    @app.task(name="half_broken", max_attempts=1)
    def half_broken() -> None:
        state["n"] += 1
        if state["n"] % 4:
            raise ValueError("bad receipt")

    for _ in range(4):
        half_broken.enqueue()
    app.run_worker(burst=True)
    AutoStop(app).check()  # the worker's own periodic check may have paused it already
    assert [p.name for p in app.store.pauses() if p.paused_by == "autostop"] == ["half_broken"]
    reason = next(p for p in app.store.pauses() if p.name == "half_broken").reason
    assert "3 dead jobs" in reason or "3 of 4 attempts failed" in reason


def test_a_result_stored_past_a_floats_range_is_shown_as_json_by_the_api_and_the_cli(
    service, db_url, monkeypatch, capsys
):
    """SQLite rows written before migration 0017 hold such numbers as `1e999`, which reads as an
    infinite float: the API and `jobs show --json` write it back as `1e999` (JSON that a strict
    parser takes, and that reads as the stored value), never `Infinity` or an error."""
    stored = '[1e999, -1e999, {"deep": [1e999]}, 1.5, "Infinity"]'
    with service.app.db.begin() as conn:
        job_id = conn.execute(
            insert(jobs).values(completed_job_row(datetime.now(UTC))).returning(jobs.c.id)
        ).scalar_one()
        cast = "" if service.app.db.is_sqlite else "::jsonb"
        conn.exec_driver_sql(f"UPDATE jobs SET result = '{stored}'{cast} WHERE id = {job_id}")

    def strict(text: str) -> Any:
        def refuse(constant: str) -> Any:
            raise AssertionError(f"not JSON: {constant}")

        return json.loads(text, parse_constant=refuse)

    big = math.inf if service.app.db.is_sqlite else 10**999  # PostgreSQL's jsonb keeps every digit
    expected = [big, -big, {"deep": [big]}, 1.5, "Infinity"]
    response = service.get(f"/api/jobs/{job_id}")
    assert response.status_code == 200 and strict(response.text)["result"] == expected
    monkeypatch.setenv("LEDGERFLOW_DATABASE_URL", db_url)
    monkeypatch.setenv("LEDGERFLOW_LOG_LEVEL", "ERROR")
    code, out, err = run_cli(capsys, "jobs", "show", str(job_id), "--json")
    assert code == 0 and strict(out)["result"] == expected, err


def _event_ids(service: Any) -> list[str]:
    """The ids (`KIND-ID`) the running service's event feed sends, appended as they arrive (a
    thread reads the stream until the server stops); returns once the stream is connected."""
    ids: list[str] = []
    received: list[str] = []

    def listen() -> None:
        with (
            contextlib.suppress(httpx.RemoteProtocolError),  # the server stopping at teardown
            httpx.stream(
                "GET", f"{service.url}/api/events", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=120
            ) as response,
        ):
            for line in response.iter_lines():
                received.append(line)
                if line.startswith("id: "):
                    ids.append(line.removeprefix("id: "))

    threading.Thread(target=listen, daemon=True).start()
    wait_until(lambda: ": connected" in received, 60, 0.05, "the event stream to connect")
    return ids


def _attempt_row(job_id: int, attempt: int, at: datetime) -> dict[str, Any]:
    """A completed attempt of `job_id` (a `job_executions` row)."""
    row = {"job_id": job_id, "attempt": attempt, "task": "t", "queue": "default", "status": "completed"}
    return row | {"started_at": at, "completed_at": at}


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_the_event_feed_sends_a_row_whose_lower_id_commits_after_a_higher_one_was_sent(serve_app):
    """PostgreSQL draws an id at insert: the attempt with the lower id commits last, after the
    higher one was streamed. The feed read `id > last sent` and never sent it; now each row
    arrives exactly once."""
    service = serve_app()
    app = service.app
    ids = _event_ids(service)
    now = datetime.now(UTC)
    with app.db.begin() as conn:
        job_id = conn.execute(insert(jobs).values(completed_job_row(now)).returning(jobs.c.id)).scalar_one()

    def attempt(n: int) -> dict[str, Any]:
        return _attempt_row(job_id, n, now)

    with app.db.engine.connect() as slow:
        slow_tx = slow.begin()
        lower = slow.execute(
            insert(job_executions).values(attempt(1)).returning(job_executions.c.id)
        ).scalar_one()
        with app.db.begin() as conn:
            higher = conn.execute(
                insert(job_executions).values(attempt(2)).returning(job_executions.c.id)
            ).scalar_one()
        assert lower < higher
        wait_until(lambda: f"execution-{higher}" in ids, 30, 0.05, "the higher id to be streamed")
        slow_tx.commit()
    wait_until(lambda: f"execution-{lower}" in ids, 30, 0.05, "the lower id, committed last, to be streamed")
    time.sleep(3)  # a few more polls: nothing is sent twice
    assert sorted(ids) == sorted({f"execution-{lower}", f"execution-{higher}"}), ids


def test_the_event_feeds_cursor_awaits_skipped_ids_for_a_while_and_keeps_a_bounded_number(monkeypatch):
    cursor = FeedCursor(0)
    cursor.sent([1, 5])
    assert (cursor.after, set(cursor.gaps)) == (5, {2, 3, 4})
    cursor.sent([3])  # a late row: no longer awaited, the newest unchanged
    assert (cursor.after, set(cursor.gaps)) == (5, {2, 4})
    cursor.sent([5 + 3 * MAX_GAPS])
    assert len(cursor.gaps) == MAX_GAPS and min(cursor.gaps) == 5 + 2 * MAX_GAPS
    later = time.monotonic() + GAP_SECONDS + 1
    monkeypatch.setattr(time, "monotonic", lambda: later)
    cursor.unsent(job_executions.c.id)
    assert cursor.gaps == {}


def test_the_event_feed_sends_every_row_once_when_more_than_a_page_commits_at_once(serve_app):
    """1,200 attempts commit in one transaction (a poll reads at most 500 per table): every one
    is streamed, once, over the following polls."""
    service = serve_app()
    app = service.app
    ids = _event_ids(service)
    now = datetime.now(UTC)
    with app.db.begin() as conn:
        job_id = conn.execute(insert(jobs).values(completed_job_row(now)).returning(jobs.c.id)).scalar_one()
        rows = [_attempt_row(job_id, n, now) for n in range(1, 1201)]
        inserted = conn.execute(insert(job_executions).returning(job_executions.c.id), rows).scalars().all()
    wait_until(lambda: len(ids) >= len(inserted), 60, 0.05, "all the rows to be streamed")
    time.sleep(3)  # a few more polls: nothing is sent twice
    assert sorted(ids) == sorted(f"execution-{i}" for i in inserted)
