"""The export's exactly-once invariants, checked after any fault and its recovery.

* nothing is left in flight: every batch is `completed` or `abandoned`;
* exactly one completed batch per day, with exactly one `csv_generated` (or `no_entries`) row,
  and no audit row about a batch after its delivery (nothing moved or deleted it);
* the destination holds exactly the delivered file sets, byte for byte (no stray upload of an
  abandoned attempt, no delivered file missing), and no delivered file was ever deleted;
* every entry is in exactly one delivered CSV and marked `completed` by that batch;
* `ledgerflow export verify` is clean.
"""

from __future__ import annotations

import csv
import hashlib
import io
import shutil
from collections import Counter
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import delete, select, update

from ledgerflow import App
from ledgerflow.db.database import Database
from ledgerflow.db.tables import (
    circuit_breakers,
    export_batches,
    export_logs,
    export_queue,
    journal_entries,
    metadata,
)
from ledgerflow.export.destinations import DestinationError, LocalFolder, Remote
from ledgerflow.export.saga import FINAL, ExportResult, ExportSaga
from ledgerflow.export.verify import verify_exports
from tests.conftest import test_metadata


class WitnessFolder(LocalFolder):
    """A local folder that remembers every file it deleted (to prove no delivery was undone),
    and can be told to fail the upload of some files (`fail_names`)."""

    def __init__(self, directory: Path, fail_names: Callable[[str], bool] | None = None) -> None:
        super().__init__(directory)
        self.deleted: list[str] = []
        self.fail_names = fail_names

    def upload(self, path: Path, name: str, **kwargs: Any) -> Remote:
        if self.fail_names is not None and self.fail_names(name):
            raise DestinationError(f"upload of {name} refused (test outage)")
        return super().upload(path, name, **kwargs)

    def delete(self, remote_id: str, *, batch_key: str, sha256: str) -> bool:
        gone = super().delete(remote_id, batch_key=batch_key, sha256=sha256)
        if gone:
            self.deleted.append(remote_id)
        return gone


def reset_database(db: Database) -> None:
    """Empty every table (ledgerflow's and the tests'), keeping the schema: a fresh start per fault."""
    with db.begin() as conn:
        for table in [*reversed(metadata.sorted_tables), *test_metadata.sorted_tables]:
            conn.execute(delete(table))


def reset_folders(*folders: Path) -> None:
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)


def expire_leases(db: Database) -> None:
    """The runner that held them is gone (killed, or its run returned): let its leases lapse now
    instead of waiting for their expiry."""
    past = datetime.now(UTC) - timedelta(minutes=1)
    with db.begin() as conn:
        conn.execute(
            update(export_batches)
            .where(export_batches.c.lock_token.is_not(None))
            .values(lock_expires_at=past)
        )
        conn.execute(
            update(circuit_breakers)
            .where(circuit_breakers.c.trial_token.is_not(None))
            .values(trial_expires_at=past)
        )


def on_last_attempt(app: App, day: date) -> None:
    """Claim batch `day` and count three failed attempts: its next failure abandons it."""
    ExportSaga(app)._claim(f"daily:{day.isoformat()}", "daily", day, None, revive=False)
    with app.db.begin() as conn:
        conn.execute(update(export_batches).values(attempts=3))


def recover(app: App, days: list[date], saga: Callable[[], ExportSaga], max_runs: int = 8) -> int:
    """The runs after a fault: each day until its batch is final, then the next day's batch
    takes whatever went back to the queue. Returns how many runs found a dead runner's lock."""
    stale_locks = 0
    for day in days:
        for _ in range(max_runs):
            result: ExportResult = saga().run_daily(day)
            if result.in_progress:
                stale_locks += 1
                expire_leases(app.db)
                continue
            if result.state in FINAL and result.deferred_until is None:
                break
    return stale_locks


def entries_in(path: Path) -> set[str]:
    """The entry references in one generic-profile CSV (first column)."""
    rows = list(csv.reader(io.StringIO(path.read_text("utf-8-sig"), newline="")))[1:]
    return {r[0] for r in rows}


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_exactly_once(
    app: App, out: Path, references: set[str], *, deleted: list[str] | None = None
) -> None:
    """Assert every invariant of the module docstring (`deleted`: what the destination deleted)."""
    with app.db.read() as conn:
        batches = conn.execute(select(export_batches)).all()
        logs = conn.execute(select(export_logs).order_by(export_logs.c.id)).all()
        queue = conn.execute(
            select(journal_entries.c.reference, export_queue.c.status, export_queue.c.batch_id).join(
                journal_entries, journal_entries.c.id == export_queue.c.entry_id
            )
        ).all()
    in_flight = [(b.batch_key, b.state) for b in batches if b.state not in FINAL]
    assert not in_flight, f"batches left in flight: {in_flight}"
    completed = {b.batch_key: b for b in batches if b.state == "completed"}
    days = Counter((b.kind, b.batch_date) for b in completed.values())
    assert all(n == 1 for n in days.values()), f"more than one completed batch for a day: {days}"

    delivered: dict[str, dict[str, Any]] = {}
    for key, batch in completed.items():
        rows = [r for r in logs if r.batch_key == key and r.action in ("csv_generated", "no_entries")]
        assert len(rows) == 1, f"{key}: {len(rows)} delivery rows in export_logs"
        later = [r.action for r in logs if r.batch_key == key and r.id > rows[0].id]
        assert not later, f"{key} changed after its delivery was committed: {later}"
        if rows[0].action == "csv_generated":
            delivered[key] = rows[0].metadata
        else:
            assert batch.entry_count == 0
    assert not [r.batch_key for r in logs if r.action == "csv_generated" and r.batch_key not in completed], (
        "a delivery was logged for a batch that is not completed"
    )

    present = (
        {str(p.relative_to(out)): sha256_of(p) for p in out.rglob("*") if p.is_file()} if out.exists() else {}
    )
    expected = {name: sha for meta in delivered.values() for name, sha in meta["sha256"].items()}
    assert present == expected, "the destination must hold exactly the delivered file sets"
    if deleted is not None:
        ids = {file_id for meta in delivered.values() for file_id in meta["file_ids"]}
        assert not ids & set(deleted), f"delivered files were deleted: {sorted(ids & set(deleted))}"

    seen = Counter(ref for name in expected if name.endswith(".csv") for ref in entries_in(out / name))
    assert seen == Counter(references), f"each entry in exactly one delivered CSV: {seen}"
    by_key = {b.id: b.batch_key for b in batches}
    for reference, status, batch_id in queue:
        assert status == "completed" and by_key.get(batch_id) in delivered, (
            f"{reference}: {status} in batch {by_key.get(batch_id)}"
        )

    report = verify_exports(app)
    assert not (report["chain_problems"] or report["file_problems"] or report["unreachable"]), report
