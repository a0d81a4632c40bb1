"""Verified database backups: create, list, rotate, restore (`ledgerflow backup …`, task `ledgerflow.backup`).

Every backup is **verified** before it counts (`snapshot.py`), published into the folder with
its manifest last (`folder.py`), optionally put off the machine (`offsite.py`), and rotated
to the newest `keep` backups of this database. A restore checks the file's sha256, refuses
while workers run, and refuses to roll the books back unless forced; a forced restore carries
over what had been delivered (`books.py`).
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError

from ledgerflow.backup import books, offsite, snapshot
from ledgerflow.backup.books import CarriedOver, Newer, RestoreDivergence, RestorePlan, restore_divergences
from ledgerflow.backup.faults import crash_point
from ledgerflow.backup.folder import (
    Backup,
    check_keep,
    clean_stale,
    database_identity,
    fsync,
    is_backup_name,
    list_backups,
    new_name,
    publish,
    rotate,
    sha256_of,
    work_folder,
)
from ledgerflow.backup.snapshot import BackupFailed
from ledgerflow.db.migrate import check_known
from ledgerflow.db.tables import workers
from ledgerflow.errors import BadInput, Conflict, DatabaseUnavailable, LedgerflowError, NotFound

if TYPE_CHECKING:
    from ledgerflow.app import App

__all__ = [
    "Backup",
    "BackupFailed",
    "CarriedOver",
    "Newer",
    "RestoreDivergence",
    "RestoreRefused",
    "Restored",
    "create_backup",
    "describe",
    "list_backups",
    "restore_backup",
    "restore_divergences",
    "restore_lines",
    "rotate",
]


class RestoreRefused(Conflict):
    """Restoring would roll back books that are newer than the backup (or could not be compared)."""

    exit_code = 2
    code = "restore_refused"


@dataclass(frozen=True)
class Restored:
    """What a restore did: the backup, what it rolled back and carried over, and whether it first
    finished an earlier restore that had been killed half-way."""

    backup: Backup
    plan: RestorePlan
    carried: CarriedOver
    finished: str | None = None  # the backup of an interrupted restore this one completed first
    upgraded_from: str | None = None  # the backup's older schema, upgraded to this ledgerflow's

    @property
    def rolled_back(self) -> bool:
        return self.plan.rolled_back


# ------------------------------------------------------------------ create
def create_backup(app: App, directory: str | Path | None = None, keep: int | None = None) -> Backup:
    """Snapshot the database into `directory`, verify it, rotate, and put it off the machine if configured."""
    keep = app.settings.backup_keep if keep is None else keep
    check_keep(keep)  # before anything is made
    destination = offsite.backup_destination(app.settings)
    folder = Path(directory or app.settings.backup_dir)
    folder.mkdir(parents=True, exist_ok=True)
    clean_stale(folder)
    stamp = datetime.now(UTC)
    name = new_name(stamp, app.db.backend.name)
    with work_folder(folder) as work:
        made = snapshot.dump(app.db.url, work, work / name, app.settings.sqlite_busy_timeout)
        crash_point("after_dump")
        digest, size = sha256_of(work / name)
        restored, verified_by = snapshot.verify(app.db.url, work / name, work)
        if restored != made.rows:
            raise BackupFailed(f"backup {name} did not verify: restored rows {restored} != {made.rows}")
        backup = Backup(
            name=name,
            backend=app.db.backend.name,
            created_at=stamp.isoformat(timespec="microseconds"),
            bytes=size,
            sha256=digest,
            revision=_revision(app),
            rows=made.rows,
            verified_at=datetime.now(UTC).isoformat(timespec="seconds"),
            verified_by=verified_by,
            database=database_identity(app.db.url),
            books=made.books,
        )
        crash_point("before_publish")
        publish(work, folder, backup)
    rotate(folder, keep, backup.database, protect=name)
    crash_point("after_rotate")
    if destination is not None:
        try:
            with work_folder(folder) as work:
                for kept in reversed(list_backups(folder, backup.database)):  # catches up on failed uploads
                    if kept.usable:
                        offsite.push(destination, folder, kept)
                offsite.rotate_remote(destination, work, keep, backup.database or "", protect=name)
        except LedgerflowError as exc:
            raise BackupFailed(
                f"backup {name} is verified and kept in {folder}, but not at {destination.key}: {exc} "
                "(the next `backup create` uploads it)"
            ) from exc
    return backup


# ------------------------------------------------------------------ restore
def restore_backup(app: App, name: str, directory: str | Path | None = None, force: bool = False) -> Restored:
    """Replace `app`'s database with backup `name` (fetched from the destination if not local).

    Refused (`RestoreRefused`) when the database holds journal entries, export batches or
    audit rows newer than the backup, or while workers run, unless `force`. A forced restore
    carries over what had been delivered, records the restore in the audit chain and raises
    a critical alert. What must be carried over is saved first: a restore killed half-way is
    finished by the next one.
    """
    folder = Path(directory or app.settings.backup_dir)
    pending = _pending_plan(folder, app)
    interrupted = _finish_interrupted(app, pending, folder)
    backup = _find(app, folder, name)
    if interrupted is not None and interrupted[0].backup == name:
        return _announce(app, Restored(backup, *interrupted, finished=name))  # that was this very restore
    finished = interrupted[0].backup if interrupted else None
    path = folder / backup.name
    digest, _ = sha256_of(path)
    if digest != backup.sha256:
        raise BadInput(f"backup {name} is damaged: sha256 {digest} != {backup.sha256} in its manifest")
    if backup.backend != app.db.backend.name:
        raise BadInput(f"backup {name} is a {backup.backend} backup; the database is {app.db.backend.name}")
    check_known(backup.revision, f"backup {name}")  # even forced: nothing here could read it
    newer, unread, delivered = None, None, books.Delivered()
    try:
        live = 0 if force else _live_processes(app)
        if live:
            raise Conflict(
                f"{live} worker/scheduler process(es) are running against this database: stop them "
                "(or pass --force)"
            )
        if backup.books is None:
            unread = f"backup {name} was made before backups recorded the state of the books"
        else:
            newer = books.compare(app.db, backup.books, datetime.fromisoformat(backup.created_at))
            delivered = books.capture(app.db, newer)
    except (SQLAlchemyError, DatabaseUnavailable) as exc:
        unread = _first_line(exc)
    if not force:
        if unread:
            raise RestoreRefused(
                f"cannot tell what restoring {name} would roll back: {unread}; --force restores it anyway"
            )
        if newer is not None and not newer.empty:
            raise RestoreRefused(
                f"refusing to restore {name}: the database holds {newer.describe()}; "
                "--force restores it and carries over what was delivered"
            )
    since = datetime.fromisoformat(backup.created_at)
    plan = books.plan_restore(name, backup.books, since, newer, delivered, forced=force, unread=unread)
    pending.write_bytes(plan.to_json())
    fsync(pending)
    crash_point("before_restore")
    app.db.dispose()  # no pooled connection may keep the old file open or hold locks pg_restore waits for
    snapshot.restore(app.db.url, path, name)
    app.db.dispose()
    crash_point("after_restore")
    upgraded_from = _upgrade(app, backup)
    result = Restored(backup, plan, books.carry_over(app.db, plan), finished, upgraded_from)
    pending.unlink()
    return _announce(app, result)


def _announce(app: App, result: Restored) -> Restored:
    """A restore that rolled the books back raises a critical alert."""
    if result.rolled_back:
        name = result.plan.backup
        app.alerts.raise_alert(
            f"backup_restore_rolled_back:{name}",
            "critical",
            f"Restored backup {name}: the books were rolled back",
            "; ".join(restore_lines(result)),
            backup=name,
        )
    return result


def _pending_plan(folder: Path, app: App) -> Path:
    """Where a restore of this database keeps its plan until it is carried out."""
    database = database_identity(app.db.url)
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f".lf-restore-{hashlib.sha256(database.encode()).hexdigest()[:16]}.json"


def _finish_interrupted(app: App, pending: Path, folder: Path) -> tuple[RestorePlan, CarriedOver] | None:
    """Carry out the plan of a restore killed after it replaced the database, if there is one."""
    if not pending.exists():
        return None
    plan = books.RestorePlan.from_json(pending.read_bytes())
    finished = None
    if books.restore_happened(app.db, plan):
        _upgrade(app, next((b for b in list_backups(folder) if b.name == plan.backup), None))
        finished = (plan, books.carry_over(app.db, plan))
    pending.unlink()  # else it was killed before the database was replaced: nothing to finish
    return finished


def _upgrade(app: App, backup: Backup | None) -> str | None:
    """Bring a restored older schema up to this ledgerflow's; returns the restored revision, or
    None when it was already this ledgerflow's."""
    from ledgerflow.db.migrate import migrate

    if backup is not None:
        snapshot.drop_tables_not_in(app.db.url, set(backup.rows))
    restored = _revision(app)
    if restored == _head_revision():
        return None
    migrate(app.db)
    return restored


def restore_lines(result: Restored) -> list[str]:
    """What a restore did, one line each (CLI output and alert)."""
    b, c = result.backup, result.carried
    lines = [f"finished the interrupted restore of {result.finished}"] if result.finished else []
    lines.append(f"restored {b.name} ({b.total_rows:,} rows, schema {b.revision})")
    if result.upgraded_from:
        lines.append(f"upgraded the schema from {result.upgraded_from} to {_head_revision()}")
    if result.plan.newer:
        lines.append(f"rolled back: the replaced database held {result.plan.newer}")
    if c.batches:
        lines.append(
            f"carried over what was delivered: {len(c.batches)} batch(es) ({', '.join(c.batches)}), "
            f"{c.entries} entries, {c.receipts} receipt(s)"
        )
    if c.audit_rows:
        lines.append(f"export audit chain re-joined: {c.audit_rows} row(s)")
    if c.dropped:
        shown = ", ".join(c.dropped[:5]) + (", …" if len(c.dropped) > 5 else "")
        lines.append(
            f"dropped: {len(c.dropped)} entries recorded after the backup and never exported ({shown})"
        )
    lines += [f"divergence: {p}" for p in c.problems]
    return lines


def _find(app: App, folder: Path, name: str) -> Backup:
    """Backup `name` in `folder`, else fetched from the backup destination."""
    local = next((b for b in list_backups(folder) if b.name == name), None)
    destination = offsite.backup_destination(app.settings) if is_backup_name(name) else None
    if local is not None and (local.problem is None or destination is None):
        if local.problem:
            raise BadInput(f"backup {name} is damaged: {local.problem}")
        return local
    if destination is None:
        raise NotFound(f"no backup {name!r} in {folder}")
    folder.mkdir(parents=True, exist_ok=True)
    with work_folder(folder) as work:
        return offsite.fetch(destination, name, folder, work)


# ------------------------------------------------------------------ shared
def describe(backup: Backup) -> dict[str, Any]:
    """A backup as JSON-ready data (CLI, API, the weekly task's result); the books' watermark stays
    in the manifest."""
    return {**{k: v for k, v in asdict(backup).items() if k != "books"}, "total_rows": backup.total_rows}


def _revision(app: App) -> str | None:
    from ledgerflow.db.migrate import current_revision

    return current_revision(app.db)


def _head_revision() -> str | None:
    from ledgerflow.db.migrate import head_revision

    return head_revision()


def _live_processes(app: App) -> int:
    with app.db.read() as conn:
        fresh = datetime.now(UTC) - timedelta(seconds=max(30.0, app.settings.lease_seconds * 3))
        return int(
            conn.execute(
                select(func.count()).where(workers.c.stopped_at.is_(None), workers.c.heartbeat_at > fresh)
            ).scalar_one()
        )


def _first_line(error: BaseException) -> str:
    orig = getattr(error, "orig", None) or error
    lines = str(orig).strip().splitlines()
    return lines[0] if lines else type(orig).__name__
