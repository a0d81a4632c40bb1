"""The export saga: one batch per key, delivered exactly once, always ending consistent.

    claimed ─▶ generated ─▶ uploaded ─▶ completed        (retryable, abandoned)

* **claim**: `export_batches.batch_key` is UNIQUE (`daily:2026-11-26`); the batch row and its
  snapshot of entries (`export_batch_entries`) are written in one transaction. Concurrent
  triggers get the same row; only the holder of the batch lock runs the next steps, and
  every step's UPDATE names the lock token (a stale runner is fenced off).
* **generate**: deterministic files from the snapshot (same bytes on every attempt).
* **upload**: create-if-absent at the destination (Drive ids reserved and stored first);
  a retry finds the file already there, compares checksums, and goes on.
* **complete**: one transaction marks the entries, completes the batch and appends the
  `csv_generated` audit row (unique per batch key).
* a failure leaves the batch `retryable` at its last completed step; after the last
  attempt it is `abandoned`: its uploaded files are deleted (compensation) and its entries
  go back to the queue for the next batch, with a critical alert.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, and_, delete, false, func, insert, literal, or_, select, update

from ledgerflow.clock import Clock, system_clock
from ledgerflow.db.tables import (
    export_batch_entries,
    export_batches,
    export_queue,
    journal_entries,
    journal_lines,
)
from ledgerflow.errors import LedgerflowError
from ledgerflow.export.audit import append_log
from ledgerflow.export.breaker import CircuitBreaker
from ledgerflow.export.destinations import Destination, DestinationError, ExportConflict, destination_for
from ledgerflow.export.profiles import Profile
from ledgerflow.export.writer import (
    EntryRejected,
    Generated,
    GenerationTimeout,
    batch_lines_query,
    count_lines,
    stream_entries,
    write_manifest,
    write_parts,
)
from ledgerflow.logs import get_logger

if TYPE_CHECKING:
    from ledgerflow.app import App

RETRY_DELAYS = (300.0, 900.0, 2700.0)  # 5, 15 and 45 minutes after each failure
MAX_ATTEMPTS = 4
DONE = ("completed", "abandoned")


class LockLost(LedgerflowError):
    """Another runner took over the batch; this one must stop writing."""

    code = "lock_lost"


def crash_point(name: str) -> None:
    """Fault injection for crash tests: `LEDGERFLOW_EXPORT_CRASH_AT=name` kills the process here."""
    if os.environ.get("LEDGERFLOW_EXPORT_CRASH_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)


@dataclass
class ExportResult:
    batch_key: str
    batch_date: date
    state: str
    entry_count: int = 0
    line_count: int = 0
    files: list[dict[str, Any]] = field(default_factory=list)
    totals: dict[str, Any] = field(default_factory=dict)
    attempts: int = 0
    next_retry_at: datetime | None = None
    error: str | None = None
    error_type: str | None = None
    deferred_until: datetime | None = None
    already: bool = False
    in_progress: bool = False
    directory: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("batch_date", "next_retry_at", "deferred_until"):
            if out[key] is not None:
                out[key] = out[key].isoformat()
        return out


def _safe(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", key)


def latest_daily_batch(conn: Connection) -> Any:
    """The daily batch with the latest date (any state), or None."""
    return conn.execute(
        select(export_batches)
        .where(export_batches.c.kind == "daily")
        .order_by(export_batches.c.batch_date.desc())
        .limit(1)
    ).first()


class ExportSaga:
    def __init__(
        self,
        app: App,
        *,
        destination: Destination | None = None,
        clock: Clock | None = None,
        profile: Profile | None = None,
    ) -> None:
        s = app.settings
        self.app, self.db, self.settings = app, app.db, s
        self.clock = clock or system_clock
        self.profile = profile or app.export_profile
        self.destination = destination or destination_for(s)
        self.breaker = CircuitBreaker(self.db, self.destination.key, self.clock)
        self.work_root = Path(s.export_work_dir or tempfile.gettempdir()) / "ledgerflow-export"
        self.log = get_logger("export")

    # ------------------------------------------------------------------ entry points
    def run_daily(
        self, batch_date: date, *, revive: bool = False, on_progress: Callable[[int, int], None] | None = None
    ) -> ExportResult:
        """Export batch D: every scheduled entry still queued, dated <= D, committed before the claim."""
        return self._run(f"daily:{batch_date.isoformat()}", "daily", batch_date, None, revive, on_progress)

    def run_immediate(self, entry_id: int) -> ExportResult:
        """Export one `immediate` entry in a small batch of its own."""
        with self.db.read() as conn:
            day = conn.execute(
                select(journal_entries.c.entry_date).where(journal_entries.c.id == entry_id)
            ).scalar()
        if day is None:
            from ledgerflow.errors import NotFound

            raise NotFound(f"unknown entry id {entry_id}")
        return self._run(f"immediate:{entry_id}", "immediate", day, entry_id, False, None)

    def dry_run(self, batch_date: date, directory: Path) -> ExportResult:
        """Write what batch D would contain to `directory`; claim and mark nothing."""
        key = f"daily:{batch_date.isoformat()}"
        base = self._base_name(key, "daily", batch_date, None)
        with self.db.read() as conn:
            e, ln, q = journal_entries, journal_lines, export_queue
            query = (
                select(
                    e.c.id,
                    e.c.reference,
                    e.c.entry_date,
                    e.c.description,
                    e.c.currency,
                    e.c.export_path,
                    literal(False).label("late"),
                    ln.c.account,
                    ln.c.account_name,
                    ln.c.debit_minor,
                    ln.c.credit_minor,
                    ln.c.tax_code,
                    ln.c.memo,
                )
                .select_from(q.join(e, e.c.id == q.c.entry_id).join(ln, ln.c.entry_id == e.c.id))
                .where(*self._candidates(batch_date))
                .order_by(e.c.entry_date, e.c.reference, ln.c.line_no)
            )
            generated = write_parts(
                stream_entries(conn, query),
                self.profile,
                directory,
                base,
                timeout=self.settings.export_generation_timeout,
            )
        generated.check_balanced()
        manifest = write_manifest(generated, directory, base, self._manifest_info(key, batch_date, None))
        return ExportResult(
            key,
            batch_date,
            "dry_run",
            generated.entry_count,
            generated.line_count,
            [p.describe() for p in [*generated.parts, manifest]],
            generated.totals_text(),
            directory=str(directory),
        )

    # ------------------------------------------------------------------ the saga
    def _run(
        self,
        key: str,
        kind: str,
        batch_date: date,
        entry_id: int | None,
        revive: bool,
        on_progress: Callable[[int, int], None] | None,
    ) -> ExportResult:
        batch = self._claim(key, kind, batch_date, entry_id, revive)
        if batch["state"] in DONE:
            return self._result(batch, already=batch["state"] == "completed")
        token = self._lock(batch["id"])
        if token is None:
            return self._result(batch, in_progress=True)
        renewer = _LockRenewer(self, batch["id"], token)
        renewer.start()
        started = time.monotonic()
        try:
            batch = self._load(batch["id"])
            if batch["entry_count"] == 0:
                return self._complete_empty(batch, token)
            permit = self.breaker.permit()
            if not permit.allowed:
                self.log.warning("export_deferred_breaker_open", batch_key=key, retry_at=str(permit.retry_at))
                result = self._result(batch)
                result.deferred_until = permit.retry_at
                return result
            self._set_queue_status(batch["id"], "processing")
            files = self._ensure_generated(batch, token, on_progress)
            if batch["step"] != "uploaded":
                files = self._upload(batch, token, files)
                self.breaker.success()
                crash_point("after_upload")
            return self._complete(batch, token, files, time.monotonic() - started)
        except Exception as exc:
            return self._fail(self._load(batch["id"]), token, exc)
        finally:
            renewer.stop()
            self._unlock(batch["id"], token)

    def _candidates(self, batch_date: date, entry_id: int | None = None) -> list[Any]:
        q, e = export_queue, journal_entries
        if entry_id is not None:
            return [q.c.entry_id == entry_id, q.c.status == "queued", q.c.batch_id.is_(None)]
        return [
            q.c.status == "queued",
            q.c.batch_id.is_(None),
            q.c.export_path == "scheduled",
            e.c.entry_date <= batch_date,
            e.c.status == "posted",
        ]

    def _claim(
        self, key: str, kind: str, batch_date: date, entry_id: int | None, revive: bool
    ) -> dict[str, Any]:
        """Create the batch row and its snapshot, or find the existing one (the unique key decides)."""
        from ledgerflow.engine.store import dialect_insert

        now = datetime.now(UTC)
        with self.db.begin() as conn:
            new_id = conn.execute(
                dialect_insert(self.db, export_batches)
                .values(
                    batch_key=key,
                    kind=kind,
                    batch_date=batch_date,
                    state="claimed",
                    step="claimed",
                    attempts=0,
                    max_attempts=MAX_ATTEMPTS,
                    cutoff_at=self.db.now(),
                    profile=self.profile.name,
                    destination=self.destination.key,
                    reservation={},
                    files=[],
                    totals={},
                    created_at=now,
                    updated_at=now,
                )
                .on_conflict_do_nothing(index_elements=["batch_key"])
                .returning(export_batches.c.id)
            ).scalar()
            if new_id is None:
                batch = dict(
                    conn.execute(select(export_batches).where(export_batches.c.batch_key == key))
                    .one()
                    ._mapping
                )
                if not (revive and batch["state"] == "abandoned"):
                    return batch
                new_id = batch["id"]
                conn.execute(
                    update(export_batches)
                    .where(export_batches.c.id == new_id, export_batches.c.state == "abandoned")
                    .values(
                        state="claimed",
                        step="claimed",
                        attempts=0,
                        next_retry_at=None,
                        error=None,
                        error_type=None,
                        cutoff_at=self.db.now(),
                        reservation={},
                        files=[],
                        manifest=None,
                        totals={},
                        updated_at=now,
                    )
                )
                conn.execute(delete(export_batch_entries).where(export_batch_entries.c.batch_id == new_id))
            crash_point("before_snapshot")
            claimed = self._snapshot(conn, int(new_id), kind, batch_date, entry_id)
            conn.execute(
                update(export_batches).where(export_batches.c.id == new_id).values(entry_count=claimed)
            )
            append_log(
                self.db,
                conn,
                action="batch_claimed",
                batch_id=int(new_id),
                batch_key=key,
                batch_date=batch_date,
                message=f"batch {key} claimed {claimed} entr{'y' if claimed == 1 else 'ies'}",
                metadata={
                    "entry_count": claimed,
                    "profile": self.profile.name,
                    "destination": self.destination.key,
                },
            )
            batch = dict(
                conn.execute(select(export_batches).where(export_batches.c.id == new_id)).one()._mapping
            )
        self.log.info(
            "export_batch_claimed", batch_key=key, batch_date=batch_date.isoformat(), entries=claimed
        )
        crash_point("after_claim")
        return batch

    def _snapshot(
        self, conn: Connection, batch_id: int, kind: str, batch_date: date, entry_id: int | None
    ) -> int:
        """Reserve the batch's entries and record its snapshot, in SQL (memory flat for any size)."""
        q, e, be = export_queue, journal_entries, export_batch_entries
        # UPDATE … FROM, no self-join: linear whatever the planner's statistics say after a bulk import
        conn.execute(
            update(q)
            .where(q.c.entry_id == e.c.id, *self._candidates(batch_date, entry_id))
            .values(batch_id=batch_id)
        )
        prev = conn.execute(
            select(export_batches.c.batch_date, export_batches.c.cutoff_at)
            .where(
                export_batches.c.kind == "daily",
                export_batches.c.state == "completed",
                export_batches.c.batch_date < batch_date,
            )
            .order_by(export_batches.c.batch_date.desc())
            .limit(1)
        ).first()
        # late: dated into a day already delivered, recorded after that batch was cut off
        late = (
            and_(e.c.entry_date <= prev.batch_date, e.c.created_at > prev.cutoff_at)
            if prev is not None
            else false()
        )
        conn.execute(
            insert(be).from_select(
                ["batch_id", "entry_id", "late"],
                select(literal(batch_id), q.c.entry_id, late)
                .join(e, e.c.id == q.c.entry_id)
                .where(q.c.batch_id == batch_id),
            )
        )
        return int(
            conn.execute(select(func.count()).select_from(be).where(be.c.batch_id == batch_id)).scalar_one()
        )

    def _lock(self, batch_id: int) -> int | None:
        token = secrets.randbits(62)
        with self.db.begin() as conn:
            won = conn.execute(
                update(export_batches)
                .where(
                    export_batches.c.id == batch_id,
                    export_batches.c.state.not_in(DONE),
                    or_(
                        export_batches.c.lock_token.is_(None),
                        export_batches.c.lock_expires_at < self.db.now(),
                    ),
                )
                .values(lock_token=token, lock_expires_at=self.db.after(self.settings.export_lock_seconds))
            ).rowcount
        return token if won else None

    def renew(self, batch_id: int, token: int) -> bool:
        with self.db.begin() as conn:
            return bool(
                conn.execute(
                    update(export_batches)
                    .where(export_batches.c.id == batch_id, export_batches.c.lock_token == token)
                    .values(lock_expires_at=self.db.after(self.settings.export_lock_seconds))
                ).rowcount
            )

    def _unlock(self, batch_id: int, token: int) -> None:
        try:
            with self.db.begin() as conn:
                conn.execute(
                    update(export_batches)
                    .where(export_batches.c.id == batch_id, export_batches.c.lock_token == token)
                    .values(lock_token=None, lock_expires_at=None)
                )
        except Exception as exc:  # the lock expires on its own
            self.log.warning("export_unlock_failed", error=str(exc).splitlines()[0])

    def _guarded(self, conn: Connection, batch_id: int, token: int, **values: Any) -> None:
        """Update the batch only while we hold its lock (the fence)."""
        values["updated_at"] = datetime.now(UTC)
        if not conn.execute(
            update(export_batches)
            .where(export_batches.c.id == batch_id, export_batches.c.lock_token == token)
            .values(values)
        ).rowcount:
            raise LockLost(f"lost the lock on export batch {batch_id}")

    def _set_queue_status(self, batch_id: int, status: str) -> None:
        with self.db.begin() as conn:
            conn.execute(
                update(export_queue)
                .where(
                    export_queue.c.batch_id == batch_id, export_queue.c.status.in_(("queued", "processing"))
                )
                .values(status=status)
            )

    # ------------------------------------------------------------------ steps
    def _base_name(self, key: str, kind: str, batch_date: date, entry_ref: str | None) -> str:
        name = f"journal_{self.profile.name}_{batch_date.isoformat()}"
        return name if kind == "daily" else f"{name}_{_safe(key)}"

    def _manifest_info(self, key: str, batch_date: date, cutoff: datetime | None) -> dict[str, Any]:
        p = self.profile
        return {
            "batch_key": key,
            "batch_date": batch_date.isoformat(),
            "profile": p.name,
            "encoding": p.encoding,
            "bom": p.bom,
            "cutoff": cutoff.isoformat() if cutoff else None,
            "generator": "ledgerflow",
        }

    def _ensure_generated(
        self, batch: dict[str, Any], token: int, on_progress: Callable[[int, int], None] | None
    ) -> list[dict[str, Any]]:
        work = self.work_root / _safe(batch["batch_key"])
        stored: list[dict[str, Any]] = batch["files"] or []
        if stored and all((work / f["name"]).is_file() for f in stored):
            from ledgerflow.export.destinations import file_digests

            if all(file_digests(work / f["name"])[0] == f["sha256"] for f in stored):
                return stored  # resume with the files of a previous attempt on this host
        base = self._base_name(batch["batch_key"], batch["kind"], batch["batch_date"], None)
        for _ in range(50):  # each rejected entry leaves the batch, then we write again
            shutil.rmtree(work, ignore_errors=True)
            try:
                generated = self._generate(batch, work, base, on_progress)
                break
            except EntryRejected as rejected:
                self._eject(batch, rejected)
        else:
            raise ExportConflict(f"batch {batch['batch_key']}: too many entries rejected by the profile")
        if generated.entry_count == 0:
            raise ExportConflict(f"batch {batch['batch_key']}: every entry was rejected by the profile")
        generated.check_balanced()
        manifest = write_manifest(
            generated,
            work,
            base,
            self._manifest_info(batch["batch_key"], batch["batch_date"], batch["cutoff_at"]),
        )
        files = [{**p.describe(), "kind": "csv"} for p in generated.parts] + [
            {**manifest.describe(), "kind": "manifest"}
        ]
        if stored:  # regenerated after a move to another host: must be the very same bytes
            if [f["sha256"] for f in stored] != [f["sha256"] for f in files]:
                raise ExportConflict(
                    f"batch {batch['batch_key']}: regenerated files differ from the first attempt"
                )
            for old, new in zip(stored, files, strict=True):
                new.update({k: v for k, v in old.items() if k in ("remote_id", "link")})
            return files
        with self.db.begin() as conn:
            self._guarded(
                conn,
                batch["id"],
                token,
                state="generated",
                step="generated",
                files=files,
                manifest=_manifest_doc(generated, batch),
                entry_count=generated.entry_count,
                line_count=generated.line_count,
                totals=generated.totals_text(),
            )
            append_log(
                self.db,
                conn,
                action="generated",
                batch_id=batch["id"],
                batch_key=batch["batch_key"],
                batch_date=batch["batch_date"],
                message=f"{len(generated.parts)} CSV file(s) generated",
                metadata={"files": [f["name"] for f in files], "sha256": [f["sha256"] for f in files]},
            )
        batch["step"] = "generated"
        self.log.info(
            "export_generated",
            batch_key=batch["batch_key"],
            entries=generated.entry_count,
            lines=generated.line_count,
            files=[f["name"] for f in files],
        )
        return files

    def _generate(
        self, batch: dict[str, Any], work: Path, base: str, on_progress: Callable[[int, int], None] | None
    ) -> Generated:
        with self.db.read() as conn:
            total = count_lines(conn, batch["id"]) if on_progress else 0
            return write_parts(
                stream_entries(conn, batch_lines_query(batch["id"])),
                self.profile,
                work,
                base,
                timeout=self.settings.export_generation_timeout,
                on_progress=(lambda n: on_progress(n, total)) if on_progress else None,
                crash_point=crash_point,
            )

    def _eject(self, batch: dict[str, Any], rejected: EntryRejected) -> None:
        """Take an entry the profile cannot hold out of the batch: marked failed, alerted, never lost."""
        with self.db.begin() as conn:
            conn.execute(
                update(export_queue)
                .where(export_queue.c.entry_id == rejected.entry_id)
                .values(status="failed", batch_id=None, error=str(rejected))
            )
            conn.execute(
                delete(export_batch_entries).where(
                    export_batch_entries.c.batch_id == batch["id"],
                    export_batch_entries.c.entry_id == rejected.entry_id,
                )
            )
            conn.execute(
                update(export_batches)
                .where(export_batches.c.id == batch["id"])
                .values(entry_count=export_batches.c.entry_count - 1)
            )
            append_log(
                self.db,
                conn,
                action="entry_rejected",
                batch_id=batch["id"],
                batch_key=batch["batch_key"],
                batch_date=batch["batch_date"],
                message=str(rejected),
                metadata={"entry_id": rejected.entry_id},
            )
        self.app.alerts.raise_alert(
            f"export_entry_rejected:{rejected.entry_id}",
            "error",
            "An entry cannot be exported",
            str(rejected),
            entry_id=rejected.entry_id,
        )

    def _upload(self, batch: dict[str, Any], token: int, files: list[dict[str, Any]]) -> list[dict[str, Any]]:
        work = self.work_root / _safe(batch["batch_key"])
        reservation: dict[str, str] = dict(batch["reservation"] or {})
        missing = [f["name"] for f in files if f["name"] not in reservation]
        if missing and (ids := self.destination.reserve(len(missing))):
            reservation.update(zip(missing, ids, strict=True))
            with self.db.begin() as conn:  # stored before anything is uploaded
                self._guarded(conn, batch["id"], token, reservation=reservation)
        for n, f in enumerate(files):
            if n == 1:
                crash_point("mid_upload")
            remote = self.destination.upload(
                work / f["name"],
                f["name"],
                sha256=f["sha256"],
                md5=f["md5"],
                size=f["bytes"],
                batch_key=batch["batch_key"],
                reserved_id=reservation.get(f["name"]),
            )
            f["remote_id"], f["link"] = remote.file_id, remote.link
        with self.db.begin() as conn:
            self._guarded(
                conn,
                batch["id"],
                token,
                state="uploaded",
                step="uploaded",
                files=files,
                destination=self.destination.key,
            )  # where the files really went
            append_log(
                self.db,
                conn,
                action="uploaded",
                batch_id=batch["id"],
                batch_key=batch["batch_key"],
                batch_date=batch["batch_date"],
                message=f"{len(files)} file(s) at {self.destination.key}",
                metadata={"file_ids": [f["remote_id"] for f in files]},
            )
        batch["step"] = "uploaded"
        return files

    def _complete(
        self, batch: dict[str, Any], token: int, files: list[dict[str, Any]], seconds: float
    ) -> ExportResult:
        csvs = [f for f in files if f["kind"] == "csv"]
        with self.db.begin() as conn:
            self._guarded(
                conn,
                batch["id"],
                token,
                state="completed",
                completed_at=self.db.now(),
                next_retry_at=None,
                error=None,
                error_type=None,
                duration_seconds=round(seconds, 3),
                files=files,
            )
            crash_point("in_marking")
            conn.execute(
                update(export_queue)
                .where(export_queue.c.batch_id == batch["id"])
                .values(
                    status="completed",
                    file_id=csvs[0]["remote_id"],
                    file_link=csvs[0]["link"],
                    exported_at=self.db.now(),
                    error=None,
                )
            )
            fresh = dict(
                conn.execute(select(export_batches).where(export_batches.c.id == batch["id"])).one()._mapping
            )
            append_log(
                self.db,
                conn,
                action="csv_generated",
                batch_id=batch["id"],
                batch_key=batch["batch_key"],
                batch_date=batch["batch_date"],
                message=f"{fresh['entry_count']} entries exported to {self.destination.key}",
                metadata={
                    "batch_date": batch["batch_date"].isoformat(),
                    "filenames": [f["name"] for f in files],
                    "file_ids": [f["remote_id"] for f in files],
                    "links": [f["link"] for f in files],
                    "entry_count": fresh["entry_count"],
                    "line_count": fresh["line_count"],
                    "totals": fresh["totals"],
                    "sha256": {f["name"]: f["sha256"] for f in files},
                    "profile": self.profile.name,
                },
            )
        shutil.rmtree(self.work_root / _safe(batch["batch_key"]), ignore_errors=True)
        self.log.info(
            "export_completed",
            batch_key=batch["batch_key"],
            batch_date=batch["batch_date"].isoformat(),
            entries=fresh["entry_count"],
            files=[f["name"] for f in files],
            seconds=round(seconds, 3),
        )
        self.app.alerts.resolve(
            f"export_failed:{batch['batch_key']}", f"batch {batch['batch_key']} completed"
        )
        return self._result(fresh)

    def _complete_empty(self, batch: dict[str, Any], token: int) -> ExportResult:
        with self.db.begin() as conn:
            self._guarded(
                conn, batch["id"], token, state="completed", completed_at=self.db.now(), duration_seconds=0.0
            )
            append_log(
                self.db,
                conn,
                action="no_entries",
                batch_id=batch["id"],
                batch_key=batch["batch_key"],
                batch_date=batch["batch_date"],
                message="nothing to export: no file written",
                metadata={"batch_date": batch["batch_date"].isoformat(), "entry_count": 0},
            )
        self.log.info("no_entries", batch_key=batch["batch_key"], batch_date=batch["batch_date"].isoformat())
        return self._result(self._load(batch["id"]))

    # ------------------------------------------------------------------ failure
    def _fail(self, batch: dict[str, Any], token: int, exc: Exception) -> ExportResult:
        error_type = (
            "timeout"
            if isinstance(exc, GenerationTimeout)
            else exc.error_type
            if isinstance(exc, DestinationError)
            else "conflict"
            if isinstance(exc, ExportConflict)
            else "unknown"
        )
        message = f"{type(exc).__name__}: {exc}"
        self.log.error(
            "export_attempt_failed",
            batch_key=batch["batch_key"],
            error_type=error_type,
            error=message,
            attempt=batch["attempts"] + 1,
        )
        if isinstance(exc, LockLost):
            return self._result(batch, in_progress=True)
        if isinstance(exc, DestinationError):
            self.breaker.failure(message)
        attempts = batch["attempts"] + 1
        if isinstance(exc, ExportConflict) or attempts >= batch["max_attempts"]:
            return self._abandon(
                batch, token, attempts, error_type, message, compensate=not isinstance(exc, ExportConflict)
            )
        delay = RETRY_DELAYS[min(attempts, len(RETRY_DELAYS)) - 1]
        with self.db.begin() as conn:
            self._guarded(
                conn,
                batch["id"],
                token,
                state="retryable",
                attempts=attempts,
                error=message[:4000],
                error_type=error_type,
                next_retry_at=self.clock() + timedelta(seconds=delay),
            )
            conn.execute(
                update(export_queue)
                .where(export_queue.c.batch_id == batch["id"], export_queue.c.status == "processing")
                .values(status="queued")
            )
            append_log(
                self.db,
                conn,
                action="attempt_failed",
                batch_id=batch["id"],
                batch_key=batch["batch_key"],
                batch_date=batch["batch_date"],
                message=message[:1000],
                metadata={"attempt": attempts, "error_type": error_type, "retry_in_seconds": delay},
            )
        self.app.alerts.raise_alert(
            f"export_failed:{batch['batch_key']}",
            "error",
            f"Export {batch['batch_key']} failed (attempt {attempts} of {batch['max_attempts']})",
            f"{message}; retrying in {delay / 60:g} min",
            error_type=error_type,
        )
        return self._result(self._load(batch["id"]))

    def _abandon(
        self,
        batch: dict[str, Any],
        token: int,
        attempts: int,
        error_type: str,
        message: str,
        *,
        compensate: bool,
    ) -> ExportResult:
        deleted: list[str] = []
        if compensate:
            reservation = batch["reservation"] or {}
            for f in batch["files"] or []:
                remote = f.get("remote_id") or reservation.get(f["name"])
                if remote:
                    try:
                        if self.destination.delete(remote, batch_key=batch["batch_key"], sha256=f["sha256"]):
                            deleted.append(remote)
                    except Exception as exc:
                        self.log.error(
                            "compensation_failed", batch_key=batch["batch_key"], file=remote, error=str(exc)
                        )
        with self.db.begin() as conn:
            self._guarded(
                conn,
                batch["id"],
                token,
                state="abandoned",
                attempts=attempts,
                error=message[:4000],
                error_type=error_type,
                next_retry_at=None,
            )
            conn.execute(
                update(export_queue)
                .where(export_queue.c.batch_id == batch["id"])
                .values(batch_id=None, status="queued")
            )
            append_log(
                self.db,
                conn,
                action="abandoned",
                batch_id=batch["id"],
                batch_key=batch["batch_key"],
                batch_date=batch["batch_date"],
                message=message[:1000],
                metadata={
                    "attempts": attempts,
                    "error_type": error_type,
                    "deleted_files": deleted,
                    "entries_requeued": batch["entry_count"],
                },
            )
        self.app.alerts.raise_alert(
            f"export_abandoned:{batch['batch_key']}",
            "critical",
            f"Export {batch['batch_key']} abandoned: manual intervention required",
            f"manual intervention required: {batch['batch_key']} failed {attempts} time(s) ({message}); "
            f"its entries go to the next batch"
            + (f"; deleted {len(deleted)} uploaded file(s)" if deleted else ""),
            batch_key=batch["batch_key"],
            error_type=error_type,
        )
        return self._result(self._load(batch["id"]))

    # ------------------------------------------------------------------ helpers
    def _load(self, batch_id: int) -> dict[str, Any]:
        with self.db.read() as conn:
            return dict(
                conn.execute(select(export_batches).where(export_batches.c.id == batch_id)).one()._mapping
            )

    def _result(
        self, batch: dict[str, Any], *, already: bool = False, in_progress: bool = False
    ) -> ExportResult:
        return ExportResult(
            batch["batch_key"],
            batch["batch_date"],
            batch["state"],
            batch["entry_count"],
            batch["line_count"],
            [{k: v for k, v in f.items() if k != "md5"} for f in batch["files"] or []],
            batch["totals"] or {},
            batch["attempts"],
            batch["next_retry_at"],
            batch["error"],
            batch["error_type"],
            already=already,
            in_progress=in_progress,
        )


def _manifest_doc(generated: Generated, batch: dict[str, Any]) -> dict[str, Any]:
    return {
        "files": [p.describe() for p in generated.parts],
        "entry_count": generated.entry_count,
        "line_count": generated.line_count,
        "totals": generated.totals_text(),
        "late_entries": generated.late,
        "cutoff": batch["cutoff_at"].isoformat() if batch["cutoff_at"] else None,
    }


class _LockRenewer(threading.Thread):
    """Keeps the batch lock while a long step (generation, upload) runs."""

    def __init__(self, saga: ExportSaga, batch_id: int, token: int) -> None:
        super().__init__(daemon=True, name="ledgerflow-export-lock")
        self.saga, self.batch_id, self.token = saga, batch_id, token
        self._stop_event = threading.Event()

    def run(self) -> None:
        interval = self.saga.settings.export_lock_seconds / 3
        while not self._stop_event.wait(interval):
            try:
                if not self.saga.renew(self.batch_id, self.token):
                    return
            except Exception as exc:
                self.saga.log.warning("export_lock_renew_failed", error=str(exc).splitlines()[0])

    def stop(self) -> None:
        self._stop_event.set()
