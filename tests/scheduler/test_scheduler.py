"""The scheduler on both backends: exactly once per fire, misfire, overlap, restarts, CLI."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select, update

from ledgerflow import App, BadInput, Conflict, JobState
from ledgerflow.clock import FixedClock
from ledgerflow.db.tables import job_schedules, jobs, schedule_fires, workers
from ledgerflow.scheduler.loop import Scheduler
from ledgerflow.scheduler.schedules import Schedule
from tests.conftest import FAST, ROOT, wait_until

T0 = datetime(2026, 11, 26, 0, 0, 30, tzinfo=UTC)


def hourly(app: App, name: str = "hourly", **options) -> Schedule:
    schedule = app.schedules.add(
        Schedule(name=name, cron_expression="0 * * * *", job_type="tick", timezone="UTC", **options)
    )
    with app.db.begin() as conn:  # created at T0 on the test clock
        conn.execute(update(job_schedules).where(job_schedules.c.id == schedule.id).values(created_at=T0))
    return app.schedules.get(name)


@pytest.fixture
def app(make_app):
    app = make_app()

    @app.task(name="tick")
    def tick() -> None: ...

    return app


def fires_of(app: App, name: str) -> list[tuple[str, str]]:
    return [
        (r["fire_time"].astimezone(UTC).strftime("%H:%M"), r["status"])
        for r in reversed(app.schedules.fires(name))
    ]


def test_misfire_skip_runs_only_the_latest_fire_after_a_3_hour_outage(app):
    hourly(app)
    clock = FixedClock(T0)
    scheduler = Scheduler(app, clock)
    assert scheduler.tick() == []
    clock.set(T0 + timedelta(hours=3, minutes=10))
    decisions = scheduler.tick()
    assert [(d.fire_time.strftime("%H:%M"), d.status) for d in decisions] == [
        ("01:00", "missed"),
        ("02:00", "missed"),
        ("03:00", "enqueued"),
    ]
    assert fires_of(app, "hourly") == [("01:00", "missed"), ("02:00", "missed"), ("03:00", "enqueued")]
    assert "misfire policy 'skip'" in app.schedules.fires("hourly", status="missed")[0]["reason"]
    assert app.alerts.is_open("schedule_missed:hourly")
    assert scheduler.tick() == []  # nothing fires twice


def test_after_a_weekend_outage_the_fire_records_say_what_really_happened(app):
    """Saturday's and Sunday's fires move to Monday's run; the scheduler is down until Wednesday.
    With misfire 'skip' only Wednesday runs: the weekend fires are recorded missed, not
    "skipped — runs with the fire of" a fire that was itself missed."""
    schedule = app.schedules.add(
        Schedule(
            name="weekday", cron_expression="0 9 * * *", job_type="tick", timezone="UTC", business_day="next"
        )
    )
    friday = datetime(2026, 11, 6, 9, 30, tzinfo=UTC)
    with app.db.begin() as conn:
        conn.execute(update(job_schedules).where(job_schedules.c.id == schedule.id).values(created_at=friday))
    Scheduler(app, FixedClock(datetime(2026, 11, 11, 9, 30, tzinfo=UTC))).tick()
    recorded = [
        (r["fire_time"].strftime("%a"), r["status"], r["job_id"] is not None)
        for r in reversed(app.schedules.fires("weekday"))
    ]
    assert recorded == [
        ("Sat", "missed", False),
        ("Sun", "missed", False),
        ("Mon", "missed", False),
        ("Tue", "missed", False),
        ("Wed", "enqueued", True),
    ]


def test_misfire_all_catches_up_every_missed_fire_up_to_the_cap(app):
    hourly(app, misfire_policy="all", misfire_max=2, allow_overlap=True)
    clock = FixedClock(T0)
    scheduler = Scheduler(app, clock)
    clock.set(T0 + timedelta(hours=3, minutes=10))
    scheduler.tick()
    assert fires_of(app, "hourly") == [("01:00", "missed"), ("02:00", "enqueued"), ("03:00", "enqueued")]
    assert "capped at 2" in app.schedules.fires("hourly", status="missed")[0]["reason"]
    with app.db.read() as conn:
        fire_times = (
            conn.execute(select(jobs.c.fire_time).where(jobs.c.schedule_id.is_not(None))).scalars().all()
        )
    assert sorted(t.strftime("%H:%M") for t in fire_times) == ["02:00", "03:00"]


def test_fire_is_skipped_and_recorded_while_the_previous_run_is_still_running(app):
    hourly(app)
    clock = FixedClock(T0 + timedelta(minutes=30))
    scheduler = Scheduler(app, clock)
    clock.set(T0 + timedelta(hours=1))
    (first,) = scheduler.tick()
    clock.set(T0 + timedelta(hours=2))
    (second,) = scheduler.tick()
    assert second.status == "skipped" and f"job {first.job_id}) is still running" in (second.reason or "")
    app.run_worker(burst=True)
    clock.set(T0 + timedelta(hours=3))
    (third,) = scheduler.tick()
    assert third.status == "enqueued"


def test_a_daily_export_fire_skipped_by_the_overlap_rule_raises_an_alert_until_a_fire_runs(app):
    @app.task(name="ledgerflow.export.daily")
    def export() -> None: ...

    app.schedules.add(
        Schedule(
            name="export", cron_expression="0 * * * *", job_type="ledgerflow.export.daily", timezone="UTC"
        )
    )
    with app.db.begin() as conn:
        conn.execute(update(job_schedules).where(job_schedules.c.name == "export").values(created_at=T0))
    hourly(app)  # an ordinary schedule skipped the same way raises nothing
    clock = FixedClock(T0 + timedelta(minutes=30))
    scheduler = Scheduler(app, clock)
    clock.set(T0 + timedelta(hours=1))
    first = {d.schedule: d for d in scheduler.tick()}
    assert not app.alerts.is_open("export_fire_skipped:export")
    clock.set(T0 + timedelta(hours=2))
    second = {d.schedule: d for d in scheduler.tick()}
    assert second["export"].status == "skipped" and second["hourly"].status == "skipped"
    assert app.alerts.is_open("export_fire_skipped:export")
    assert not app.alerts.is_open("export_fire_skipped:hourly")
    (alert,) = app.alerts.history(open_only=True, kind="export_fire_skipped")
    assert alert.incident_key == "export_fire_skipped:export" and alert.severity == "error"
    assert alert.message == (
        "the fire of 2026-11-26T02:00:00+00:00 did not run: the previous export "
        f"(job {first['export'].job_id}) is still running; its entries wait for the next export"
    )
    app.run_worker(burst=True)
    clock.set(T0 + timedelta(hours=3))
    assert {d.schedule: d.status for d in scheduler.tick()}["export"] == "enqueued"
    assert not app.alerts.is_open("export_fire_skipped:export"), "resolved when a later fire runs"


def test_disabled_schedule_does_not_fire_but_run_now_does_once_per_run_id(app):
    hourly(app)
    app.schedules.set_enabled("hourly", False)
    clock = FixedClock(T0 + timedelta(hours=5))
    assert Scheduler(app, clock).tick() == []
    result = app.schedules.run_now("hourly", run_key="close-2026-11")
    assert app.get_job(result["job_id"]).schedule_id == app.schedules.get("hourly").id
    with pytest.raises(Conflict, match="already triggered"):
        app.schedules.run_now("hourly", run_key="close-2026-11")
    enabled = app.schedules.set_enabled("hourly", True)
    assert enabled.next_fire_time is not None and enabled.disabled_reason is None


def test_schedules_survive_restarts_and_a_new_process_fires_them(app, db_url):
    hourly(app)
    app.close()
    again = App(database_url=db_url, log_level="WARNING")
    again.task(name="tick")(lambda: None)
    decisions = Scheduler(again, FixedClock(T0 + timedelta(hours=1, seconds=5))).tick()
    assert [d.status for d in decisions] == ["enqueued"]
    again.run_worker(burst=True)
    history = again.schedules.history("hourly")
    assert [(h["status"], h["fire_time"].astimezone(UTC).hour) for h in history] == [("completed", 1)]
    again.close()


def test_business_day_schedule_runs_month_end_close_on_the_previous_business_day(app):
    schedule = app.schedules.add(
        Schedule(
            name="close",
            cron_expression="0 18 L * *",
            job_type="tick",
            timezone="Asia/Bangkok",
            holiday_calendar="TH",
            business_day="previous",
        )
    )
    with app.db.begin() as conn:
        conn.execute(
            update(job_schedules)
            .where(job_schedules.c.id == schedule.id)
            .values(created_at=datetime(2026, 1, 25, tzinfo=UTC))
        )
    clock = FixedClock(datetime(2026, 1, 30, 10, 59, tzinfo=UTC))  # Fri 17:59 Bangkok
    scheduler = Scheduler(app, clock)
    assert scheduler.tick() == []
    clock.set(datetime(2026, 1, 30, 11, 0, 1, tzinfo=UTC))  # Fri 18:00:01 Bangkok
    (decision,) = scheduler.tick()
    assert decision.status == "enqueued"
    assert decision.fire_time.isoformat() == "2026-01-31T18:00:00+07:00"  # the nominal L (a Saturday)
    job = app.get_job(decision.job_id)
    assert job.scheduled_at == datetime(2026, 1, 30, 11, 0, tzinfo=UTC)
    clock.set(datetime(2026, 2, 1, tzinfo=UTC))
    assert scheduler.tick() == []  # the Saturday itself does not fire again


def test_standard_schedules_are_seeded_disabled_until_their_task_exists(app):
    stored = {s.name: s for s in app.sync_schedules()}
    assert set(stored) == {
        "daily_export",
        "email_monitoring",
        "daily_cleanup",
        "weekly_dedup",
        "monthly_report",
        "weekly_backup",
    }
    assert not stored["daily_export"].enabled
    assert stored["daily_export"].disabled_reason == "task ledgerflow.export.daily is not registered"
    assert stored["monthly_report"].cron_expression == "0 1 L * *"

    @app.task(name="ledgerflow.export.daily")
    def export() -> None: ...

    stored = {s.name: s for s in app.sync_schedules()}
    assert stored["daily_export"].enabled and stored["daily_export"].next_fire_time is not None
    app.schedules.set_enabled("daily_export", False)
    stored = {s.name: s for s in app.sync_schedules()}
    assert not stored["daily_export"].enabled, "a schedule disabled by the user stays disabled"


def test_code_declared_schedule_and_periodic_decorator_are_synced(app):
    @app.periodic("*/5 * * * *", timezone="Asia/Tokyo", queue="reports")
    def report() -> None: ...

    app.schedule("nightly", "0 2 * * *", "tick", args=[1], timezone="Asia/Bangkok")
    app.sync_schedules()
    assert app.schedules.get("report").timezone == "Asia/Tokyo"
    assert app.schedules.get("report").job_type == report.name
    assert app.schedules.get("nightly").args == [1]
    app.schedule("nightly", "0 3 * * *", "tick", args=[1], timezone="Asia/Bangkok")
    app.sync_schedules()
    assert app.schedules.get("nightly").cron_expression == "0 3 * * *"
    with pytest.raises(BadInput, match="unknown task"):
        app.schedule("x", "0 2 * * *", "missing")


def schedulers_registered(app: App) -> int:
    """Scheduler processes that completed a tick (they register at the end of their first)."""
    with app.db.read() as conn:
        return int(conn.execute(select(func.count()).where(workers.c.kind == "scheduler")).scalar_one())


def test_three_scheduler_processes_enqueue_exactly_one_job_per_fire_time(app, db_url, tmp_path):
    app.schedules.add(
        Schedule(
            name="every_minute",
            cron_expression="* * * * *",
            job_type="record",
            timezone="UTC",
            allow_overlap=True,
        )
    )
    created = app.schedules.get("every_minute").created_at
    assert created is not None
    speed = 30.0  # one simulated minute every two real seconds
    anchor = time.time()
    clock = f"accelerated:{created.isoformat()},{anchor},{speed}"
    env = {
        **os.environ,
        **FAST,
        "LEDGERFLOW_DATABASE_URL": db_url,
        "LEDGERFLOW_CLOCK": clock,
        "PYTHONPATH": str(ROOT),
        "LEDGERFLOW_LOG_JSON": "true",
    }
    logs = [open(tmp_path / f"scheduler{i}.log", "w") for i in range(3)]  # noqa: SIM115
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ledgerflow",
                "scheduler",
                "--app",
                "tests.apps.basic:app",
                "--tick",
                "0.1",
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
        for log in logs
    ]

    def fires() -> list[Any]:
        with app.db.read() as conn:
            query = select(schedule_fires.c.fire_time, schedule_fires.c.status, schedule_fires.c.job_id)
            return list(conn.execute(query.order_by(schedule_fires.c.fire_time)))

    try:
        # fires due before all three have started may rightly be missed (however slow the start-up);
        # from then on every simulated minute must fire once
        wait_until(lambda: schedulers_registered(app) == 3, 120, 0.1, "three schedulers ticking")
        ready = created + timedelta(seconds=(time.time() - anchor) * speed)
        wait_until(lambda: len([r for r in fires() if r.fire_time > ready]) >= 6, 120, 0.2, "six fires")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            assert p.wait(15) == 0
        for log in logs:
            log.close()
    rows = fires()
    with app.db.read() as conn:
        per_fire = conn.execute(select(jobs.c.fire_time, func.count()).group_by(jobs.c.fire_time)).all()
    since_ready = [r for r in rows if r.fire_time > ready]
    assert {r.status for r in since_ready} == {"enqueued"}, "none missed or skipped"
    minutes = [r.fire_time for r in since_ready]
    assert all(b - a == timedelta(minutes=1) for a, b in itertools.pairwise(minutes)), "consecutive"
    enqueued = [r for r in rows if r.status == "enqueued"]
    assert {n for _, n in per_fire} == {1} and len(per_fire) == len(enqueued), "exactly one job per fire time"
    pids = {
        line
        for p in (tmp_path / f"scheduler{i}.log" for i in range(3))
        for line in p.read_text().splitlines()
        if '"schedule_fire"' in line
    }
    assert pids, "the schedulers logged their fires"


def test_schedule_cli_next_prints_iso_times_in_the_schedule_zone(app, db_url):
    env = {**os.environ, "LEDGERFLOW_DATABASE_URL": db_url}
    add = subprocess.run(
        [
            sys.executable,
            "-m",
            "ledgerflow",
            "schedules",
            "add",
            "ny",
            "--cron",
            "30 2 * * *",
            "--task",
            "ledgerflow.cleanup",
            "--timezone",
            "America/New_York",
        ],
        env=env,
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert add.returncode == 0, add.stderr
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "ledgerflow",
            "schedules",
            "next",
            "ny",
            "-n",
            "2",
            "--after",
            "2026-03-07T12:00:00-05:00",
        ],
        env=env,
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert out.stdout.splitlines() == ["2026-03-08T03:00:00-04:00", "2026-03-09T02:30:00-04:00"]
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "ledgerflow",
            "schedules",
            "add",
            "x",
            "--cron",
            "0 25 * * *",
            "--task",
            "ledgerflow.cleanup",
        ],
        env=env,
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert (
        bad.returncode == 2 and bad.stderr.strip() == "error: invalid cron expression '0 25 * * *': Bad hour"
    )
    dup = subprocess.run(
        [
            sys.executable,
            "-m",
            "ledgerflow",
            "schedules",
            "add",
            "ny",
            "--cron",
            "0 1 * * *",
            "--task",
            "ledgerflow.cleanup",
        ],
        env=env,
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert dup.returncode == 2 and "already exists" in dup.stderr


def test_enqueued_fire_and_its_job_are_written_together(app):
    hourly(app)
    clock = FixedClock(T0 + timedelta(hours=1))
    (decision,) = Scheduler(app, clock).tick()
    job = app.get_job(decision.job_id)
    assert job.fire_time == T0.replace(minute=0, second=0) + timedelta(hours=1)
    assert job.state == JobState.AVAILABLE


@pytest.mark.timeout(60)  # before the fix it waited for ever
@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_a_schedule_another_transaction_holds_is_skipped_not_waited_for(app):
    """No leader: a scheduler cut off while firing one schedule holds back only that schedule.
    (PostgreSQL: on SQLite a write transaction holds the whole file, not a row.)"""
    held = hourly(app, "held")
    hourly(app, "free")
    clock = FixedClock(T0 + timedelta(hours=1))
    holder = app.db.engine.connect()
    holder.begin()
    holder.execute(select(job_schedules.c.id).where(job_schedules.c.id == held.id).with_for_update())
    try:
        assert [d.schedule for d in Scheduler(app, clock).tick()] == ["free"]
    finally:
        holder.rollback()
        holder.close()
    assert [d.schedule for d in Scheduler(app, clock).tick()] == ["held"]


def test_registering_a_scheduler_twice_is_harmless(app):
    """A registration whose commit went unanswered (a partition) is simply sent again."""
    scheduler = Scheduler(app, FixedClock(T0))
    scheduler.tick()
    scheduler._registered = False
    scheduler.tick()
    with app.db.read() as conn:
        rows = conn.execute(select(func.count()).where(workers.c.id == scheduler.id)).scalar_one()
    assert rows == 1
