"""`GET /api/alerts`: open and resolved alerts, filtered and paged, on both backends."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

from sqlalchemy import update

from ledgerflow.db.tables import alerts

INCIDENTS = [  # key, severity, resolved
    ("queue_overflow:bulk", "error", True),
    ("queue_overflow:bulk", "error", False),
    ("queue_overflow:exports", "error", False),
    ("queue_overflowing", "warning", False),  # another kind that merely starts the same way
    ("dlq_size", "error", True),
    ("dlq_size", "error", False),
    ("scheduler_down", "critical", True),
    ("autostop:memory:host-a", "critical", False),
    ("export_breaker_open:s3://books/daily", "critical", True),
    ("queue_%:odd", "info", False),  # LIKE wildcards in a key are literal
]


def test_alerts_are_listed_by_state_severity_kind_and_time_and_paged(service):
    app = service.app
    base = datetime(2026, 11, 1, tzinfo=UTC)
    for n, (key, severity, resolved) in enumerate(INCIDENTS):
        app.alerts.raise_alert(key, severity, f"title {n}", f"message {n}")
        with app.db.begin() as conn:  # opened a day apart
            conn.execute(
                update(alerts)
                .where(alerts.c.incident_key == key, alerts.c.resolved_at.is_(None))
                .values(opened_at=base + timedelta(days=n))
            )
        if resolved:
            app.alerts.resolve(key)
    stored = [
        (a.id, a.incident_key, a.severity, a.resolved_at is None, a.opened_at) for a in app.alerts.history()
    ]
    assert len(stored) == len(INCIDENTS)
    kinds = [None, "queue_overflow", "queue_overflow:bulk", "dlq_size", "queue", "queue_%", "autostop:memory"]
    for state, severity, kind, since in itertools.product(
        [None, "open", "resolved"], [None, "error", "critical"], kinds, [None, base + timedelta(days=5)]
    ):
        params = {"state": state, "severity": severity, "kind": kind, "since": since and since.isoformat()}
        response = service.get("/api/alerts", params={k: v for k, v in params.items() if v is not None})
        assert response.status_code == 200, (params, response.text)
        expected = [
            id_
            for id_, key, sev, is_open, opened in stored
            if (state is None or is_open == (state == "open"))
            and (severity is None or sev == severity)
            and (kind is None or key == kind or key.startswith(kind + ":"))
            and (since is None or opened >= since)
        ]
        assert [a["id"] for a in response.json()["alerts"]] == expected, params
    assert [a["id"] for a in service.get("/api/alerts", params={"open_only": True}).json()["alerts"]] == [
        id_ for id_, _, _, is_open, _ in stored if is_open
    ]
    pages, before = [], None
    while True:  # paging by id walks every alert once, newest first
        body = service.get(
            "/api/alerts", params={"limit": 3, **({"before_id": before} if before else {})}
        ).json()
        pages.append([a["id"] for a in body["alerts"]])
        before = body["next_before_id"]
        if before is None:
            break
    assert list(itertools.chain(*pages)) == [s[0] for s in stored] and max(len(p) for p in pages) == 3
    one = service.get("/api/alerts", params={"kind": "scheduler_down"}).json()["alerts"][0]
    assert one["incident_key"] == "scheduler_down" and one["resolved_at"] and one["opened_at"]


def test_bad_alert_filters_are_refused_with_one_clear_error(service):
    for params, word in [
        ({"state": "closed"}, "state"),
        ({"severity": "fatal"}, "severity"),
        ({"since": "yesterday"}, "since"),
        ({"since": "2026-11-01T00:00:00"}, "since"),
        ({"limit": 0}, "limit"),
        ({"before_id": -1}, "before_id"),
        ({"kind": ""}, "kind"),
    ]:
        response = service.get("/api/alerts", params=params)
        assert response.status_code in (400, 422), (params, response.text)
        error = response.json()["error"]
        assert error["code"] and word in error["message"], (params, response.text)


def test_an_open_export_circuit_breaker_is_listed_as_a_critical_alert_until_it_closes(service):
    from ledgerflow.export.saga import ExportSaga

    breaker = ExportSaga(service.app).breaker
    assert [breaker.failure("HTTP 503 from the destination") for _ in range(3)] == [False, False, True]
    listed = service.get("/api/alerts", params={"kind": "export_breaker_open", "state": "open"}).json()[
        "alerts"
    ]
    assert [(a["incident_key"], a["severity"]) for a in listed] == [
        (f"export_breaker_open:{breaker.destination}", "critical")
    ]
    breaker.success()
    assert (
        service.get("/api/alerts", params={"kind": "export_breaker_open", "state": "open"}).json()["alerts"]
        == []
    )
    resolved = service.get("/api/alerts", params={"kind": "export_breaker_open", "state": "resolved"}).json()
    assert [a["id"] for a in resolved["alerts"]] == [listed[0]["id"]]
