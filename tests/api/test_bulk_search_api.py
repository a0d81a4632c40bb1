"""The JSON API's bulk actions, search, enqueue options and schedule edit/remove, on both backends."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import func, select, update

from ledgerflow.db.tables import job_schedules, jobs

CLEANUP = "ledgerflow.cleanup"


def _enqueue(service, **body) -> dict:
    r = service.post("/api/jobs", json={"task": CLEANUP, "args": [30], **body})
    assert r.status_code == 201, r.text
    return r.json()


def _count(service) -> int:
    with service.app.db.read() as conn:
        return int(conn.execute(select(func.count()).select_from(jobs)).scalar_one())


def test_bulk_actions_count_first_then_move_through_the_state_machine(service):
    first = _enqueue(service, kwargs={"note": "ACME quarter close"})
    second = _enqueue(service)
    elsewhere = _enqueue(service, queue="elsewhere")

    bulk = {"action": "cancel", "filter": {"queue": "maintenance"}, "dry_run": True}
    r = service.post("/api/jobs/bulk", json=bulk)
    assert r.status_code == 200 and (r.json()["matched"], r.json()["count"]) == (2, 2)
    assert r.json()["dry_run"] is True
    assert {j["state"] for j in service.get("/api/jobs").json()["jobs"]} == {"available"}

    r = service.post(
        "/api/jobs/bulk",
        json={"action": "cancel", "filter": {"search": "acme"}, "reason": "wrong quarter"},
    )
    assert r.json()["count"] == 1
    assert service.get(f"/api/jobs/{first['id']}").json()["state_reason"] == "wrong quarter"
    r = service.post("/api/jobs/bulk", json={"action": "delete", "filter": {"queue": "maintenance"}})
    assert (r.json()["matched"], r.json()["count"]) == (2, 1)  # the available one is not deleted
    r = service.post("/api/jobs/bulk", json={"action": "retry", "filter": {"states": ["available"]}})
    assert r.json()["count"] == 0
    assert service.client.delete(f"/api/jobs/{second['id']}").status_code == 409  # live: cancel it first
    assert service.post(f"/api/jobs/{second['id']}/cancel").status_code == 200
    assert service.client.delete(f"/api/jobs/{second['id']}").json() == {"deleted": second["id"]}
    assert [j["id"] for j in service.get("/api/jobs").json()["jobs"]] == [elsewhere["id"]]


def test_jobs_listed_by_when_they_were_enqueued_and_finished(service):
    """A date is that day's start in the app's zone; a date-time needs its offset."""
    zone = ZoneInfo(service.app.settings.timezone)
    day = datetime(2026, 11, 20, tzinfo=zone)
    early, late, live = _enqueue(service), _enqueue(service), _enqueue(service)
    with service.app.db.begin() as conn:
        for job, created, finished in (
            (early, day - timedelta(days=3), day + timedelta(hours=1)),
            (late, day - timedelta(days=1), day + timedelta(days=1, hours=1)),
        ):
            conn.execute(
                update(jobs)
                .where(jobs.c.id == job["id"])
                .values(state="completed", created_at=created, finished_at=finished)
            )

    def listed(**query: str) -> set[int]:
        r = service.get("/api/jobs", params=query)
        assert r.status_code == 200, r.text
        return {j["id"] for j in r.json()["jobs"]}

    assert listed(finished_after="2026-11-20", finished_before="2026-11-21") == {early["id"]}
    instant = (day + timedelta(days=1)).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert listed(finished_after=instant) == {late["id"]}
    assert listed(enqueued_before="2026-11-19") == {early["id"]}
    assert listed(enqueued_after="2026-11-19", finished_after="2026-11-01") == {late["id"]}
    assert live["id"] in listed(enqueued_after="2026-11-25")
    for value, words in (
        ("2026-11-20T09:00", "'2026-11-20T09:00' has no UTC offset"),
        ("yesterday", "finished_after 'yesterday' is not a time"),
        ("2026-13-01", "is not a calendar date"),
    ):
        r = service.get("/api/jobs", params={"finished_after": value})
        assert r.status_code == 400 and words in r.text, r.text
    r = service.post(
        "/api/jobs/bulk",
        json={"action": "delete", "filter": {"finished_before": "2026-11-21"}, "dry_run": True},
    )
    assert r.status_code == 200 and r.json()["count"] == 1


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"action": "cancel", "filter": {}}, 400, "needs a filter"),
        ({"action": "explode", "filter": {"queue": "maintenance"}}, 422, "action"),
        ({"action": "cancel", "filter": {"states": ["sleeping"]}}, 422, "states"),
        ({"action": "cancel", "filter": {"search": "ab"}}, 400, "3..200 characters"),
        ({"action": "cancel", "filter": {"older_than": "soon"}}, 400, "not a duration"),
        ({"action": "cancel", "filter": {"enqueued_after": "2026-01-01T00:00:00"}}, 400, "UTC offset"),
        ({"action": "cancel", "filter": {"queue": "maintenance", "colour": "red"}}, 422, "colour"),
        (
            {"action": "cancel", "filter": {"older_than": "1d", "enqueued_before": "2026-01-01T00:00:00Z"}},
            400,
            "not both",
        ),
    ],
)
def test_bad_bulk_requests_get_one_clear_error_and_move_nothing(service, body, status, words):
    job = _enqueue(service)
    r = service.post("/api/jobs/bulk", json=body)
    assert r.status_code == status and words in r.text
    assert service.get(f"/api/jobs/{job['id']}").json()["state"] == "available"


def test_search_filters_of_the_job_list(service):
    acme = _enqueue(service, kwargs={"customer": "ACME 商事"})
    _enqueue(service, kwargs={"customer": "Globex"})
    found = service.get("/api/jobs", params={"search": "acme 商"}).json()["jobs"]
    assert [j["id"] for j in found] == [acme["id"]]
    r = service.get("/api/jobs", params=[("state", "available"), ("state", "dead")])
    assert len(r.json()["jobs"]) == 2
    hour_ago = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    assert len(service.get("/api/jobs", params={"enqueued_before": hour_ago}).json()["jobs"]) == 0
    assert len(service.get("/api/jobs", params={"older_than": "0s"}).json()["jobs"]) == 2
    assert service.get("/api/jobs", params={"error_contains": "timeout"}).json()["jobs"] == []
    r = service.get("/api/jobs", params={"search": "ab"})
    assert r.status_code == 400 and "3..200 characters" in r.json()["error"]["message"]


def test_enqueue_takes_depends_on_scheduled_at_timeout_and_unique_key(service):
    parent = _enqueue(service)
    when = "2030-01-02T03:04:05+07:00"
    child = _enqueue(
        service,
        depends_on=[parent["id"]],
        scheduled_at=when,
        timeout=12.5,
        unique_key="close-2030",
        max_attempts=7,
    )
    assert child["state"] == "scheduled" and child["scheduled_at"] == "2030-01-01T20:04:05+00:00"
    assert (child["timeout"], child["max_attempts"], child["unique_key"]) == (12.5, 7, "close-2030")
    assert _enqueue(service, unique_key="close-2030")["id"] == child["id"]
    before = _count(service)
    for body, status, words in [
        ({"depends_on": [999_999]}, 404, "unknown job id(s) 999999"),
        ({"scheduled_at": "2030-01-02T03:04:05"}, 400, "timezone-aware"),
        ({"scheduled_at": when, "delay": 5}, 400, "not both"),
        ({"timeout": 0}, 422, "timeout"),
        ({"depends_on": [0]}, 422, "depends_on"),
        ({"colour": "red"}, 422, "colour"),
    ]:
        r = service.post("/api/jobs", json={"task": CLEANUP, **body})
        assert r.status_code == status and words in r.text, (body, r.text)
    assert _count(service) == before


def test_schedules_edit_and_remove_with_a_preview_of_five_fires(service):
    r = service.post(
        "/api/schedules", json={"name": "close", "cron": "0 18 * * *", "task": CLEANUP, "args": [7]}
    )
    assert r.status_code == 201 and len(r.json()["next_fires"]) == 5
    r = service.client.patch("/api/schedules/close", json={"cron": "30 9 * * 1", "timezone": "Asia/Tokyo"})
    assert r.status_code == 200, r.text
    edited = r.json()
    assert (edited["cron_expression"], edited["timezone"], edited["args"]) == (
        "30 9 * * 1",
        "Asia/Tokyo",
        [7],
    )
    assert len(edited["next_fires"]) == 5 and all(f.endswith("09:30:00+09:00") for f in edited["next_fires"])
    assert service.get("/api/schedules/close").json()["next_fires"] == edited["next_fires"]
    r = service.client.patch("/api/schedules/close", json={"business_day": "next", "holiday_calendar": "jp"})
    assert r.json()["holiday_calendar"] == "JP"
    r = service.client.patch("/api/schedules/close", json={"enabled": False})
    assert r.json()["enabled"] is False and r.json()["next_fires"] == []
    r = service.post("/api/schedules/preview", json={"cron": "0 9 1 * *", "timezone": "Asia/Bangkok", "n": 3})
    assert r.status_code == 200 and len(r.json()["next_fires"]) == 3 and r.json()["description"]

    stored = service.get("/api/schedules/close").json()
    for body, status, words in [
        ({"cron": "0 25 * * *"}, 400, "hour"),
        ({"timezone": "Mars/Base"}, 400, "Mars/Base"),
        ({"task": "nope"}, 400, "not registered"),
        ({"priority": 12}, 422, "priority"),
        ({"cron": None}, 400, "cannot be null"),
        ({"holiday_calendar": "XX"}, 400, "XX"),
        ({"name": "renamed"}, 422, "name"),
    ]:
        r = service.client.patch("/api/schedules/close", json=body)
        assert r.status_code == status and words in r.text, (body, r.text)
    assert service.get("/api/schedules/close").json() == stored
    assert service.post("/api/schedules/preview", json={"cron": "61 * * * *"}).status_code == 400
    assert (
        service.post("/api/schedules/preview", json={"cron": "0 1 * * *", "timezone": "Nowhere"}).status_code
        == 400
    )
    assert service.client.patch("/api/schedules/nosuch", json={"cron": "0 1 * * *"}).status_code == 404

    assert service.client.delete("/api/schedules/close").json() == {"removed": "close"}
    assert service.client.delete("/api/schedules/close").status_code == 404
    with service.app.db.read() as conn:
        assert not conn.execute(select(job_schedules.c.id).where(job_schedules.c.name == "close")).first()
