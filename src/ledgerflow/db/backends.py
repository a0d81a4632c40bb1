"""The small interface each database backend implements (see `sqlite.py`, `postgres.py`)."""

from __future__ import annotations

import contextlib
import json
import re
import sqlite3
import threading
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import BigInteger, Connection, Select, column, select, table, union_all
from sqlalchemy.engine import Engine
from sqlalchemy.pool import PoolProxiedConnection
from sqlalchemy.sql.elements import ColumnElement

from ledgerflow.db.tables import jobs
from ledgerflow.db.types import storable_text
from ledgerflow.payload import compact_json


class Waker(Protocol):
    """Calls back soon after another process commits new work (NOTIFY or a cheap poll).

    With an `Election`, only one *ready* waker of the same group is called back per wake-up
    (the one holding the group's lock); a waker that is not ready (its worker has no free
    slot) is always called back, so its worker claims as soon as a slot frees. A leader that
    stops being ready gives the lock up and wakes the others. The lock dies with its process.
    """

    def start(self, callback: Callable[[str | None], None], election: Election | None = None) -> None: ...
    def ready(self, ready: bool) -> None: ...
    def stop(self) -> None: ...


@dataclass(frozen=True)
class Election:
    """Which wake-ups a worker shares with its peers: its queues and the tasks it runs."""

    queues: frozenset[str]
    tasks: frozenset[str]

    def key(self, queue: str = "") -> int:
        """A signed 32-bit lock key for this group (and queue, for PostgreSQL's per-queue NOTIFY)."""
        text = "\0".join([queue, *sorted(self.queues), "", *sorted(self.tasks)])
        value = zlib.crc32(text.encode())
        return value - (1 << 32) if value >= 1 << 31 else value


@dataclass(frozen=True)
class SessionLimits:
    """Server-side limits on every session of the pool, in seconds (0 turns one off).

    They bound what a process cut off mid-transaction can hold: its locks are released
    once the server ends the idle transaction, and nobody waits on a lock for long.
    """

    statement_timeout: float = 30.0
    lock_timeout: float = 5.0
    idle_in_transaction_timeout: float = 5.0


#: A SQLAlchemy connection, a pooled driver connection without one, or SQLite's connection of
#: one-call statements (`Database.single`).
AnyConnection = Connection | PoolProxiedConnection | sqlite3.Connection


def driver_of(conn: AnyConnection) -> Any:
    """The driver's connection (psycopg, sqlite3) under a SQLAlchemy connection or a pooled one."""
    if isinstance(conn, Connection):
        return conn.connection.driver_connection
    if isinstance(conn, PoolProxiedConnection):
        return conn.driver_connection
    return conn


class Backend(Protocol):
    name: str

    def create_engine(self, url: str, factory: Callable[..., Engine], **options: Any) -> Engine: ...
    def now(self) -> ColumnElement[Any]: ...
    def after(self, seconds: float) -> ColumnElement[Any]: ...
    def skip_locked(self, query: Select[Any]) -> Select[Any]: ...
    def lift_limits(self, conn: Connection, *, lock_wait: bool, idle: bool = False) -> None: ...
    def waker(self, engine: Engine, poll_seconds: float) -> Waker: ...
    def autocommit(self, driver: Any, on: bool) -> None: ...
    def insert_jobs(self, conn: Connection, rows: list[tuple[Any, ...]]) -> list[int]: ...
    def insert_job(
        self, conn: AnyConnection, values: tuple[Any, ...], now: datetime
    ) -> tuple[int, datetime]: ...
    def stream(
        self, conn: Connection, query: Select[Any], size: int
    ) -> AbstractContextManager[Iterator[Sequence[Any]]]: ...


@contextlib.contextmanager
def cursor_stream(conn: Connection, query: Select[Any], size: int) -> Iterator[Iterator[Sequence[Any]]]:
    """`query`'s rows through SQLAlchemy's streaming cursor (server-side on PostgreSQL), `size`
    rows per fetch; the cursor is closed on leaving, however far the rows were read."""
    with conn.execution_options(stream_results=True, yield_per=size).execute(query) as result:
        yield iter(result)


#: Columns of a bulk insert row, in order (`args` and `kwargs` as JSON text); `errors` is
#: always `[]` and `created_at` is now.
#: PostgreSQL: age after which the pool replaces a connection at its next check-out
#: (`PostgresSingle`'s kept connection too). Here, not in `postgres.py`: `Database` reads it
#: without importing psycopg, which a SQLite process never needs.
POOL_RECYCLE_SECONDS = 1800

BULK_JOB_COLUMNS = (
    "task",
    "queue",
    "priority",
    "state",
    "args",
    "kwargs",
    "max_attempts",
    "timeout",
    "scheduled_at",
)


#: Columns of a one-job insert (`insert_job`): a plain job's, with its trace context (JSON text).
ONE_JOB_COLUMNS = (*BULK_JOB_COLUMNS, "trace_context")


_decode = json.JSONDecoder().decode

#: `\u0000` escapes that are not themselves escaped (an even run of backslashes before them).
_NUL_ESCAPE = re.compile(r"(?<!\\)((?:\\\\)*)\\u0000")


def dumps(value: Any) -> str:
    """Compact JSON, non-ASCII kept (Thai and Japanese stay readable in the database).

    What a JSON column cannot hold on PostgreSQL (NUL, lone surrogates) is stored as U+FFFD,
    the same rule as text columns (`types.storable_text`); NaN and infinities are refused.
    """
    text = compact_json(value)
    if "\\u0000" in text:
        text = _NUL_ESCAPE.sub("\\1\\\\ufffd", text)
    return text if text.isascii() else storable_text(text)


def loads(data: str | bytes) -> Any:
    """A JSON column's value, decoded by one reused decoder (the engines' deserializer).

    `json.loads` detects the encoding of bytes and checks its argument on every call: three
    times the cost of decoding the short documents of a job row (`[]`, `{}`), three per job."""
    if not isinstance(data, str):
        if not isinstance(data, bytes | bytearray):  # a TypeError, as json.loads raises: SQLite's
            # JSON processor catches it to return the number its NUMERIC affinity made of '42'
            raise TypeError(f"the JSON object must be str, bytes or bytearray, not {type(data).__name__}")
        data = data.decode()
    return _decode(data)


def backend_for(url: str) -> Backend:
    """Pick the backend from a database URL's scheme."""
    if url.startswith("sqlite"):
        from ledgerflow.db.sqlite import SQLiteBackend

        return SQLiteBackend()
    from ledgerflow.db.postgres import PostgresBackend

    return PostgresBackend()


class StoppableThread:
    """A daemon thread running `loop(stop_event)`; shared by the wakers."""

    def __init__(self, name: str, loop: Callable[[threading.Event], None]) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=loop, args=(self._stop,), name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


#: The job search index's mark and its notes of jobs whose errors changed (migrations 0015 and
#: 0018), the same on both backends; each backend's index tables are its own.
job_search_mark = table("job_search_mark", column("indexed_to", BigInteger))
job_search_dirty = table("job_search_dirty", column("id", BigInteger))


def search_candidates(
    id_column: ColumnElement[Any], indexed: Select[Any], errors: bool
) -> ColumnElement[bool]:
    """`id_column IN (...)`: the jobs the index found (`indexed`), plus every job above the index
    mark (not indexed yet) and, for errors, every job whose errors changed since it was indexed.
    A superset: callers recheck the text on the job itself."""
    newer = jobs.alias("newer")
    found = [
        indexed,
        select(newer.c.id).where(newer.c.id > select(job_search_mark.c.indexed_to).scalar_subquery()),
    ]
    if errors:
        found.append(select(job_search_dirty.c.id))
    return id_column.in_(union_all(*found))
