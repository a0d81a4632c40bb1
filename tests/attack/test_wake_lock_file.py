"""SQLite: a wake-up lock file that cannot be opened (read-only directory, a path taken by
something else) costs the election, never the wake-up."""

from __future__ import annotations

import shutil
import sqlite3
import threading
from pathlib import Path

from ledgerflow.db.backends import Election
from ledgerflow.db.sqlite import DataVersionWaker


def test_a_lock_file_that_cannot_be_opened_still_wakes_the_worker(sqlite_template: Path, tmp_path: Path):
    path = tmp_path / "ledgerflow.db"
    shutil.copy(sqlite_template, path)
    election = Election(frozenset({"default"}), frozenset({"t"}))
    # a directory where the lock file would go: open() fails as in a read-only directory (root
    # is not stopped by permissions, so the test blocks the path itself)
    (tmp_path / f"ledgerflow.db-wake-{election.key() & 0xFFFFFFFF:08x}.lock").mkdir()
    woken = threading.Event()
    waker = DataVersionWaker(str(path), 0.005)
    waker.ready(True)
    waker.start(lambda _payload: woken.set(), election)
    try:
        for _ in range(100):  # each commit changes data_version for the waker's connection
            with sqlite3.connect(path) as other:
                other.execute("CREATE TABLE IF NOT EXISTS probe (x)")
                other.execute("INSERT INTO probe VALUES (1)")
            if woken.wait(0.1):
                break
        assert woken.is_set(), "a change never woke the worker"
    finally:
        waker.stop()
