"""The export's tasks: the daily batch (scheduled at LEDGERFLOW_DAILY_EXPORT_CRON) and the
immediate path (one small batch per `immediate` entry, enqueued when it is recorded)."""

from __future__ import annotations

import contextlib
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from ledgerflow.engine.jobs import Job, JobSpec, current_job
from ledgerflow.errors import LedgerflowError, Snooze
from ledgerflow.export.saga import RETRY_DELAYS, ExportResult, ExportSaga
from ledgerflow.ledger.dates import check_not_after_today, parse_day

if TYPE_CHECKING:
    from ledgerflow.app import App

DAILY_TASK = "ledgerflow.export.daily"
IMMEDIATE_TASK = "ledgerflow.export.immediate"


class ExportFailed(LedgerflowError):
    """An export attempt failed (or its compensation is pending); the job runs it again."""

    code = "export_failed"


def batch_date_for(app: App, batch_date: str | None) -> date:
    """The explicit date (YYYY-MM-DD, not after today), else the local date of the schedule's
    fire time, else today (local)."""
    if batch_date:
        return check_not_after_today(parse_day(batch_date, "batch_date"), app.settings.timezone, "batch_date")
    zone = ZoneInfo(app.settings.timezone)
    job = current_job()
    if job is not None and job.fire_time is not None:
        if job.schedule_id is not None:
            with contextlib.suppress(LedgerflowError):
                zone = app.schedules.get(job.schedule_id).tz
        return job.fire_time.astimezone(zone).date()
    return datetime.now(UTC).astimezone(zone).date()


def settle(result: ExportResult) -> dict[str, Any]:
    """Map a saga result onto the job: snooze while deferred or busy, fail to retry."""
    if result.deferred_until is not None:
        raise Snooze(
            max(1.0, (result.deferred_until - datetime.now(UTC)).total_seconds()),
            "the destination's circuit breaker is open",
        )
    if result.in_progress:
        raise Snooze(30.0, f"batch {result.batch_key} is being exported by another process")
    if result.unfinished:  # an attempt failed, or compensation is still pending
        raise ExportFailed(f"{result.batch_key}: {result.error}")
    return result.to_dict()


def enqueue_daily_export(app: App, day: date, scheduled_at: datetime | None = None) -> Job:
    """Queue the export of batch `day` for a worker (once: the job's unique key is the batch)."""
    task = app.registry.get(DAILY_TASK)
    o = task.options
    return app.enqueue(
        JobSpec(
            task=DAILY_TASK,
            kwargs={"batch_date": day.isoformat()},
            queue=o.queue,
            priority=o.priority,
            max_attempts=o.max_attempts,
            timeout=o.timeout,
            scheduled_at=scheduled_at,
            unique_key=f"export:daily:{day.isoformat()}",
        )
    )


def register_export_tasks(app: App) -> None:
    @app.task(
        name=DAILY_TASK,
        queue="exports",
        priority=1,
        max_attempts=4,
        timeout=1800,
        retry_backoff=list(RETRY_DELAYS),
    )
    def daily_export(batch_date: str | None = None) -> dict[str, Any]:
        """Export batch D (the local date of the fire, or `batch_date`) exactly once."""
        return settle(ExportSaga(app).run_daily(batch_date_for(app, batch_date)))

    @app.task(
        name=IMMEDIATE_TASK,
        queue="exports",
        priority=1,
        max_attempts=4,
        timeout=600,
        retry_backoff=list(RETRY_DELAYS),
    )
    def immediate_export(entry_id: int) -> dict[str, Any]:
        """Export one immediate entry in a batch of its own."""
        return settle(ExportSaga(app).run_immediate(entry_id))
