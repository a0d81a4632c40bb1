"""Cleanup of everything that grows: what `daily_cleanup` and `ledgerflow prune` delete.

Each kind has its own retention (`LEDGERFLOW_PRUNE_*`). Rows go in chunks of `CHUNK`, one
transaction each, so a first cleanup of a large history never holds SQLite's write lock for
long. Never pruned: journal entries and lines, the export queue and batches, the export audit
log (`export_logs`, a hash chain), receipts, dead jobs (until retried or purged), open alerts,
and the fire rows a scheduler still needs (those at or after each schedule's cursor).
"""

from __future__ import annotations

import os
import secrets
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Column, Table, and_, delete, or_, select

from ledgerflow.db.tables import (
    NOT_AWAITED,
    alerts,
    export_batches,
    job_executions,
    job_schedules,
    jobs,
    schedule_fires,
    workers,
)
from ledgerflow.engine.states import PRUNE
from ledgerflow.engine.store import allowed
from ledgerflow.export.saga import FINAL, batch_folder, work_root
from ledgerflow.logs import get_logger

if TYPE_CHECKING:
    from ledgerflow.app import App
    from ledgerflow.config import Settings

#: Rows deleted per transaction.
CHUNK = 5000


@dataclass(frozen=True)
class Retention:
    """How long each kind of record is kept after it is finished."""

    jobs: timedelta  # completed/cancelled jobs and completed executions
    fires: timedelta  # schedule_fires rows
    alerts: timedelta  # resolved alerts
    workers: timedelta  # rows of stopped or vanished workers and schedulers
    export_work: timedelta  # work folders of completed or abandoned export batches

    @classmethod
    def from_settings(cls, s: Settings, job_days: int | None = None) -> Retention:
        return cls(
            jobs=timedelta(days=job_days or s.prune_after_days),
            fires=timedelta(days=s.prune_fires_after_days),
            alerts=timedelta(days=s.prune_alerts_after_days),
            workers=timedelta(days=s.prune_workers_after_days),
            export_work=timedelta(days=s.prune_export_work_after_days),
        )


def prune(app: App, retention: Retention | None = None, now: datetime | None = None) -> dict[str, int]:
    """Delete what is older than its retention at `now` (default: the current time); returns counts."""
    keep = retention or Retention.from_settings(app.settings)
    now = now or datetime.now(UTC)
    db = app.db
    cut = {kind: now - getattr(keep, kind) for kind in ("jobs", "fires", "alerts", "workers")}
    cursor = (
        select(job_schedules.c.last_fire_time)
        .where(job_schedules.c.id == schedule_fires.c.schedule_id)
        .scalar_subquery()
    )
    counts = {
        "executions": _delete(
            app,
            job_executions,
            job_executions.c.id,
            and_(job_executions.c.status == "completed", job_executions.c.completed_at < cut["jobs"]),
        ),
        "jobs": _delete(
            app,
            jobs,
            jobs.c.id,
            and_(allowed(PRUNE), jobs.c.finished_at < cut["jobs"], NOT_AWAITED),
        ),
        # a cron fire before its schedule's cursor can never be due again; a manual run is keyed
        # by its run key, which may be used again once its row is gone
        "schedule_fires": _delete(
            app,
            schedule_fires,
            schedule_fires.c.id,
            and_(
                schedule_fires.c.fire_time < cut["fires"],
                or_(schedule_fires.c.trigger == "manual", schedule_fires.c.fire_time < cursor),
            ),
        ),
        "alerts": _delete(
            app,
            alerts,
            alerts.c.id,
            and_(alerts.c.resolved_at.is_not(None), alerts.c.resolved_at < cut["alerts"]),
        ),
        "workers": _delete(
            app,
            workers,
            workers.c.id,
            or_(
                workers.c.stopped_at < cut["workers"],
                and_(workers.c.stopped_at.is_(None), workers.c.heartbeat_at < cut["workers"]),
            ),
        ),
        "export_work_folders": _prune_work_folders(app, now - keep.export_work),
    }
    get_logger("cleanup").info("cleanup_done", **counts, database=db.backend.name)
    return counts


def _delete(app: App, table: Table, key: Column[Any], where: Any) -> int:
    """Delete the rows matching `where`, CHUNK per transaction."""
    total = 0
    while True:
        with app.db.begin() as conn:
            app.db.lift_limits(conn)  # finding a chunk in a long history may take a while
            chunk = select(key).where(where).limit(CHUNK)
            # `where` again on the row itself: PostgreSQL rechecks it on a row changed while the
            # DELETE waited for it (a job retried meanwhile), not the subquery's old version
            deleted = int(conn.execute(delete(table).where(key.in_(chunk), where)).rowcount)
        total += deleted
        if deleted < CHUNK:
            return total


def _prune_work_folders(app: App, cutoff: datetime) -> int:
    """Remove batch work folders untouched since `cutoff`, unless their batch is still running.

    A completed batch's folder is normally removed by the saga itself; what stays is an
    abandoned batch's, or one left by a crash. A folder is first renamed, then deleted: a
    re-run of an abandoned batch that starts at that moment writes a fresh folder (or, at worst,
    fails that attempt and retries).
    """
    root = work_root(app.settings)
    if not root.is_dir():
        return 0
    with app.db.read() as conn:
        live = {
            batch_folder(app.settings, key).name
            for key in conn.execute(
                select(export_batches.c.batch_key).where(export_batches.c.state.not_in(FINAL))
            ).scalars()
        }
    removed = 0
    for folder in root.iterdir():
        if folder.name.startswith(".") or not folder.is_dir() or folder.name in live:
            continue
        if _last_change(folder) >= cutoff.timestamp():
            continue
        doomed = root / f".pruned-{folder.name}-{secrets.token_hex(4)}"
        try:
            folder.rename(doomed)
        except FileNotFoundError:
            continue  # gone meanwhile
        shutil.rmtree(doomed, ignore_errors=True)
        removed += 1
    for debris in root.glob(".pruned-*"):  # left by a cleanup that was killed half-way
        shutil.rmtree(debris, ignore_errors=True)
    return removed


def _last_change(folder: Path) -> float:
    """The newest modification time of the folder and the files directly in it."""
    newest = folder.stat().st_mtime
    with os.scandir(folder) as entries:
        for entry in entries:
            newest = max(newest, entry.stat(follow_symlinks=False).st_mtime)
    return newest
