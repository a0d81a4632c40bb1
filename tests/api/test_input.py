"""No input may poison a page, through real HTTP on both backends: payload limits at every entry
point, bounded lists that survive one unreadable row, one name rule, and no 500s."""

from __future__ import annotations

import json
from urllib.parse import quote

import pytest
from sqlalchemy import func, select, text

from ledgerflow.db.tables import job_schedules, jobs
from tests.web.test_sign_in import signed_in

BAD_NAMES = ["x%00y", "x\x00y", 'say"hi', "it's", "x\u200fy", "\u202eevil", "a b", "a,b", "-x"]


def _count(service, table) -> int:
    with service.app.db.read() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def _deep(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize("depth", [33, 300, 100_000])
def test_deeply_nested_args_are_refused_at_every_entry_point(service, depth):
    job = f'{{"task": "ledgerflow.cleanup", "args": {_deep(depth)}}}'.encode()
    schedule = (
        f'{{"name": "deep", "cron": "0 1 * * *", "task": "ledgerflow.cleanup", "args": {_deep(depth)}}}'
    )
    for path, body in (("/api/jobs", job), ("/api/schedules", schedule.encode())):
        r = service.post(path, content=body, headers={"Content-Type": "application/json"})
        assert r.status_code == 400, (path, r.text[:300])
        assert r.json()["error"]["code"] in ("bad_payload", "http_error"), r.text[:300]
    kwargs = {"task": "ledgerflow.cleanup", "kwargs": {"k": json.loads(_deep(40))}}
    r = service.post("/api/jobs", json=kwargs)
    assert r.status_code == 400 and "kwargs of task 'ledgerflow.cleanup': nested more than 32" in r.text
    assert _count(service, jobs) == 0 and service.get("/api/jobs").json()["jobs"] == []
    assert all(s["name"] != "deep" for s in service.get("/api/schedules").json()["schedules"])


def test_lists_show_previews_and_stay_small_whatever_the_args(serve_app):
    service = serve_app(payload_max_bytes=6 * 2**20)  # an operator who raised the limit
    big = "x" * (5 * 2**20)
    for _ in range(3):
        assert (
            service.post("/api/jobs", json={"task": "ledgerflow.cleanup", "args": [big]}).status_code == 201
        )
    listed = service.get("/api/jobs", params={"limit": 3})
    assert listed.status_code == 200 and len(listed.content) < 4000, len(listed.content)
    for job in listed.json()["jobs"]:
        assert job["args"] == '["' + "x" * 198 + "…"
        assert job["kwargs"] == "{}" and job["result"] is None and job["last_error"] is None
    dead = service.get("/api/dlq")
    assert dead.status_code == 200 and dead.json()["jobs"] == []
    one = service.get(f"/api/jobs/{listed.json()['jobs'][0]['id']}")
    assert one.status_code == 200 and one.json()["args"] == [big], "the whole job is one request away"


def test_one_unreadable_stored_row_does_not_break_any_list_or_page(service):
    """Rows from before the payload limits: 300 deep (the encoder's limit) and 5,000 deep (past
    any JSON decoder's recursion limit), written behind the API's back."""
    ok = service.post("/api/jobs", json={"task": "ledgerflow.cleanup", "args": [1]}).json()["id"]
    ids = [
        service.post("/api/jobs", json={"task": "ledgerflow.cleanup", "args": [2]}).json()["id"] for _ in "ab"
    ]
    cast = "CAST(:v AS jsonb)" if service.app.db.backend.name == "postgresql" else ":v"
    with service.app.db.begin() as conn:
        for job_id, depth in zip(ids, (300, 5000), strict=True):
            conn.execute(
                text(f"UPDATE jobs SET args = {cast} WHERE id = :id"), {"v": _deep(depth), "id": job_id}
            )
    listed = service.get("/api/jobs")
    assert listed.status_code == 200
    assert [j["id"] for j in listed.json()["jobs"]] == [ids[1], ids[0], ok]
    assert listed.json()["jobs"][0]["args"].startswith("[[[[") and listed.json()["jobs"][0]["args"].endswith(
        "…"
    )
    assert service.get("/api/jobs", params={"limit": 5}).status_code == 200
    shallow = service.get(f"/api/jobs/{ids[0]}")
    assert shallow.status_code == 200 and shallow.json()["id"] == ids[0]
    unreadable = service.get(f"/api/jobs/{ids[1]}")
    assert unreadable.status_code == 200 and unreadable.json()["unreadable"] is True
    assert service.get(f"/api/jobs/{ok}").json()["args"] == [1]
    dashboard = signed_in(service.url)
    for page in ("/", "/jobs", "/dlq", f"/jobs/{ids[0]}", f"/jobs/{ids[1]}", f"/jobs/{ok}"):
        assert dashboard.get(page).status_code == 200, page


@pytest.mark.parametrize("name", BAD_NAMES)
def test_queue_and_task_names_follow_one_rule_everywhere(service, name):
    schedule = {"name": "s1", "cron": "0 1 * * *", "task": "ledgerflow.cleanup", "queue": name}
    for method, path, body in (
        ("POST", "/api/jobs", {"task": "ledgerflow.cleanup", "queue": name}),
        ("POST", "/api/schedules", schedule),
        ("POST", "/api/schedules", {**schedule, "queue": None, "name": name}),
    ):
        r = service.client.request(method, path, json=body)
        assert r.status_code == 400, (path, r.text)
        error = r.json()["error"]
        assert error["code"] == "bad_input" and " name " in error["message"], error
    for kind in ("queues", "tasks"):
        for verb in ("pause", "resume"):
            r = service.post(f"/api/{kind}/{quote(name, safe='')}/{verb}")
            assert r.status_code == 400 and "name" in r.json()["error"]["message"], (kind, verb, r.text)
    assert _count(service, jobs) == 0 and service.app.store.pauses() == []
    assert _count(service, job_schedules) == len(service.app.schedules.list())
    assert "s1" not in [s.name for s in service.app.schedules.list()]


def test_a_lone_surrogate_is_a_clear_4xx_never_a_500(service):
    entry = {
        "date": "2026-11-26",
        "reference": "A\ud800B",
        "currency": "THB",
        "lines": [
            {"account": "5100", "debit": "1.00", "credit": "0"},
            {"account": "1000", "debit": "0", "credit": "1.00"},
        ],
    }
    body = json.dumps(entry).encode()  # \ud800 escaped, as a JSON client may send it
    r = service.post("/api/entries", content=body, headers={"Content-Type": "application/json"})
    assert 400 <= r.status_code < 500, r.text
    assert r.content.decode("utf-8") and "error" in r.json()
    assert service.get("/api/entries").json()["entries"] == []
    for path in ("/api/entries/A%ED%A0%80B", "/api/entries/A%ED%A0%80B/reverse"):
        r = service.client.request("GET" if path.endswith("B") else "POST", path)
        assert r.status_code == 404 and r.content.decode("utf-8"), path


def test_next_fire_times_at_the_end_of_time_are_a_clear_400(service):
    for after in ("9999-12-31T00:00:00", "9999-12-31T23:59:00+00:00"):
        r = service.get("/api/schedules/daily_export/next", params={"after": after, "n": 5})
        assert r.status_code == 400, r.text
        assert "past the year 9999" in r.json()["error"]["message"]
    ok = service.get("/api/schedules/daily_export/next", params={"after": "9998-01-01T00:00:00", "n": 1})
    assert ok.json()["fires"] == ["9998-01-01T18:00:00+07:00"]
