"""SQLite: the waker's recheck window after a write of the log is bounded; it cannot spin."""

from __future__ import annotations

import shutil
import sqlite3
import sys
import time
from pathlib import Path

import pytest

from ledgerflow.db import sqlite as sqlite_backend
from ledgerflow.db.sqlite import DataVersionWaker

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify is Linux's")


def test_one_commit_costs_an_idle_waker_a_bounded_number_of_looks(
    sqlite_template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """After a write it looks again after 1, 2, 4 … 64 ms until 0.5 s have passed: at most
    7 + 0.5 / 0.064 looks, then nothing until its poll (30 s here). A slow machine looks less."""
    path = tmp_path / "ledgerflow.db"
    shutil.copy(sqlite_template, path)
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE probe (x)")
    looks: list[float] = []
    version = sqlite_backend._data_version

    def counted(conn: sqlite3.Connection) -> int | None:
        looks.append(time.monotonic())
        return version(conn)

    monkeypatch.setattr(sqlite_backend, "_data_version", counted)
    waker = DataVersionWaker(str(path), 30.0)
    waker.ready(True)
    waker.start(lambda _payload: None)
    try:
        time.sleep(0.3)
        settled = len(looks)
        with sqlite3.connect(path) as other:
            other.execute("INSERT INTO probe VALUES (1)")
        other.close()
        time.sleep(2.5)  # the window is 0.5 s: room for a loaded machine
        after_commit = len(looks) - settled
        time.sleep(1.0)
        assert len(looks) - settled == after_commit, "looking on after the window: a spin"
    finally:
        waker.stop()
    window = DataVersionWaker.RECHECK_WINDOW / DataVersionWaker.RECHECK_MAX
    assert 1 <= after_commit <= 7 + window + 4, f"{after_commit} looks for one commit"
