"""The standard schedules (SPEC §5), seeded by `ledgerflow init`, disabled until their task exists."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ledgerflow.errors import NotFound
from ledgerflow.scheduler.schedules import Schedule

if TYPE_CHECKING:
    from ledgerflow.app import App

#: Reasons set automatically; a schedule disabled for one of them is enabled once it clears.
AUTO_REASON_PREFIXES = ("task ", "needs ")


@dataclass(frozen=True)
class Standard:
    name: str
    cron: str
    task: str
    queue: str
    priority: int
    requires: Callable[[App], str | None] = lambda app: None


def _needs_mail(app: App) -> str | None:
    from ledgerflow.receipts.mail import missing_mail_settings

    missing = missing_mail_settings(app.settings)
    return f"needs {', '.join(missing)}" if missing else None


def standard_schedules(app: App) -> list[Standard]:
    return [
        Standard("daily_export", app.settings.daily_export_cron, "ledgerflow.export.daily", "exports", 1),
        Standard(
            "email_monitoring", "0 8 * * 1-5", "ledgerflow.receipts.email_scan", "receipts", 5, _needs_mail
        ),
        Standard("daily_cleanup", "0 23 * * *", "ledgerflow.cleanup", "maintenance", 7),
        # receipts arrive only by mail: without a mailbox there is nothing to de-duplicate or report
        Standard(
            "weekly_dedup", "0 2 * * 0", "ledgerflow.receipts.duplicate_cleanup", "receipts", 7, _needs_mail
        ),
        Standard("monthly_report", "0 1 L * *", "ledgerflow.receipts.report", "reports", 6, _needs_mail),
        Standard("weekly_backup", "0 3 * * 1", "ledgerflow.backup", "maintenance", 5),
    ]


def seed_standard_schedules(app: App) -> list[Schedule]:
    """Create or refresh the standard schedules; enable each one whose task and settings are there."""
    from ledgerflow.scheduler.store import ScheduleExists, ScheduleStore

    store = ScheduleStore(app)
    out = []
    for std in standard_schedules(app):
        if std.task not in app.registry:
            reason: str | None = f"task {std.task} is not registered"
        else:
            reason = std.requires(app)
        try:
            current: Schedule | None = store.get(std.name)
        except NotFound:
            current = None
        user_disabled = (
            current is not None
            and not current.enabled
            and not (current.disabled_reason or "").startswith(AUTO_REASON_PREFIXES)
        )
        enabled = reason is None and not user_disabled
        schedule = Schedule(
            name=std.name,
            cron_expression=std.cron,
            job_type=std.task,
            timezone=app.settings.timezone,
            queue=std.queue,
            priority=std.priority,
            enabled=enabled,
            disabled_reason=None if enabled else (reason or (current.disabled_reason if current else None)),
            standard=True,
        )
        if current is None:
            try:
                out.append(store.add(schedule))
                continue
            except ScheduleExists:  # another scheduler seeded it at the same moment
                current = store.get(std.name)
        updated = store.upsert(schedule, keep_enabled=False)
        if enabled and not current.enabled:
            updated = store.set_enabled(std.name, True)
        out.append(updated)
    return out
