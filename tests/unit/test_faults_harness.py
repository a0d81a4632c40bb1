"""The fault-injection harness itself: numbering, and each fault where it was asked for."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from ledgerflow.db.database import Database, is_transient
from tests.faults import StatementFaults


def _engine(tmp_path: Path):
    db = Database(f"sqlite:///{tmp_path / 'f.db'}")
    with db.begin() as conn:
        conn.execute(text("CREATE TABLE t (x INTEGER)"))
    return db


def _write(db: Database, value: int) -> None:
    with db.begin() as conn:
        conn.execute(text("INSERT INTO t VALUES (:x)"), {"x": value})


def _rows(db: Database) -> list[int]:
    with db.read() as conn:
        return [r[0] for r in conn.execute(text("SELECT x FROM t ORDER BY x"))]


def test_a_clean_run_numbers_each_statement_and_each_commit(tmp_path: Path) -> None:
    db = _engine(tmp_path)
    faults = StatementFaults().install(db.engine)
    _write(db, 1)
    kinds = [s.kind for s in faults.log]
    assert kinds[-1] == "commit" and "execute" in kinds
    assert [s.number for s in faults.log] == list(range(1, len(kinds) + 1))
    faults.uninstall()
    _write(db, 2)
    assert faults.count == len(kinds)


def test_error_before_a_commit_commits_nothing_and_is_transient(tmp_path: Path) -> None:
    db = _engine(tmp_path)
    counted = StatementFaults().install(db.engine)
    _write(db, 1)
    counted.uninstall()
    commit = next(s.number for s in counted.log if s.kind == "commit")
    StatementFaults("error_before", commit).install(db.engine)
    with pytest.raises(Exception) as raised:
        _write(db, 2)
    assert is_transient(raised.value)
    assert _rows(db) == [1]


def test_error_after_a_commit_is_the_ambiguous_case(tmp_path: Path) -> None:
    db = _engine(tmp_path)
    counted = StatementFaults().install(db.engine)
    _write(db, 1)
    counted.uninstall()
    commit = next(s.number for s in counted.log if s.kind == "commit")
    StatementFaults("error_after", commit).install(db.engine)
    with pytest.raises(Exception) as raised:
        _write(db, 2)
    assert is_transient(raised.value)
    assert _rows(db) == [1, 2]  # committed although the caller saw an error


def test_plain_engines_work_too(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'plain.db'}")
    faults = StatementFaults("error_before", 1).install(engine)
    with pytest.raises(Exception, match="injected fault"), engine.connect() as conn:
        conn.execute(text("SELECT 1"))
    assert faults.fired is not None and faults.fired.number == 1


def test_a_subprocess_can_be_killed_at_a_statement_and_logs_what_it_counted(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT

    env = {
        **os.environ,
        "LEDGERFLOW_DATABASE_URL": f"sqlite:///{tmp_path / 'k.db'}",
        "LEDGERFLOW_TEST_FAULT_LOG": str(tmp_path / "clean.log"),
    }
    clean = subprocess.run([sys.executable, "-m", "tests.faultrun", "init"], cwd=ROOT, env=env, timeout=120)
    assert clean.returncode == 0
    counted = (tmp_path / "clean.log").read_text().splitlines()
    assert len(counted) > 5
    env.update(LEDGERFLOW_TEST_FAULT="kill:3", LEDGERFLOW_DATABASE_URL=f"sqlite:///{tmp_path / 'k2.db'}")
    env["LEDGERFLOW_TEST_FAULT_LOG"] = str(tmp_path / "killed.log")
    killed = subprocess.run([sys.executable, "-m", "tests.faultrun", "init"], cwd=ROOT, env=env, timeout=120)
    assert killed.returncode == -9
    assert len((tmp_path / "killed.log").read_text().splitlines()) == 3


def test_a_subprocess_can_be_frozen_at_a_statement_and_carries_on_after_sigcont(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys

    from tests.conftest import ROOT, wait_until
    from tests.faults import process_state

    env = {
        **os.environ,
        "LEDGERFLOW_DATABASE_URL": f"sqlite:///{tmp_path / 's.db'}",
        "LEDGERFLOW_TEST_FAULT": "stop:3",
        "LEDGERFLOW_TEST_FAULT_LOG": str(tmp_path / "stopped.log"),
    }
    proc = subprocess.Popen([sys.executable, "-m", "tests.faultrun", "init"], cwd=ROOT, env=env)
    try:
        wait_until(lambda: process_state(proc.pid) == "T", 60, message="the process to stop itself")
        assert len((tmp_path / "stopped.log").read_text().splitlines()) == 3  # frozen before it ran #3
        proc.send_signal(signal.SIGCONT)
        assert proc.wait(120) == 0
    finally:
        proc.kill()
        proc.wait()
    assert len((tmp_path / "stopped.log").read_text().splitlines()) > 3


def test_a_worker_frozen_at_a_statement_of_one_thread_stops_before_it_not_after(
    tmp_path: Path, sqlite_template: Path
) -> None:
    """A `stop` fault on the database thread of a worker (a process of many threads) freezes it
    before the statement: frozen at its first `BEGIN IMMEDIATE`, it holds no write lock. (Sent
    to the process, the SIGSTOP was taken by the main thread, and the database thread ran on
    into its claim meanwhile, holding the lock, in 7 of 8 runs on a loaded machine.)"""
    import os
    import shutil
    import signal
    import sqlite3
    import subprocess
    import sys
    import time

    from ledgerflow import App
    from tests.apps import basic
    from tests.conftest import FAST, ROOT, count_runs, wait_until
    from tests.faults import process_state

    path = tmp_path / "w.db"
    shutil.copy(sqlite_template, path)
    url = f"sqlite:///{path}"
    app = App(database_url=url, log_level="WARNING")
    ids = app.enqueue_many([basic.record.prepare() for _ in range(4)])  # for the first claim
    app.close()
    env = {
        **os.environ,
        **FAST,
        "LEDGERFLOW_DATABASE_URL": url,
        "LEDGERFLOW_TEST_FAULT": "stop:1:ledgerflow-db:^BEGIN IMMEDIATE",
        "LEDGERFLOW_TEST_FAULT_LOG": str(tmp_path / "stopped.log"),
    }
    args = ["worker", "--app", "tests.apps.basic:app", "--burst", "--concurrency", "2"]
    proc = subprocess.Popen([sys.executable, "-m", "tests.faultrun", *args], cwd=ROOT, env=env)
    try:
        wait_until(lambda: process_state(proc.pid) == "T", 60, 0.02, "the worker to stop itself")
        time.sleep(0.2)  # long enough for another thread to run on, were it not stopped
        stopped_at = (tmp_path / "stopped.log").read_text().splitlines()
        assert stopped_at == ["execute\tledgerflow-db_0\tBEGIN IMMEDIATE"]
        other = sqlite3.connect(path, timeout=0.5)
        other.execute("BEGIN IMMEDIATE")  # the write lock is free: the worker stopped before its BEGIN
        other.execute("ROLLBACK")
        other.close()
        proc.send_signal(signal.SIGCONT)
        assert proc.wait(120) == 0
    finally:
        proc.kill()
        proc.wait()
    assert count_runs(url) == dict.fromkeys(ids, 1)
