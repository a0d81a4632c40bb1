"""SQLite specifics: WAL, `BEGIN IMMEDIATE` writers, busy timeout, a `data_version` waker.

Durability: WAL with `synchronous=NORMAL` (the default) survives process crashes; a power
cut may lose the last transactions. `LEDGERFLOW_SQLITE_SYNCHRONOUS=FULL` makes every commit
durable at the cost of an fsync each.

SQLite has no network and no server sessions: of PostgreSQL's connection limits only the
lock wait applies, as the busy timeout (a writer waits that long for the write lock).
"""

from __future__ import annotations

import fcntl
import sqlite3
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Select, bindparam, event, exc
from sqlalchemy.engine import Engine
from sqlalchemy.sql.elements import ColumnElement

from ledgerflow.db.backends import BULK_JOB_COLUMNS, Election, StoppableThread, dumps
from ledgerflow.db.types import UTCDateTime

_FORMAT = "%Y-%m-%d %H:%M:%S.%f"  # SQLAlchemy's SQLite DATETIME storage format


def contains_casefolded(haystack: str | None, needle: str | None) -> int:
    """SQL `lf_contains(text, term)`: 1 when `term` is in `text` ignoring case (Unicode case
    folding, which SQLite's LIKE does only for ASCII); the job search on SQLite uses it."""
    if haystack is None or needle is None:
        return 0
    return int(needle.casefold() in haystack.casefold())


def _utcnow() -> datetime:
    return datetime.now(UTC)


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
            pool_timeout=options["pool_timeout"],
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
            dbapi_conn.create_function("lf_contains", 2, contains_casefolded, deterministic=True)

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Any) -> None:
            readonly = conn.get_execution_options().get("ledgerflow_readonly", False)
            conn.exec_driver_sql("BEGIN" if readonly else "BEGIN IMMEDIATE")

        return engine

    def now(self) -> ColumnElement[Any]:
        # One host shares one clock: the process clock is the database clock. The value is
        # taken when the statement executes, so prebuilt statements can be reused.
        return bindparam(None, type_=UTCDateTime, unique=True, callable_=_utcnow)

    def after(self, seconds: float) -> ColumnElement[Any]:
        delta = timedelta(seconds=seconds)
        return bindparam(None, type_=UTCDateTime, unique=True, callable_=lambda: _utcnow() + delta)

    def skip_locked(self, query: Select[Any]) -> Select[Any]:
        return query  # BEGIN IMMEDIATE already serialises writers: no row is locked by another

    def lift_limits(self, conn: Connection, *, lock_wait: bool, idle: bool = False) -> None:
        return None  # no statement timeout to lift; the busy timeout stays

    def insert_jobs(self, conn: Connection, rows: list[tuple[Any, ...]]) -> list[int]:
        """Many jobs in one executemany; ids are the rowids just allocated.

        Inside a write transaction nobody else can insert, and SQLite gives each new row
        the next id (AUTOINCREMENT), so the ids are the contiguous range ending at last_insert_rowid().
        """
        created = _utcnow().replace(tzinfo=None).strftime(_FORMAT)
        stamp: dict[datetime, str] = {}

        def values(row: tuple[Any, ...]) -> tuple[Any, ...]:
            task, queue, priority, state, args, kwargs, max_attempts, timeout, when = row
            text = stamp.get(when)
            if text is None:
                text = stamp[when] = when.astimezone(UTC).replace(tzinfo=None).strftime(_FORMAT)
            return (
                task,
                queue,
                priority,
                state,
                dumps(args) if args else "[]",
                dumps(kwargs) if kwargs else "{}",
                max_attempts,
                timeout,
                text,
                created,
            )

        cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        statement = (
            f"INSERT INTO jobs ({', '.join(BULK_JOB_COLUMNS)}, created_at, errors, has_dependencies) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, '[]', 0)"
        )
        try:
            cursor.executemany(statement, [values(r) for r in rows])
            last = cursor.execute("SELECT last_insert_rowid()").fetchone()[0]
        except sqlite3.Error as error:  # raw cursor: give it SQLAlchemy's form, like every other error
            kind = exc.OperationalError if isinstance(error, sqlite3.OperationalError) else exc.DatabaseError
            raise kind(statement, None, error) from error  # type: ignore[arg-type]
        finally:
            cursor.close()
        return list(range(last - len(rows) + 1, last + 1))

    def waker(self, engine: Engine, poll_seconds: float) -> DataVersionWaker:
        return DataVersionWaker(engine.url.database or "", poll_seconds)


class DataVersionWaker:
    """Polls `PRAGMA data_version`, which changes when another connection commits.

    With an `Election`, a change wakes only the ready worker holding the group's lock file
    (`<database>-wake-<key>.lock`, an `flock` the kernel releases when its process dies);
    a ready worker that could not take it keeps the change pending and takes the lock as
    soon as the leader gives it up (busy, stopped or dead), then claims.
    """

    def __init__(self, path: str, poll_seconds: float) -> None:
        self._path = path
        self._poll = poll_seconds
        self._thread: StoppableThread | None = None
        self._ready = False

    def ready(self, ready: bool) -> None:
        self._ready = ready

    def start(self, callback: Callable[[str | None], None], election: Election | None = None) -> None:
        lock_path = f"{self._path}-wake-{election.key() & 0xFFFFFFFF:08x}.lock" if election else None

        def loop(stop: threading.Event) -> None:
            conn = sqlite3.connect(self._path, check_same_thread=False)
            lock = open(lock_path, "a+b") if lock_path else None  # noqa: SIM115 (held for the thread's life)
            held = pending = False
            try:
                last = None
                while not stop.wait(self._poll):
                    try:
                        version = conn.execute("PRAGMA data_version").fetchone()[0]
                    except sqlite3.Error:
                        continue
                    if version != last:
                        pending = pending or last is not None
                        last = version
                    if lock is None:
                        if pending:
                            callback(None)
                        pending = False
                        continue
                    if held and not self._ready:
                        fcntl.flock(lock, fcntl.LOCK_UN)
                        held = False
                    if pending and self._ready and not held:
                        held = _try_flock(lock)
                    if pending and (held or not self._ready):
                        callback(None)
                        pending = False
            finally:
                conn.close()
                if lock is not None:
                    lock.close()

        self._thread = StoppableThread("ledgerflow-sqlite-waker", loop)
        self._thread.start()

    def stop(self) -> None:
        if self._thread:
            self._thread.stop()


def _try_flock(file: Any) -> bool:
    try:
        fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True
