"""Making and restoring snapshot files: under load, killed at every step, garbage, least privilege."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from ledgerflow.backup import create_backup, list_backups, snapshot
from ledgerflow.db.tables import jobs, journal_entries
from tests.backup.conftest import count, entry
from tests.conftest import ROOT, _admin, pg_url, runs, wait_until


def _runs(app) -> int:
    with app.db.read() as conn:
        return int(conn.execute(select(func.count()).select_from(runs)).scalar_one())


@pytest.mark.timeout(900, method="thread")  # the old copy hung inside SQLite, deaf to signals
def test_a_backup_finishes_while_two_threads_keep_writing(books_app, tmp_path, db_url, backend):
    """SQLite's online backup used to start over after every write by another process: at ~110 MB
    under two writing threads it never finished (over 400 s, measured). The copy is now one step."""
    app = books_app()
    paused = app.registry.get("ledgerflow.cleanup")  # no worker runs it: only its rows matter
    size = 1100 if backend == "sqlite" else 100  # x 100 KB
    app.enqueue_many([paused.prepare(["x" * 100_000]) for _ in range(size)])
    stop = tmp_path / "stop"
    writer = subprocess.Popen(
        [sys.executable, "-m", "tests.backup.writer", db_url, str(stop)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        wait_until(lambda: _runs(app) >= 20, 60, message="the writer to write")
        before = _runs(app)
        backup = create_backup(app)  # verified: the restored copy has the snapshot's rows
        after = _runs(app)
        assert writer.poll() is None and after > before, "the writer kept writing during the backup"
        assert backup.rows["jobs"] == count(app, jobs)
    finally:
        stop.touch()
        writer.wait(60)
    assert not list((tmp_path / "backups").glob(".lf-*")), "no temporary folder is left"


@pytest.mark.parametrize(
    "point", ["after_dump", "before_publish", "between_file_and_manifest", "after_rotate"]
)
def test_a_backup_killed_at_any_step_leaves_no_half_backup_and_the_next_one_cleans_up(
    books_app, cli, cli_process, tmp_path, point
):
    app = books_app()
    app.ledger.record(entry("K-1"))
    folder = tmp_path / "backups"
    killed = cli_process("backup", "create", env={"LEDGERFLOW_BACKUP_CRASH_AT": point})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    published = point == "after_rotate"
    assert len(list_backups(folder)) == published, "a backup exists once its manifest is in place"

    code, _, err = cli("backup", "create", "--json")
    assert code == 0, err
    listed = list_backups(folder, check=True)
    # a run killed between its file and its manifest had verified its backup: it is finished
    assert len(listed) == 1 + (point in ("after_rotate", "between_file_and_manifest"))
    assert all(b.usable for b in listed)
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [b.name for b in listed] + [f"{b.name}.json" for b in listed]
    ), "nothing else is left in the folder"


def test_a_backup_that_does_not_verify_leaves_nothing(cli, tmp_path, monkeypatch):
    monkeypatch.setattr(snapshot, "verify", lambda url, path, work: ({"jobs": -1}, "restore"))
    code, _, err = cli("backup", "create")
    assert code == 1 and "did not verify" in err and len(err.strip().splitlines()) == 1
    assert list((tmp_path / "backups").iterdir()) == []


def _not_ledgerflow(backend: str, tmp_path: Path) -> bytes:
    """A sound database file of the right kind that is someone else's."""
    if backend == "sqlite":
        path = tmp_path / "other.sqlite"
        with sqlite3.connect(path) as conn:
            conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT)")
        return gzip.compress(path.read_bytes())
    name = f"lf_other_{uuid.uuid4().hex[:8]}"
    _admin(f"CREATE DATABASE {name}")
    try:
        _admin_in(name, "CREATE TABLE notes (id serial PRIMARY KEY, text text)")
        return subprocess.run(
            ["pg_dump", "--format=custom", pg_url(name)], capture_output=True, check=True
        ).stdout
    finally:
        _admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def _admin_in(database: str, sql: str) -> None:
    import psycopg

    with psycopg.connect(pg_url(database), autocommit=True) as conn:
        conn.execute(sql)  # type: ignore[arg-type]


GARBAGE = {
    "random bytes": (lambda backend, tmp, real: os.urandom(20_000), "not a"),
    "a gzip of random bytes": (lambda backend, tmp, real: gzip.compress(os.urandom(20_000)), "not a"),
    "another program's database": (lambda backend, tmp, real: _not_ledgerflow(backend, tmp), "not"),
    "a real backup cut in half": (lambda backend, tmp, real: real[: len(real) // 2], ""),
}


@pytest.mark.parametrize("kind", list(GARBAGE))
def test_restoring_garbage_exits_2_with_one_line_and_changes_nothing(books_app, cli, tmp_path, backend, kind):
    app = books_app()
    app.ledger.record_many([entry("G-1"), entry("G-2")])
    real = create_backup(app)
    folder = tmp_path / "backups"
    make, phrase = GARBAGE[kind]
    data = make(backend, tmp_path, (folder / real.name).read_bytes())
    name = _sibling(real.name)
    (folder / name).write_bytes(data)
    manifest = json.loads((folder / f"{real.name}.json").read_text())
    manifest.update(name=name, bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    (folder / f"{name}.json").write_text(json.dumps(manifest))

    code, out, err = cli("backup", "restore", name, "--force")

    assert code == 2, err
    assert out == "" and len(err.strip().splitlines()) == 1 and name in err and phrase in err
    app.db.dispose()
    assert count(app, journal_entries) == 2, "nothing was changed"


def _sibling(name: str) -> str:
    """Another valid backup name, one microsecond later."""
    stamp, rest = name.split("_", 1)
    micro, rest = rest.split("-", 1)
    return f"{stamp}_{int(micro) + 1:06d}-{rest}"


def test_a_role_without_createdb_gets_verified_backups_and_restores(
    pg_template, tmp_path, monkeypatch, capsys
):
    """Verification restores into a scratch database when the role may create one; a least-privilege
    owner gets its archive read back whole instead (every table's rows counted), and restores work."""
    from tests.conftest import run_cli

    role, database = f"lf_owner_{uuid.uuid4().hex[:8]}", f"lf_lp_{uuid.uuid4().hex[:8]}"
    _admin(f"CREATE ROLE {role} LOGIN NOCREATEDB NOSUPERUSER")
    _admin(f"CREATE DATABASE {database} OWNER {role}")
    url = make_url(pg_url(database)).set(username=role).render_as_string(hide_password=False)
    for key, value in {
        "LEDGERFLOW_DATABASE_URL": url,
        "LEDGERFLOW_BACKUP_DIR": str(tmp_path / "backups"),
        "LEDGERFLOW_LOG_LEVEL": "ERROR",
    }.items():
        monkeypatch.setenv(key, value)
    try:
        assert run_cli(capsys, "migrate")[0] == 0
        code, out, err = run_cli(capsys, "backup", "create")
        assert code == 0, err
        assert "verified by reading the archive back" in out and "no CREATEDB" in out
        [backup] = list_backups(tmp_path / "backups")
        assert backup.verified_by == "archive" and backup.rows["jobs"] == 0
        code, out, err = run_cli(capsys, "backup", "restore", backup.name)
        assert code == 0 and f"restored {backup.name}" in out, err
    finally:
        _admin(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
        _admin(f"DROP ROLE IF EXISTS {role}")
