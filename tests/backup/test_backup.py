"""Backups on both backends: made while a worker writes, verified by a restore, rotated, restored."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import pytest
from sqlalchemy import func, select

from ledgerflow.backup import create_backup, list_backups, restore_backup, rotate
from ledgerflow.builtin import build_app
from ledgerflow.config import load_settings
from ledgerflow.db.tables import jobs, journal_entries, metadata
from ledgerflow.demo import load_demo_ledger
from ledgerflow.errors import BadInput, Conflict
from tests.apps.basic import app as basic_app
from tests.conftest import run_cli, wait_until


@pytest.fixture
def ledger_app(db_url: str, tmp_path: Path):
    app = build_app(
        load_settings(
            database_url=db_url,
            backup_dir=str(tmp_path / "backups"),
            export_work_dir=str(tmp_path / "work"),
            log_level="WARNING",
        )
    )
    load_demo_ledger(app, date(2026, 11, 20))
    yield app
    app.close()


def _count(app, table) -> int:
    with app.db.read() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def test_backup_is_verified_listed_and_restores_the_snapshot(ledger_app, tmp_path):
    entries = _count(ledger_app, journal_entries)
    backup = create_backup(ledger_app)
    assert backup.verified_at is not None
    assert backup.rows["journal_entries"] == entries > 0
    assert set(backup.rows) == set(metadata.tables)
    manifest = json.loads((tmp_path / "backups" / f"{backup.name}.json").read_text())
    assert manifest["sha256"] == backup.sha256 and manifest["bytes"] == backup.bytes
    assert [b.name for b in list_backups(tmp_path / "backups")] == [backup.name]

    # changes after the backup are undone by restoring it
    ledger_app.enqueue(ledger_app.registry.get("ledgerflow.cleanup").prepare(3))
    load_demo_ledger(ledger_app, date(2026, 11, 21))
    assert _count(ledger_app, journal_entries) > entries
    restored = restore_backup(ledger_app, backup.name, force=True)  # newer entries: only by force
    assert set(restored.carried.dropped) == set(restored.plan.newer_entries) != set()  # named, not silent
    assert _count(ledger_app, journal_entries) == entries
    assert _count(ledger_app, jobs) == backup.rows["jobs"]
    # and the restored database still works
    ledger_app.enqueue(ledger_app.registry.get("ledgerflow.cleanup").prepare(3))
    assert _count(ledger_app, jobs) == backup.rows["jobs"] + 1


def test_a_damaged_backup_is_refused_and_nothing_changes(ledger_app, tmp_path):
    backup = create_backup(ledger_app)
    load_demo_ledger(ledger_app, date(2026, 11, 21))
    before = _count(ledger_app, journal_entries)
    path = tmp_path / "backups" / backup.name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(BadInput, match="damaged: sha256"):
        restore_backup(ledger_app, backup.name)
    assert _count(ledger_app, journal_entries) == before
    with pytest.raises(BadInput, match="no backup"):
        restore_backup(ledger_app, "ledgerflow-missing.sqlite.gz")


def test_rotation_keeps_the_newest_verified_backups(ledger_app, tmp_path):
    made = [create_backup(ledger_app, keep=2).name for _ in range(3)]
    assert [b.name for b in list_backups(tmp_path / "backups")] == sorted(made, reverse=True)[:2]
    assert len(list((tmp_path / "backups").iterdir())) == 4  # two files, two manifests
    with pytest.raises(BadInput, match="keep"):
        rotate(tmp_path / "backups", 0, None)


def test_backup_while_a_worker_writes_is_consistent(db_url, tmp_path, workers):
    """A real worker completes jobs during the backup; the verified counts match the snapshot."""
    app = build_app(load_settings(database_url=db_url, backup_dir=str(tmp_path / "b"), log_level="WARNING"))
    try:
        record = basic_app.registry.get("record")
        app.enqueue_many([record.prepare(label=f"j{i}") for i in range(3000)])
        worker = workers(concurrency=8)
        wait_until(lambda: _count(app, jobs) > 0 and _done(app) > 50, 30, message="worker started")
        backup = create_backup(app)  # raises unless the restored copy has the snapshot's rows
        assert worker.proc.poll() is None
        assert 0 < backup.rows["job_executions"] <= 3000
        # a worker is alive: restoring under it is refused
        with pytest.raises(Conflict, match="running against this database"):
            restore_backup(app, backup.name)
    finally:
        app.close()


def _done(app) -> int:
    with app.db.read() as conn:
        query = select(func.count()).select_from(jobs).where(jobs.c.state == "completed")
        return int(conn.execute(query).scalar_one())


def test_the_weekly_backup_task_and_the_cli(ledger_app, tmp_path, monkeypatch, capsys):

    job = ledger_app.enqueue(ledger_app.registry.get("ledgerflow.backup").prepare())
    ledger_app.run_worker("maintenance", burst=True)
    done = ledger_app.store.get(job.id)
    assert done.state == "completed", done.errors
    assert (tmp_path / "backups" / done.result["name"]).is_file()

    monkeypatch.setenv("LEDGERFLOW_DATABASE_URL", ledger_app.settings.database_url)
    monkeypatch.setenv("LEDGERFLOW_BACKUP_DIR", str(tmp_path / "backups"))
    monkeypatch.setenv("LEDGERFLOW_LOG_LEVEL", "ERROR")

    def cli(*args: str) -> tuple[int, str, str]:
        return run_cli(capsys, *args)

    code, out, _ = cli("backup", "create", "--json")
    made = json.loads(out)
    assert code == 0 and made["verified_at"] and made["total_rows"] > 0
    code, out, _ = cli("backup", "list", "--json")
    assert code == 0 and [b["name"] for b in json.loads(out)][:1] == [made["name"]]
    code, out, err = cli("backup", "restore", made["name"])
    assert code == 0 and f"restored {made['name']}" in out, err
    code, _, err = cli("backup", "restore", "nope")
    assert code == 2 and "no backup 'nope'" in err and len(err.strip().splitlines()) == 1
