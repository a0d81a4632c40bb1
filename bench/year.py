"""A simulated year of daily operation, with `daily_cleanup` every evening: how big the database gets.

Each simulated day (dates counted back from today, so every batch date is in the past):

* `entries` journal entries of 4 lines are recorded through `app.ledger` and the day's batch is
  exported by the real saga (CSV file, manifest, `export_logs` chain);
* `jobs` jobs are enqueued through the job store and finished that day (2 % after one failed
  attempt), each with its `job_executions` rows, as the worker writes them;
* the schedules fire: six daily or weekly ones and one every 5 minutes (288 `schedule_fires` a day);
* `alerts` incidents are opened and resolved; two workers and a scheduler start and stop;
* a crashed export leaves a work folder every 30 days;
* then the cleanup runs with the default retentions at 23:00 of that day (PostgreSQL: a plain
  `VACUUM` stands in for autovacuum, which reclaims dead rows between the days of a real year).

The size is sampled every `sample_every` days: SQLite's file after a WAL checkpoint, PostgreSQL's
`pg_database_size`, with the share of the books (entries, lines, export queue, batches and the
audit log: never pruned) and of everything else (bounded by the retentions).
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from datetime import time as clock_time
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import func, insert, select, text, update

from ledgerflow import App
from ledgerflow.cleanup import Retention, prune
from ledgerflow.db.tables import (
    alerts,
    job_executions,
    job_schedules,
    jobs,
    metadata,
    schedule_fires,
    workers,
)
from ledgerflow.export.saga import ExportSaga, batch_folder
from ledgerflow.ledger.dates import today_in

BOOKS = (
    "journal_entries",
    "journal_lines",
    "export_queue",
    "export_batches",
    "export_batch_entries",
    "export_logs",
)
SCHEDULES = [  # name, cron, fires a day (weekly ones: 1/7)
    ("daily_export", "0 18 * * *", 1.0),
    ("email_monitoring", "0 8 * * 1-5", 5 / 7),
    ("daily_cleanup", "0 23 * * *", 1.0),
    ("weekly_dedup", "0 2 * * 0", 1 / 7),
    ("weekly_backup", "0 3 * * 1", 1 / 7),
    ("monthly_report", "0 1 L * *", 1 / 30),
    ("inbox_poll", "*/5 * * * *", 288.0),
]


@dataclass(frozen=True)
class Load:
    """One day of a small accounting team's work."""

    entries: int = 200
    jobs: int = 2000
    alerts: int = 4


def simulate(
    app: App,
    days: int,
    load: Load,
    retention: Retention,
    *,
    sample_every: int = 30,
    on_day: Callable[[int, date, dict[str, int]], None] | None = None,
) -> dict[str, Any]:
    """Run `days` simulated days ending yesterday; returns the size samples and final row counts."""
    tz = ZoneInfo(app.settings.timezone)
    first = today_in(app.settings.timezone) - timedelta(days=days)
    schedule_ids = _schedules(app, first, tz)
    samples = []
    started = time.monotonic()
    slowest_cleanup = 0.0
    for n in range(days):
        day = first + timedelta(days=n)
        evening = datetime.combine(day, clock_time(23, 0), tz).astimezone(UTC)
        _books(app, day, load.entries, n)
        job_ids = _jobs(app, day, tz, load.jobs)
        _fires(app, day, tz, schedule_ids, job_ids)
        _incidents(app, day, tz, load.alerts, n)
        if n % 30 == 29:  # a crashed export attempt's leftovers
            folder = batch_folder(app.settings, f"crashed:{day.isoformat()}")
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "part.csv").write_text("half a file\n")
            os.utime(folder / "part.csv", (evening.timestamp(),) * 2)
            os.utime(folder, (evening.timestamp(),) * 2)
        cleanup_started = time.monotonic()
        pruned = prune(app, retention, now=evening)
        slowest_cleanup = max(slowest_cleanup, time.monotonic() - cleanup_started)
        _vacuum(app)
        if on_day:
            on_day(n, day, pruned)
        if n % sample_every == sample_every - 1 or n == days - 1:
            samples.append(
                {
                    "day": n + 1,
                    "seconds": round(time.monotonic() - started),
                    "slowest_cleanup_seconds": round(slowest_cleanup, 2),
                    **size(app),
                }
            )
            slowest_cleanup = 0.0
            print(json.dumps({"backend": app.db.backend.name, **samples[-1]}), file=sys.stderr, flush=True)
    return {"samples": samples, "rows": rows(app), "seconds": round(time.monotonic() - started, 1)}


def _schedules(app: App, first: date, tz: ZoneInfo) -> dict[str, int]:
    start = datetime.combine(first, clock_time(0, 0), tz)
    ids = {}
    with app.db.begin() as conn:
        for name, cron, _ in SCHEDULES:
            ids[name] = conn.execute(
                insert(job_schedules)
                .values(
                    name=name,
                    cron_expression=cron,
                    timezone=str(tz),
                    job_type=f"sim.{name}",
                    args=[],
                    kwargs={},
                    queue="default",
                    priority=5,
                    enabled=False,  # fired by the simulation, not by a scheduler
                    misfire_policy="skip",
                    misfire_max=24,
                    allow_overlap=False,
                    extra_holidays=[],
                    created_at=start,
                    updated_at=start,
                )
                .returning(job_schedules.c.id)
            ).scalar_one()
    return ids


def _books(app: App, day: date, count: int, n: int) -> None:
    entries = [
        {
            "date": day.isoformat(),
            "reference": f"INV-{day:%Y%m%d}-{i:04d}",
            "description": f"ค่าวัสดุสำนักงาน / 事務用品 {i}",
            "currency": "THB",
            "export_path": "scheduled",
            "lines": [
                {"account": "5100", "account_name": "Office supplies", "debit": "1000.00", "credit": "0"},
                {"account": "1500", "account_name": "Input VAT", "debit": "70.00", "credit": "0"},
                {"account": "2100", "account_name": "Accounts payable", "debit": "0", "credit": "1000.00"},
                {"account": "1000", "account_name": "Cash", "debit": "0", "credit": "70.00"},
            ],
        }
        for i in range(count)
    ]
    app.ledger.record_many(entries, source="import")
    result = ExportSaga(app).run_daily(day)
    assert result.state == "completed", result


def _jobs(app: App, day: date, tz: ZoneInfo, count: int) -> list[int]:
    base = datetime.combine(day, clock_time(6, 0), tz).astimezone(UTC)
    rows = [  # the columns of the store's bulk enqueue (`db.backends.BULK_JOB_COLUMNS`)
        (
            "sim.process_receipt",
            "default",
            5,
            "available",
            f"[{10_000 + i}]",  # args and kwargs as JSON text, as the store's bulk enqueue passes them
            '{"mailbox":"books@example.test"}',
            5,
            1800.0,
            base,
        )
        for i in range(count)
    ]
    with app.db.begin() as conn:
        ids = app.db.backend.insert_jobs(conn, rows)
        executions = []
        for i, job_id in enumerate(ids):
            at = base + timedelta(seconds=30 * i)
            retried = i % 50 == 0
            if retried:
                executions.append(_execution(job_id, 1, "failed", at, "ConnectionError", "mail server busy"))
            executions.append(_execution(job_id, 2 if retried else 1, "completed", at + timedelta(seconds=1)))
        conn.execute(insert(job_executions), executions)
        conn.execute(
            update(jobs)
            .where(jobs.c.id.in_(ids))
            .values(
                state="completed",
                attempt=1,
                created_at=base,
                scheduled_at=base,
                started_at=base,
                finished_at=base + timedelta(minutes=2),
                worker_id="sim:1:abc",
                result={"filed": True, "pages": 1},
            )
        )
    return ids


def _execution(
    job_id: int, attempt: int, status: str, at: datetime, error: str | None = None, message: str | None = None
) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "attempt": attempt,
        "task": "sim.process_receipt",
        "queue": "default",
        "status": status,
        "worker_id": "sim:1:abc",
        "started_at": at,
        "completed_at": at + timedelta(seconds=0.4),
        "duration_seconds": 0.4,
        "error_type": error,
        "error_message": message,
        "execution_metadata": None,
    }


def _fires(app: App, day: date, tz: ZoneInfo, ids: dict[str, int], job_ids: list[int]) -> None:
    start = datetime.combine(day, clock_time(0, 0), tz)
    rows = []
    for name, cron, _ in SCHEDULES:
        from ledgerflow.scheduler.schedules import Schedule

        schedule = Schedule(name=name, cron_expression=cron, job_type="x", timezone=str(tz))
        for k, fire in enumerate(
            schedule.due(start - timedelta(microseconds=1), start + timedelta(days=1, microseconds=-1))
        ):
            rows.append(
                {
                    "schedule_id": ids[name],
                    "fire_time": fire.nominal.astimezone(UTC),
                    "run_at": fire.nominal.astimezone(UTC),
                    "status": "enqueued",
                    "reason": None,
                    "job_id": job_ids[k % len(job_ids)] if job_ids else None,
                    "trigger": "cron",
                    "run_key": None,
                    "created_at": fire.nominal.astimezone(UTC),
                }
            )
    with app.db.begin() as conn:
        if rows:
            conn.execute(insert(schedule_fires), rows)
        conn.execute(
            update(job_schedules).values(
                last_fire_time=(start + timedelta(days=1, microseconds=-1)).astimezone(UTC)
            )
        )


def _incidents(app: App, day: date, tz: ZoneInfo, count: int, n: int) -> None:
    morning = datetime.combine(day, clock_time(7, 0), tz).astimezone(UTC)
    with app.db.begin() as conn:
        for i in range(count):
            conn.execute(
                insert(alerts).values(
                    incident_key=f"queue_overflow:q{i}",
                    severity="error",
                    title=f"Queue q{i} is overflowing",
                    message=f"10001 jobs are waiting in queue q{i} (limit 10000): add workers",
                    context={"queue": f"q{i}", "count": 10001, "limit": 10000},
                    opened_at=morning + timedelta(hours=i),
                    resolved_at=morning + timedelta(hours=i, minutes=20),
                    delivery={"webhook": "ok", "email": "ok"},
                )
            )
        for k, kind in enumerate(("worker", "worker", "scheduler")):
            at = morning + timedelta(minutes=k)
            conn.execute(
                insert(workers).values(
                    id=f"host-{k}:{1000 + n}:{k:06x}",
                    kind=kind,
                    hostname=f"host-{k}",
                    pid=1000 + n,
                    queues=["default", "exports"] if kind == "worker" else [],
                    concurrency=8 if kind == "worker" else 0,
                    started_at=at,
                    heartbeat_at=at + timedelta(hours=15),
                    stopped_at=at + timedelta(hours=15),
                )
            )


def _vacuum(app: App) -> None:
    if app.db.is_sqlite:
        return
    with app.db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("VACUUM")


def size(app: App) -> dict[str, int]:
    """Bytes of the whole database, of the books, and of everything else."""
    if app.db.is_sqlite:
        with contextlib.closing(sqlite3.connect(str(app.db.engine.url.database))) as raw:
            raw.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            total = (
                raw.execute("PRAGMA page_count").fetchone()[0] * raw.execute("PRAGMA page_size").fetchone()[0]
            )
            per_table = dict(
                raw.execute(
                    "SELECT coalesce(i.tbl_name, d.name), sum(d.pgsize) FROM dbstat d "
                    "LEFT JOIN sqlite_master i ON i.name = d.name GROUP BY 1"
                ).fetchall()
            )
    else:
        with app.db.read() as conn:
            total = conn.execute(text("SELECT pg_database_size(current_database())")).scalar_one()
            per_table = {
                t: conn.execute(text("SELECT pg_total_relation_size(:t)"), {"t": t}).scalar_one()
                for t in metadata.tables
            }
    books = sum(int(per_table.get(t, 0)) for t in BOOKS)
    return {"bytes": int(total), "books_bytes": books, "other_bytes": int(total) - books}


def rows(app: App) -> dict[str, int]:
    with app.db.read() as conn:
        return {
            name: int(conn.execute(select(func.count()).select_from(table)).scalar_one())
            for name, table in sorted(metadata.tables.items())
        }


def run(backends: list[str], days: int = 365, load: Load | None = None) -> dict[str, Any]:
    """The simulated year on each backend, with the default retentions."""
    import tempfile

    from bench.common import database

    out: dict[str, Any] = {"days": days, "load": (load or Load()).__dict__}
    for backend in backends:
        with database(backend) as url, tempfile.TemporaryDirectory(prefix="lf-year-") as tmp:
            app = App(
                database_url=url,
                export_destination=f"file://{tmp}/exports",
                export_work_dir=f"{tmp}/work",
                log_level="WARNING",
            )
            app.migrate()
            result = simulate(app, days, load or Load(), Retention.from_settings(app.settings))
            result["retention_days"] = {
                k: v.days for k, v in Retention.from_settings(app.settings).__dict__.items()
            }
            out[backend] = result
            app.close()
    return out


if __name__ == "__main__":
    chosen = sys.argv[1].split(",") if len(sys.argv) > 1 else ["sqlite", "postgresql"]
    span = int(sys.argv[2]) if len(sys.argv) > 2 else 365
    report = run(chosen, span)
    print(json.dumps(report, indent=2))
