"""SQLite: the waker of a worker with no free slot does not poll (it woke the busy worker's loop
every few ms for nothing); it looks once a slot frees and calls back if anything was committed
meanwhile, so a job enqueued while every slot was busy is still claimed as soon as one frees."""

from __future__ import annotations

import shutil
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from ledgerflow.db import sqlite as sqlite_backend
from ledgerflow.db.sqlite import DataVersionWaker


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


def test_a_busy_waker_neither_polls_nor_calls_back_while_others_commit(
    sqlite_template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """The worker's poll is 5 ms: a busy waker used to look (and call back) every 5 ms."""
    path = _database(sqlite_template, tmp_path)
    looks: list[float] = []
    version = sqlite_backend._data_version

    def counted(conn: sqlite3.Connection) -> int | None:
        looks.append(time.monotonic())
        return version(conn)

    monkeypatch.setattr(sqlite_backend, "_data_version", counted)
    calls: list[float] = []
    waker = DataVersionWaker(str(path), 0.005)
    waker.ready(False)
    waker.start(lambda _payload: calls.append(time.monotonic()))
    try:
        time.sleep(0.1)
        settled, called = len(looks), len(calls)
        for _ in range(10):  # 1 s of commits by another process
            _commit(path)
            time.sleep(0.1)
        busy_looks, busy_calls = len(looks) - settled, len(calls) - called
    finally:
        waker.stop()
    bound = 6  # its safety-net look every 0.25 s, and room for a slow machine
    assert busy_looks <= bound, f"{busy_looks} looks in 1 s while busy: polling"
    assert busy_calls <= bound, f"{busy_calls} call-backs in 1 s while busy"


def test_a_freed_slot_sees_a_commit_made_while_busy_at_once(
    sqlite_template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """Not at the busy waker's safety-net poll (made 30 s here): `ready(True)` wakes it."""
    monkeypatch.setattr(DataVersionWaker, "BUSY_POLL", 30.0, raising=False)
    path = _database(sqlite_template, tmp_path)
    woken = threading.Event()
    waker = DataVersionWaker(str(path), 0.005)
    waker.ready(False)
    waker.start(lambda _payload: woken.set())
    try:
        time.sleep(0.2)
        woken.clear()
        _commit(path)
        time.sleep(0.2)
        woken.clear()  # a busy waker may or may not have looked: only what follows counts
        _commit(path)
        freed = time.monotonic()
        waker.ready(True)
        assert woken.wait(5), "a commit made while busy was not called back once a slot freed"
        assert time.monotonic() - freed < 1.0
    finally:
        stopping = time.monotonic()
        waker.stop()
    assert time.monotonic() - stopping < 2.0, "stop waited for the busy poll"


def test_a_busy_waker_stops_at_once(sqlite_template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(DataVersionWaker, "BUSY_POLL", 30.0, raising=False)
    path = _database(sqlite_template, tmp_path)
    waker = DataVersionWaker(str(path), 0.005)
    waker.ready(False)
    waker.start(lambda _payload: None)
    time.sleep(0.2)
    started = time.monotonic()
    waker.stop()
    assert time.monotonic() - started < 2.0
