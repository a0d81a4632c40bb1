"""A restore never rolls the books back silently, and never makes the export send anything twice.

Through the real CLI on SQLite files and PostgreSQL: a restore over newer books is refused and
names what is newer; a forced one carries over what was delivered (batches, entries, receipts,
the audit chain's tail), drops and names what was not, records itself in the audit chain and
raises an alert; afterwards every day's export delivers each entry exactly once.
"""

from __future__ import annotations

import hashlib
import json
import signal
from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert, select, text

from ledgerflow import App
from ledgerflow.backup import create_backup, restore_divergences
from ledgerflow.db.tables import export_batches, export_logs, export_queue, journal_entries, journal_lines
from ledgerflow.errors import Conflict
from ledgerflow.export.audit import verify_chain
from ledgerflow.export.saga import ExportSaga
from ledgerflow.receipts.store import ReceiptStore
from tests.backup.conftest import count, delivered_references, entry
from tests.conftest import wait_until

D1 = date(2026, 11, 20)
D2, D3, D4 = D1 + timedelta(days=1), D1 + timedelta(days=2), D1 + timedelta(days=3)


def _export(app: App, day: date) -> None:
    assert ExportSaga(app).run_daily(day).state == "completed"


def _record_c_and_correct_it(app: App) -> None:
    app.ledger.record(entry("C-1", D3))
    app.ledger.record(entry("C-1", D3, amount="99.00"), upsert=True)  # replaced before any export


#: A month in miniature: every kind of change a restore could roll back.
HISTORY: list[tuple[str, Callable[[App], Any]]] = [
    ("record A", lambda app: app.ledger.record_many([entry("A-1", D1), entry("A-2", D1)])),
    ("export D1", lambda app: _export(app, D1)),
    ("record B (B-1 late for D1)", lambda app: app.ledger.record_many([entry("B-1", D1), entry("B-2", D2)])),
    ("reverse A-1", lambda app: app.ledger.reverse("A-1", on=D2)),
    ("export D2", lambda app: _export(app, D2)),
    ("record C, then correct it", _record_c_and_correct_it),
]


def _references(app: App) -> set[str]:
    with app.db.read() as conn:
        return set(conn.execute(select(journal_entries.c.reference)).scalars())


@pytest.mark.parametrize("backup_before", range(len(HISTORY) + 1), ids=lambda n: f"backup-before-step-{n}")
def test_a_restore_from_any_point_is_refused_and_forced_never_sends_an_entry_twice(
    books_app, cli, tmp_path, backup_before
):
    app = books_app()
    name = None
    for step, (_what, run) in enumerate(HISTORY):
        if step == backup_before:
            name = create_backup(app).name
            in_backup = _references(app)
        run(app)
    if name is None:
        name = create_backup(app).name
        in_backup = _references(app)
    out = tmp_path / "out"
    delivered_before = delivered_references(out)
    recorded_before = _references(app)

    code, _, err = cli("backup", "restore", name)
    if backup_before == len(HISTORY):  # nothing newer: a plain restore
        assert code == 0, err
    else:
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert "newer than the backup" in err and "--force" in err
        assert _references(app) == recorded_before, "a refused restore changes nothing"
        code, stdout, err = cli("backup", "restore", name, "--force")
        assert code == 0, err
        assert "rolled back" in stdout and "alert" in stdout
    app.db.dispose()  # the in-process CLI replaced the database under this app's pool

    dropped = recorded_before - in_backup - set(delivered_before)
    assert _references(app) == (in_backup | set(delivered_before)), "delivered entries stay in the books"
    divergences = restore_divergences(app.db)
    assert len(divergences) == (backup_before < len(HISTORY))
    if divergences:
        assert divergences[0].dropped_entries == len(dropped)
        assert name in divergences[0].describe()

    # the books go on: a new entry, then every day's export again (re-runs of delivered days included)
    app.ledger.record(entry("E-1", D4))
    for day in (D1, D2, D3, D4):
        code, stdout, err = cli("export", "run", "--date", day.isoformat(), "--json")
        assert code == 0 and json.loads(stdout)["state"] == "completed", err
    app.db.dispose()
    delivered = delivered_references(out)
    assert all(n == 1 for n in delivered.values()), f"sent twice: {delivered}"
    assert set(delivered) == _references(app), "every entry in the books is delivered, once"
    assert set(delivered_before) <= set(delivered)
    assert count(app, export_batches, export_batches.c.state == "abandoned") == 0
    assert count(app, export_queue, export_queue.c.status != "completed") == 0
    assert verify_chain(app.db).ok


def test_the_refusal_names_entries_batches_and_audit_rows_and_changes_nothing(books_app, cli):
    app = books_app()
    app.ledger.record(entry("OLD-1", D1))
    name = create_backup(app).name
    app.ledger.record_many([entry("NEW-1", D1), entry("NEW-2", D2)])
    _export(app, D1)
    _export(app, D2)
    batches_before = count(app, export_batches, export_batches.c.state == "completed")

    code, out, err = cli("backup", "restore", name)

    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert "2 journal entries (NEW-1, NEW-2)" in err
    assert "2 export batches (2026-11-20 completed, 2026-11-21 completed)" in err
    assert "export audit rows" in err
    assert count(app, export_batches, export_batches.c.state == "completed") == batches_before
    assert count(app, journal_entries) == 3
    assert not restore_divergences(app.db)


def test_a_forced_restore_keeps_the_approval_of_receipts_whose_entries_were_delivered(
    books_app, cli, tmp_path
):
    app = books_app()
    store = ReceiptStore(app)
    first = _receipt(app, store, b"%PDF first receipt")
    name = create_backup(app).name
    second = _receipt(app, store, b"%PDF second receipt")  # arrived after the backup
    totals = {first: "107.00", second: "214.00"}  # two purchases (the same values would be a duplicate)
    for receipt_id in (first, second):
        store.approve(receipt_id, total=totals[receipt_id], on=D1, vendor="Shop")
    _export(app, D1)

    code, stdout, err = cli("backup", "restore", name, "--force")
    assert code == 0, err
    assert "2 receipt(s)" in stdout
    app.db.dispose()

    for receipt_id in (first, second):
        receipt = store.get(receipt_id)
        assert receipt.status == "approved" and receipt.entry_reference == f"RCPT-{receipt_id}"
        with pytest.raises(Conflict, match="approved"):
            store.approve(receipt_id, total=totals[receipt_id], on=D1, vendor="Shop")  # not booked twice
    app.ledger.record(entry("AFTER-1", D2))
    _export(app, D1)
    _export(app, D2)
    delivered = delivered_references(tmp_path / "out")
    assert delivered == {f"RCPT-{first}": 1, f"RCPT-{second}": 1, "AFTER-1": 1}


def _receipt(app: App, store: ReceiptStore, data: bytes) -> int:
    with app.db.begin() as conn:
        receipt_id, _ = store.ingest(
            conn,
            sha256=hashlib.sha256(data).hexdigest(),
            content_type="application/pdf",
            extension="pdf",
            size=len(data),
            name="receipt.pdf",
            source={"mailbox": "test@example/INBOX", "uid_validity": 1, "uid": len(data), "part": 1},
        )
    store.mark_unreadable(receipt_id, "typed in by hand for the test")
    return receipt_id


def test_an_unreadable_database_is_only_replaced_by_force_and_the_divergence_is_recorded(
    books_app, cli, backend, db_url
):
    app = books_app()
    app.ledger.record(entry("KEEP-1", D1))
    name = create_backup(app).name
    if backend == "sqlite":
        app.db.dispose()
        Path(db_url.removeprefix("sqlite:///")).write_bytes(b"this is not a database " * 200)
    else:
        with app.db.begin() as conn:
            conn.execute(text("DROP TABLE export_batches CASCADE"))  # dropped by mistake

    code, _, err = cli("backup", "restore", name)
    assert code == 2 and "cannot tell what restoring" in err and "--force" in err

    code, stdout, err = cli("backup", "restore", name, "--force")
    assert code == 0, err
    assert "divergence: the replaced database could not be read" in stdout
    app.db.dispose()
    assert _references(app) == {"KEEP-1"}
    [divergence] = restore_divergences(app.db)
    assert "could not be read" in divergence.describe()
    assert app.alerts.is_open(f"backup_restore_rolled_back:{name}")


def test_a_backup_without_the_books_watermark_needs_force(books_app, cli, tmp_path):
    app = books_app()
    backup = create_backup(app)
    manifest = tmp_path / "backups" / f"{backup.name}.json"
    document = json.loads(manifest.read_text())
    del document["books"]  # as written by ledgerflow before restores compared the books
    manifest.write_text(json.dumps(document))

    code, _, err = cli("backup", "restore", backup.name)
    assert code == 2 and "made before backups recorded the state of the books" in err
    code, _, err = cli("backup", "restore", backup.name, "--force")
    assert code == 0, err


def test_restoring_the_same_backup_again_needs_no_force_and_keeps_the_record_of_restores(books_app, cli):
    app = books_app()
    app.ledger.record(entry("R-1", D1))
    _export(app, D1)
    name = create_backup(app).name
    for _ in range(3):
        code, _, err = cli("backup", "restore", name)
        assert code == 0, err
    app.db.dispose()
    with app.db.read() as conn:
        restored = conn.execute(select(export_logs.c.id).where(export_logs.c.action == "restored")).all()
    assert len(restored) == 3, "each restore is recorded; none erases the record of another"
    assert verify_chain(app.db).ok and not restore_divergences(app.db)


def test_an_entry_committed_after_the_snapshot_below_its_highest_id_is_newer(books_app, cli):
    """Ids below the snapshot's highest that it lacks (rolled back, or committed later by a slower
    transaction) are recorded in the watermark: an entry stored under one is still newer."""
    app = books_app()
    app.ledger.record_many([entry(f"G-{i}", D1) for i in range(1, 6)])
    with app.db.begin() as conn:
        gap = conn.execute(select(journal_entries).where(journal_entries.c.reference == "G-3")).one()
        conn.execute(journal_entries.delete().where(journal_entries.c.id == gap.id))
    name = create_backup(app).name
    with app.db.begin() as conn:  # the slow transaction commits, under the id it was given
        conn.execute(insert(journal_entries).values({**gap._mapping, "reference": "SLOW-1"}))
        line = {"entry_id": gap.id, "account_name": "x", "account": "5100"}
        conn.execute(
            insert(journal_lines),
            [
                {**line, "line_no": 1, "debit_minor": 1, "credit_minor": 0},
                {**line, "line_no": 2, "debit_minor": 0, "credit_minor": 1},
            ],
        )

    code, _, err = cli("backup", "restore", name)
    assert code == 2 and "1 journal entry (SLOW-1)" in err


def test_a_batch_that_completed_after_the_snapshot_is_carried_over_in_place(
    books_app, cli, cli_process, tmp_path
):
    """The backup holds the day's batch as uploaded (its runner was killed after the upload); it
    completed afterwards: the restored database gets it back completed, so the day is not sent again."""
    app = books_app()
    app.ledger.record_many([entry("U-1", D1), entry("U-2", D1)])
    lock = {"LEDGERFLOW_EXPORT_LOCK_SECONDS": "1"}
    killed = cli_process(
        "export", "run", "--date", D1.isoformat(), env={**lock, "LEDGERFLOW_EXPORT_CRASH_AT": "after_upload"}
    )
    assert killed.returncode == -signal.SIGKILL
    assert count(app, export_batches, export_batches.c.state == "uploaded") == 1
    name = create_backup(app).name

    def finished() -> bool:  # once the dead runner's lock has expired
        return (
            json.loads(cli_process("export", "run", "--date", D1.isoformat(), "--json", env=lock).stdout)[
                "state"
            ]
            == "completed"
        )

    wait_until(finished, 60, interval=0.5, message="the interrupted export to finish")

    code, stdout, err = cli("backup", "restore", name, "--force")
    assert code == 0 and "daily:2026-11-20" in stdout, err
    app.db.dispose()
    assert count(app, export_queue, export_queue.c.status == "completed") == 2
    result = ExportSaga(app).run_daily(D1)
    assert result.state == "completed" and result.already
    assert delivered_references(tmp_path / "out") == {"U-1": 1, "U-2": 1}
    assert verify_chain(app.db).ok


def test_a_backup_restores_into_a_new_empty_database_without_force(books_app, cli, other_db_url, tmp_path):
    """The new machine after a disaster: `ledgerflow migrate`, then the restore; nothing to roll back."""
    app = books_app()
    app.ledger.record_many([entry("N-1", D1), entry("N-2", D2)])
    _export(app, D1)
    name = create_backup(app).name

    code, stdout, err = cli("backup", "restore", name, env={"LEDGERFLOW_DATABASE_URL": other_db_url})

    assert code == 0 and "rolled back" not in stdout, err
    new = books_app(database_url=other_db_url)
    assert _references(new) == {"N-1", "N-2"} and verify_chain(new.db).ok
    assert not restore_divergences(new.db)
    _export(new, D2)
    assert delivered_references(tmp_path / "out") == {"N-1": 1, "N-2": 1}


@pytest.mark.parametrize("point", ["before_restore", "after_restore"])
def test_a_forced_restore_killed_half_way_is_finished_by_the_next_one(
    books_app, cli, cli_process, tmp_path, point
):
    """What must be carried over is saved before the database is replaced: after a SIGKILL on
    either side of the replacement, running the restore again ends with nothing sent twice."""
    app = books_app()
    app.ledger.record(entry("A-1", D1))
    name = create_backup(app).name
    app.ledger.record(entry("B-1", D1))
    _export(app, D1)
    app.db.dispose()
    killed = cli_process("backup", "restore", name, "--force", env={"LEDGERFLOW_BACKUP_CRASH_AT": point})
    assert killed.returncode == -signal.SIGKILL, killed.stderr

    code, stdout, err = cli("backup", "restore", name, "--force")
    assert code == 0, err
    assert ("finished the interrupted restore" in stdout) == (point == "after_restore")
    app.db.dispose()
    app.ledger.record(entry("C-1", D2))
    _export(app, D1)
    _export(app, D2)
    assert delivered_references(tmp_path / "out") == {"A-1": 1, "B-1": 1, "C-1": 1}
    assert count(app, export_batches, export_batches.c.state == "abandoned") == 0
    assert verify_chain(app.db).ok and len(restore_divergences(app.db)) == 1
    assert app.alerts.is_open(f"backup_restore_rolled_back:{name}")
    assert not list((tmp_path / "backups").glob(".lf-restore-*")), "the plan is gone once carried out"


def test_the_alert_of_a_forced_restore_reaches_the_webhook_before_the_cli_exits(books_app, cli_process):
    """`backup restore` is a short-lived process: its critical alert is delivered before it exits
    (the delivery thread is not simply killed at exit), and the delivery is recorded."""
    from tests.engine.test_alerts import Webhook

    app = books_app()
    app.ledger.record(entry("OLD-1", D1))
    name = create_backup(app).name
    app.ledger.record(entry("NEW-1", D1))
    hook = Webhook(fail_first=1)  # the first attempt fails: the retry happens before exit too
    try:
        done = cli_process(
            "backup", "restore", name, "--force", env={"LEDGERFLOW_ALERT_WEBHOOK_URL": hook.url}
        )
        assert done.returncode == 0, done.stderr
        assert [a["incident_key"] for a in hook.received] == [f"backup_restore_rolled_back:{name}"]
    finally:
        hook.close()
    app.db.dispose()
    (alert,) = [a for a in app.alerts.history() if a.incident_key == f"backup_restore_rolled_back:{name}"]
    assert alert.delivery.get("webhook") == "ok"
