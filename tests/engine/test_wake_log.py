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

from ledgerflow.db import sqlite as sqlite_backend
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


def test_a_commit_published_late_after_its_log_write_still_wakes_the_idle_waker(
    sqlite_template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """A writer preempted between writing the log and publishing its commit in the log's index
    (the commit becomes visible 0.2 s after its write here): the waker keeps looking rather
    than waiting for its 30 s poll. The delay is injected in the waker's read of the version."""
    path = _database(sqlite_template, tmp_path)
    real = sqlite_backend._data_version
    hidden_until, shown, first_look = [0.0], [None], threading.Event()

    def published_late(conn: sqlite3.Connection) -> int | None:
        version = real(conn)
        if time.monotonic() < hidden_until[0]:
            return shown[0]
        shown[0] = version
        first_look.set()
        return version

    monkeypatch.setattr(sqlite_backend, "_data_version", published_late)
    woken = threading.Event()
    waker = DataVersionWaker(str(path), 30.0)
    waker.ready(True)
    waker.start(lambda _payload: woken.set())
    try:
        assert first_look.wait(10)
        time.sleep(0.05)
        hidden_until[0] = time.monotonic() + 0.2
        _commit(path)
        assert woken.wait(5), "a commit visible 0.2 s after its log write waited for the poll"
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
        assert watch.wait(10) is False  # no file to watch: it sleeps a short while, then looks again
        assert LogWatch.MISSING_RETRY * 0.9 <= time.monotonic() - started < 5
        path.write_bytes(b"")
        assert watch.wait(0.05) is False  # now watched, not written yet
        with path.open("ab") as log:
            log.write(b"x")
        assert watch.wait(5) is True
    finally:
        watch.close()
