"""SQLite: an idle worker's waker looks as soon as another process commits (the write-ahead
log is written), not at its next poll; the poll stays the safety net."""

from __future__ import annotations

import shutil
import sqlite3
import sys
import threading
import time
from pathlib import Path

import pytest

from ledgerflow.db.sqlite import DataVersionWaker, LogWatch

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify is Linux's")


def _database(template: Path, tmp_path: Path) -> Path:
    path = tmp_path / "ledgerflow.db"
    shutil.copy(template, path)
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE probe (x)")
    return path


def _commit(path: Path) -> None:
    with sqlite3.connect(path) as other:
        other.execute("INSERT INTO probe VALUES (1)")
    other.close()


def test_a_commit_wakes_an_idle_waker_long_before_its_poll(sqlite_template: Path, tmp_path: Path):
    path = _database(sqlite_template, tmp_path)
    calls: list[float] = []
    woken = threading.Event()
    waker = DataVersionWaker(str(path), 30.0)  # the poll alone would take 30 s

    def woke(_payload: str | None) -> None:
        calls.append(time.monotonic())
        woken.set()

    waker.ready(True)
    waker.start(woke)
    try:
        time.sleep(0.3)
        assert not calls, "woken without a commit"
        # On a loaded machine the waker's thread may take its first version only after a
        # commit (which it then rightly does not report): commit again every 0.5 s. Without the
        # log watch nothing would come before the 30 s poll.
        committed = time.monotonic()
        for _ in range(10):
            _commit(path)
            if woken.wait(0.5):
                break
        assert woken.is_set(), "commits for 5 s did not wake the idle waker"
        assert calls[0] - committed < 5.5, f"woken {calls[0] - committed:.2f} s after the first commit"
        woken.clear()
        _commit(path)  # and again: the watch stays on the log
        assert woken.wait(10), "a second commit did not wake the idle waker"
    finally:
        waker.stop()


def test_a_busy_waker_still_finds_commits_by_its_poll(sqlite_template: Path, tmp_path: Path):
    path = _database(sqlite_template, tmp_path)
    woken = threading.Event()
    waker = DataVersionWaker(str(path), 0.05)
    waker.ready(False)  # no free slot: the log is not watched, the poll finds the commit
    waker.start(lambda _payload: woken.set())
    try:
        time.sleep(0.2)
        _commit(path)
        assert woken.wait(10), "the poll did not find the commit"
    finally:
        waker.stop()


def test_the_log_watch_reports_writes_only(sqlite_template: Path, tmp_path: Path):
    path = _database(sqlite_template, tmp_path)
    reader = sqlite3.connect(path)  # keeps the log file in place, as the waker's connection does
    reader.execute("SELECT count(*) FROM probe").fetchone()
    watch = LogWatch(f"{path}-wal")
    try:
        assert watch.wait(0.05) is False and watch.written is False  # nothing written: the timeout
        _commit(path)
        assert watch.wait(5) is True and watch.written is True
        assert watch.wait(0.05) is False, "the events of one commit were reported twice"
    finally:
        watch.close()
        reader.close()


def test_the_log_watch_waits_for_a_missing_log_file(tmp_path: Path):
    path = tmp_path / "absent.db-wal"
    watch = LogWatch(str(path))
    try:
        started = time.monotonic()
        assert watch.wait(0.1) is False  # no file to watch: it sleeps out the timeout
        assert time.monotonic() - started >= 0.09
        path.write_bytes(b"")
        assert watch.wait(0.05) is False  # now watched, not written yet
        with path.open("ab") as log:
            log.write(b"x")
        assert watch.wait(5) is True
    finally:
        watch.close()
