"""SQLite specifics: WAL, `BEGIN IMMEDIATE` writers, busy timeout, a `data_version` waker.

Durability: WAL with `synchronous=NORMAL` (the default) survives process crashes; a power
cut may lose the last transactions. `LEDGERFLOW_SQLITE_SYNCHRONOUS=FULL` makes every commit
durable at the cost of an fsync each.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Select, event, literal
from sqlalchemy.engine import Engine
from sqlalchemy.sql.elements import ColumnElement

from ledgerflow.db.backends import StoppableThread
from ledgerflow.db.types import UTCDateTime


class SQLiteBackend:
    name = "sqlite"

    def create_engine(self, url: str, factory: Callable[..., Engine], **options: Any) -> Engine:
        busy = float(options["busy_timeout"])
        synchronous = str(options["sqlite_synchronous"])
        engine = factory(
            url,
            connect_args={"timeout": busy, "check_same_thread": False},
            json_serializer=options["json_serializer"],
            pool_size=options["pool_size"],
            max_overflow=10,
        )

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: sqlite3.Connection, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute(f"PRAGMA synchronous={synchronous}")
            cur.execute(f"PRAGMA busy_timeout={int(busy * 1000)}")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Any) -> None:
            readonly = conn.get_execution_options().get("ledgerflow_readonly", False)
            conn.exec_driver_sql("BEGIN" if readonly else "BEGIN IMMEDIATE")

        return engine

    def now(self) -> ColumnElement[Any]:
        # One host shares one clock: the process clock is the database clock.
        return literal(datetime.now(UTC), UTCDateTime)

    def after(self, seconds: float) -> ColumnElement[Any]:
        return literal(datetime.now(UTC) + timedelta(seconds=seconds), UTCDateTime)

    def lock_for_claim(self, query: Select[Any]) -> Select[Any]:
        return query  # BEGIN IMMEDIATE already serialises writers

    def waker(self, engine: Engine, poll_seconds: float) -> DataVersionWaker:
        return DataVersionWaker(engine.url.database or "", poll_seconds)


class DataVersionWaker:
    """Polls `PRAGMA data_version`, which changes when another connection commits."""

    def __init__(self, path: str, poll_seconds: float) -> None:
        self._path = path
        self._poll = poll_seconds
        self._thread: StoppableThread | None = None

    def start(self, callback: Callable[[str | None], None]) -> None:
        def loop(stop: threading.Event) -> None:
            conn = sqlite3.connect(self._path, check_same_thread=False)
            try:
                last = None
                while not stop.wait(self._poll):
                    try:
                        version = conn.execute("PRAGMA data_version").fetchone()[0]
                    except sqlite3.Error:
                        continue
                    if version != last:
                        if last is not None:
                            callback(None)
                        last = version
            finally:
                conn.close()

        self._thread = StoppableThread("ledgerflow-sqlite-waker", loop)
        self._thread.start()

    def stop(self) -> None:
        if self._thread:
            self._thread.stop()
