"""Cleanup of everything that grows, each kind after its own retention; never the books."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

import pytest
from bench.year import Load, simulate
from sqlalchemy import func, insert, select, update

from ledgerflow import App
from ledgerflow.cleanup import Retention, prune
from ledgerflow.db.tables import (
    alerts,
    export_batches,
    export_logs,
    job_executions,
    job_schedules,
    jobs,
    journal_entries,
    schedule_fires,
    workers,
)
from ledgerflow.export.saga import batch_folder
from ledgerflow.export.verify import verify_exports
from ledgerflow.scheduler.schedules import Schedule

NOW = datetime(2026, 11, 26, 16, 0, tzinfo=UTC)
RETENTION = Retention(
    jobs=timedelta(days=30),
    fires=timedelta(days=90),
    alerts=timedelta(days=60),
    workers=timedelta(days=7),
    export_work=timedelta(days=7),
)
#: Ages around each retention: well inside, just inside, just past, far past.
NUDGES = (timedelta(days=-5), timedelta(minutes=-1), timedelta(minutes=1), timedelta(days=400))


@pytest.fixture
def app(make_app, tmp_path) -> App:
    app = make_app(export_destination=f"file://{tmp_path / 'out'}", export_work_dir=str(tmp_path / "work"))

    @app.task(name="t")
    def t() -> None: ...

    return app


def count(app: App, table) -> int:
    with app.db.read() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def ids(app: App, column) -> set:
    with app.db.read() as conn:
        return set(conn.execute(select(column)).scalars())


def test_each_kind_is_pruned_after_its_own_retention_and_nothing_else(app):
    """Rows on both sides of every retention; only the finished ones past it go."""
    expect_gone: dict[str, set] = {k: set() for k in ("jobs", "executions", "fires", "alerts", "workers")}
    expect_kept: dict[str, set] = {k: set() for k in expect_gone}
    schedule = app.schedules.add(Schedule(name="s", cron_expression="0 * * * *", job_type="t"))
    idle = app.schedules.add(Schedule(name="idle", cron_expression="0 * * * *", job_type="t"))
    with app.db.begin() as conn:
        for n, nudge in enumerate(NUDGES):
            when = NOW - RETENTION.jobs - nudge
            past = nudge > timedelta(0)
            for state in ("completed", "cancelled", "dead", "available", "retryable"):
                job_id = app.store.enqueue(conn, [app.registry.get("t").prepare()])[0]
                conn.execute(update(jobs).where(jobs.c.id == job_id).values(state=state, finished_at=when))
                prunable = past and state in ("completed", "cancelled")
                (expect_gone if prunable else expect_kept)["jobs"].add(job_id)
                for attempt, status in ((1, "failed"), (2, "completed")):
                    exec_id = conn.execute(
                        insert(job_executions)
                        .values(
                            job_id=job_id,
                            attempt=attempt,
                            task="t",
                            queue="default",
                            status=status,
                            started_at=when,
                            completed_at=when,
                        )
                        .returning(job_executions.c.id)
                    ).scalar_one()
                    gone = prunable or (past and status == "completed")  # a pruned job takes its failures
                    (expect_gone if gone else expect_kept)["executions"].add(exec_id)
            fire_time = NOW - RETENTION.fires - nudge
            for trigger in ("cron", "manual"):
                fire_id = conn.execute(
                    insert(schedule_fires)
                    .values(
                        schedule_id=schedule.id,
                        fire_time=fire_time + timedelta(seconds=1 if trigger == "manual" else 0),
                        status="enqueued",
                        trigger=trigger,
                        run_key=f"k{n}" if trigger == "manual" else None,
                        created_at=fire_time,
                    )
                    .returning(schedule_fires.c.id)
                ).scalar_one()
                (expect_gone if past else expect_kept)["fires"].add(fire_id)
            opened = NOW - RETENTION.alerts - nudge
            for resolved in (True, False):
                alert_id = conn.execute(
                    insert(alerts)
                    .values(
                        incident_key=f"k{n}:{resolved}",
                        severity="error",
                        title="t",
                        message="m",
                        context={},
                        opened_at=opened - timedelta(days=1),
                        resolved_at=opened if resolved else None,
                        delivery={},
                    )
                    .returning(alerts.c.id)
                ).scalar_one()
                (expect_gone if past and resolved else expect_kept)["alerts"].add(alert_id)
            seen = NOW - RETENTION.workers - nudge
            for kind, stopped in (("worker", True), ("worker", False), ("scheduler", True)):
                worker_id = f"host:{n}:{kind}:{stopped}"
                conn.execute(
                    insert(workers).values(
                        id=worker_id,
                        kind=kind,
                        hostname="host",
                        pid=n,
                        queues=[],
                        concurrency=1,
                        started_at=seen - timedelta(days=1),
                        heartbeat_at=seen,
                        stopped_at=seen if stopped else None,
                    )
                )
                (expect_gone if past else expect_kept)["workers"].add(worker_id)
        conn.execute(
            update(job_schedules)
            .where(job_schedules.c.id == schedule.id)
            .values(last_fire_time=NOW - timedelta(hours=1))
        )
        # a schedule disabled long ago: the fire at its cursor keeps it from firing again
        cursor_fire = NOW - timedelta(days=1000)
        at_cursor = conn.execute(
            insert(schedule_fires)
            .values(
                schedule_id=idle.id,
                fire_time=cursor_fire,
                status="enqueued",
                trigger="cron",
                created_at=cursor_fire,
            )
            .returning(schedule_fires.c.id)
        ).scalar_one()
        conn.execute(
            update(job_schedules).where(job_schedules.c.id == idle.id).values(last_fire_time=cursor_fire)
        )
    counts = prune(app, RETENTION, now=NOW)
    expect_kept["fires"].add(at_cursor)
    remaining = {
        "jobs": ids(app, jobs.c.id),
        "executions": ids(app, job_executions.c.id),
        "fires": ids(app, schedule_fires.c.id),
        "alerts": ids(app, alerts.c.id),
        "workers": ids(app, workers.c.id),
    }
    for kind, left in remaining.items():
        assert left == expect_kept[kind], kind
        assert not left & expect_gone[kind], kind
    assert counts["jobs"] == len(expect_gone["jobs"]) and counts["alerts"] == len(expect_gone["alerts"])
    assert counts["schedule_fires"] == len(expect_gone["fires"]) and counts["workers"] == len(
        expect_gone["workers"]
    )
    assert prune(app, RETENTION, now=NOW) == dict.fromkeys(counts, 0), "a second run finds nothing"


def test_cron_fires_before_the_cursor_go_but_a_fire_a_scheduler_still_needs_stays(app):
    """A cron fire at or after its schedule's cursor is kept whatever its age (it guards a fire
    that could otherwise be due again); once the cursor has passed it, it goes."""
    schedule = app.schedules.add(Schedule(name="s", cron_expression="0 * * * *", job_type="t"))
    old = NOW - timedelta(days=365)
    with app.db.begin() as conn:
        conn.execute(
            insert(schedule_fires).values(
                schedule_id=schedule.id, fire_time=old, status="missed", trigger="cron", created_at=old
            )
        )
        conn.execute(update(job_schedules).values(last_fire_time=old))
    assert prune(app, RETENTION, now=NOW)["schedule_fires"] == 0
    with app.db.begin() as conn:
        conn.execute(update(job_schedules).values(last_fire_time=old + timedelta(hours=1)))
    assert prune(app, RETENTION, now=NOW)["schedule_fires"] == 1


def test_work_folders_of_finished_or_unknown_batches_go_after_their_retention(app):
    s = app.settings
    old = (NOW - RETENTION.export_work - timedelta(hours=1)).timestamp()
    fresh = (NOW - RETENTION.export_work + timedelta(hours=1)).timestamp()
    with app.db.begin() as conn:
        for key, state in (
            ("daily:2026-10-01", "abandoned"),
            ("daily:2026-10-02", "retryable"),
            ("daily:2026-10-03", "completed"),
            ("daily:2026-10-04", "uploading"),
        ):
            conn.execute(
                insert(export_batches).values(
                    batch_key=key,
                    kind="daily",
                    batch_date=datetime.fromisoformat(key.split(":")[1]).date(),
                    state=state,
                    step="claimed",
                    max_attempts=4,
                    cutoff_at=NOW,
                    profile="generic",
                    destination="file://x",
                    reservation={},
                    files=[],
                    totals={},
                    created_at=NOW,
                    updated_at=NOW,
                )
            )
    folders = {
        "daily:2026-10-01": (old, False),  # abandoned, old: goes
        "daily:2026-10-02": (old, True),  # retryable: its next attempt resumes from these files
        "daily:2026-10-03": (fresh, True),  # completed, but touched inside the retention
        "daily:2026-10-04": (old, True),  # being uploaded
        "crashed:unknown": (old, False),  # no such batch any more (a crash, a restore): goes
    }
    for key, (mtime, _) in folders.items():
        folder = batch_folder(s, key)
        folder.mkdir(parents=True)
        (folder / "part-1.csv").write_text("a,b\n")
        os.utime(folder / "part-1.csv", (mtime, mtime))
        os.utime(folder, (mtime, mtime))
    assert prune(app, RETENTION, now=NOW)["export_work_folders"] == 2
    for key, (_, kept) in folders.items():
        assert batch_folder(s, key).is_dir() == kept, key
    assert not [p for p in batch_folder(s, "x").parent.iterdir() if p.name.startswith(".")]


def test_rows_go_in_chunks_and_all_of_them_go(app, monkeypatch):
    monkeypatch.setattr("ledgerflow.cleanup.CHUNK", 7)
    old = NOW - timedelta(days=100)
    with app.db.begin() as conn:
        conn.execute(
            insert(alerts),
            [
                {
                    "incident_key": f"k{i}",
                    "severity": "info",
                    "title": "t",
                    "message": "m",
                    "context": {},
                    "opened_at": old,
                    "resolved_at": old,
                    "delivery": {},
                }
                for i in range(30)
            ],
        )
    assert prune(app, RETENTION, now=NOW)["alerts"] == 30 and count(app, alerts) == 0


def test_fifty_simulated_days_stay_bounded_and_the_books_stay_whole(app):
    """Real exports every day, jobs, fires, incidents, worker restarts, a crashed export's folder:
    with a 5-day retention every pruned table stays within 6 days of rows, the books keep every
    row, and the audit chain and every delivered file still verify."""
    keep = Retention(*(timedelta(days=5),) * 5)
    load = Load(entries=3, jobs=40, alerts=2)
    biggest: dict[str, int] = {}
    books: list[int] = []

    def after(n: int, _day, _pruned) -> None:
        for name, table in (
            ("jobs", jobs),
            ("fires", schedule_fires),
            ("alerts", alerts),
            ("workers", workers),
        ):
            biggest[name] = max(biggest.get(name, 0), count(app, table))
        books.append(count(app, journal_entries))

    simulate(app, 50, load, keep, sample_every=50, on_day=after)
    assert biggest["jobs"] <= 6 * load.jobs
    assert biggest["alerts"] <= 6 * load.alerts and biggest["workers"] <= 6 * 3
    assert biggest["fires"] <= 6 * 300
    assert books == [load.entries * (n + 1) for n in range(50)], "no journal entry is ever pruned"
    assert count(app, export_logs) >= 50 and count(app, export_batches) == 50
    report = verify_exports(app)
    assert (
        report["chain_problems"] == [] and report["file_problems"] == [] and report["files_checked"] == 2 * 50
    )  # CSV + manifest
    work = batch_folder(app.settings, "x").parent
    assert [p.name for p in work.iterdir()] == [], "the crashed export's folder went after 5 days"
