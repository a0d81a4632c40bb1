"""Ids are never handed out twice, even after the newest rows were pruned (both backends)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select

from ledgerflow.cleanup import prune
from ledgerflow.db.tables import alerts, job_executions


def test_pruned_jobs_executions_and_alerts_never_give_their_ids_back(make_app):
    app = make_app()

    @app.task(name="quick")
    def quick() -> None: ...

    single = quick.enqueue().id
    bulk = app.enqueue_many([quick.prepare() for _ in range(5)])
    app.run_worker(burst=True)
    app.alerts.raise_alert("test:pruned", "warning", "an alert", "to be pruned")
    app.alerts.resolve("test:pruned")
    with app.db.read() as conn:
        last_execution = conn.execute(select(func.max(job_executions.c.id))).scalar()
        last_alert = conn.execute(select(func.max(alerts.c.id))).scalar()
    counts = prune(app, now=datetime.now(UTC) + timedelta(days=3650))
    assert counts["jobs"] == 6 and counts["executions"] == 6 and counts["alerts"] == 1
    assert app.store.list() == []

    after_single = quick.enqueue().id
    after_bulk = app.enqueue_many([quick.prepare() for _ in range(3)])
    assert after_single == max([single, *bulk]) + 1, "a pruned id was handed out again"
    assert after_bulk == [after_single + 1, after_single + 2, after_single + 3]
    assert [app.get_job(i).id for i in after_bulk] == after_bulk, "bulk ids name the rows inserted"
    app.run_worker(burst=True)
    app.alerts.raise_alert("test:after", "warning", "another alert", "new")
    with app.db.read() as conn:
        first_execution = conn.execute(select(func.min(job_executions.c.id))).scalar()
        new_alert = conn.execute(select(func.max(alerts.c.id))).scalar()
    assert first_execution > last_execution and new_alert > last_alert
