"""SQLite specifics: WAL, `BEGIN IMMEDIATE` writers, busy timeout, a `data_version` waker.

Durability: WAL with `synchronous=NORMAL` (the default) survives process crashes; a power
cut may lose the last transactions. `LEDGERFLOW_SQLITE_SYNCHRONOUS=FULL` makes every commit
durable at the cost of an fsync each.

SQLite has no network and no server sessions: of PostgreSQL's connection limits only the
lock wait applies, as the busy timeout (a writer waits that long for the write lock).
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import itertools
import logging
import os
import select as fdselect
import sqlite3
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    Connection,
    Integer,
    Select,
    bindparam,
    column,
    event,
    exc,
    literal_column,
    select,
    table,
)
from sqlalchemy.dialects.sqlite.base import SQLiteCompiler
from sqlalchemy.engine import Engine
from sqlalchemy.sql.elements import ColumnElement

from ledgerflow.db.backends import (
    BULK_JOB_COLUMNS,
    ONE_JOB_COLUMNS,
    AnyConnection,
    Election,
    StoppableThread,
    driver_of,
    search_candidates,
)
from ledgerflow.db.types import UTCDateTime

log = logging.getLogger(__name__)


def contains_casefolded(haystack: str | None, needle: str | None) -> int:
    """SQL `lf_contains(text, term)`: 1 when `term` is in `text` ignoring case (Unicode case
    folding, which SQLite's LIKE does only for ASCII); the job search on SQLite uses it."""
    if haystack is None or needle is None:
        return 0
    return int(needle.casefold() in haystack.casefold())


def casefolded(text: str | None) -> str | None:
    """SQL `lf_casefold(text)`: Python's Unicode case folding, what the job search index holds."""
    return None if text is None else text.casefold()


#: The job search index (migration 0015): an FTS5 trigram table of case-folded args and kwargs
#: text, filled up to `job_search_mark.indexed_to` off the enqueue path.
job_search = table("job_search", column("rowid", Integer))
job_error_search = table("job_error_search", column("rowid", Integer))
_RAREST = 3  # trigrams looked up per text: the rarest few narrow as well as all of them
_SAMPLE = 200  # index entries read to estimate how common a trigram is
_SAMPLED = 16  # trigrams of a long text sampled for rarity


def trigrams(folded: str) -> list[str]:
    """The distinct trigrams of `folded`, in order."""
    return list(dict.fromkeys(folded[i : i + 3] for i in range(len(folded) - 2)))


def _spread(conn: Connection, index: str, gram: str) -> int:
    """How many ids the oldest and the newest `_SAMPLE` index entries of `gram` span, summed
    (smaller: more common); fewer entries than that: rare, spanning every id."""
    spread = 0
    for order in ("ASC", "DESC"):
        low, high, found = conn.exec_driver_sql(
            f"SELECT min(rowid), max(rowid), count(*) FROM (SELECT rowid FROM {index} "
            f"WHERE {index} MATCH ? ORDER BY rowid {order} LIMIT ?)",
            (_quoted(gram), _SAMPLE),
        ).one()
        if found < _SAMPLE:
            return 1 << 62
        spread += int(high) - int(low)
    return spread


def _quoted(gram: str) -> str:
    return '"' + gram.replace('"', '""') + '"'


def _match(term: str, conn: Connection | None, index: str) -> str | None:
    """The FTS5 query for `term`: its rarest trigrams (case-folded; rarity sampled through
    `conn`, else the first and last few), all required; None under 3 characters."""
    grams = trigrams(term.casefold())
    if not grams:
        return None
    if conn is not None:
        sampled = grams[:: -(-len(grams) // _SAMPLED)] + grams[-1:]  # at most _SAMPLED + 1
        rarity = {g: _spread(conn, index, g) for g in dict.fromkeys(sampled)}
        grams = sorted(rarity, key=rarity.__getitem__, reverse=True)[:_RAREST]
    elif len(grams) > 2 * _RAREST:
        grams = grams[:_RAREST] + grams[-_RAREST:]
    return " AND ".join(map(_quoted, grams))


def many_candidates(conn: Connection, term: str, bound: int) -> bool:
    """Whether the text index offers at least `bound` jobs for `term` (read up to that many)."""
    query = _match(term, conn, "job_search")
    if query is None:
        return True
    found = conn.exec_driver_sql(
        "SELECT count(*) FROM (SELECT rowid FROM job_search WHERE job_search MATCH ? LIMIT ?)", (query, bound)
    ).scalar_one()
    return int(found) >= bound


def text_candidates(
    id_column: ColumnElement[Any], term: str, conn: Connection | None = None, errors: bool = False
) -> ColumnElement[bool] | None:
    """`id_column IN (...)`: jobs the index (of args and kwargs, or `errors`) says hold the
    rarest trigrams of `term` (case-folded; rarity sampled through `conn`, else the first and
    last few), plus every job above the index mark (not indexed yet) and, for errors, every
    job whose errors changed since; None when `term` folds to fewer than 3 characters (the
    index cannot answer: scan). A superset: callers recheck the text itself."""
    index = job_error_search if errors else job_search
    query = _match(term, conn, index.name)
    if query is None:
        return None
    indexed = select(index.c.rowid).where(literal_column(index.name).op("MATCH")(query))
    return search_candidates(id_column, indexed, errors)


def search_pending(conn: Connection) -> bool:
    """Whether a job above the search index mark, or one whose errors changed, waits."""
    return bool(
        conn.exec_driver_sql(
            "SELECT EXISTS (SELECT 1 FROM jobs WHERE id > (SELECT indexed_to FROM job_search_mark)) "
            "OR EXISTS (SELECT 1 FROM job_search_dirty)"
        ).scalar_one()
    )


def index_jobs(conn: Connection, chunk: int) -> int:
    """Index the next `chunk` jobs above the mark and move the mark past them, then re-index
    the errors of up to `chunk` jobs whose errors changed; how many jobs were indexed.

    Run in a write transaction: SQLite writers are serialised and ids only grow
    (AUTOINCREMENT), so every job up to the new mark is committed and indexed."""
    mark = conn.exec_driver_sql("SELECT indexed_to FROM job_search_mark").scalar_one()
    top, count = conn.exec_driver_sql(
        "SELECT max(id), count(*) FROM (SELECT id FROM jobs WHERE id > ? ORDER BY id LIMIT ?)", (mark, chunk)
    ).one()
    if count:
        conn.exec_driver_sql(
            "INSERT INTO job_search (rowid, body) SELECT id, lf_casefold(args) || char(10) || "
            "lf_casefold(kwargs) FROM jobs WHERE id > ? AND id <= ?",
            (mark, top),
        )
        conn.exec_driver_sql(  # jobs inserted with errors (a restore): their errors too
            "INSERT OR IGNORE INTO job_search_dirty (id) SELECT id FROM jobs WHERE id > ? AND id <= ? "
            "AND errors <> '[]'",
            (mark, top),
        )
        conn.exec_driver_sql("UPDATE job_search_mark SET indexed_to = ?", (top,))
    changed = (
        conn.exec_driver_sql("SELECT id FROM job_search_dirty ORDER BY id LIMIT ?", (chunk,)).scalars().all()
    )
    if changed:
        ids = ",".join(str(int(i)) for i in changed)
        conn.exec_driver_sql(f"DELETE FROM job_error_search WHERE rowid IN ({ids})")
        conn.exec_driver_sql(
            "INSERT INTO job_error_search (rowid, body) "
            f"SELECT id, lf_casefold(errors) FROM jobs WHERE id IN ({ids}) AND errors <> '[]'"
        )
        conn.exec_driver_sql(f"DELETE FROM job_search_dirty WHERE id IN ({ids})")
    return int(count) + len(changed)


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _stored(when: datetime) -> str:
    """An aware instant as SQLAlchemy stores a `UTCDateTime` on SQLite (naive UTC text,
    `YYYY-MM-DD HH:MM:SS.ffffff`; `isoformat` is 5x faster than `strftime`)."""
    return when.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")


def _driver_error(statement: str, error: sqlite3.Error) -> exc.DBAPIError:
    """An error raised on the raw sqlite3 cursor, in SQLAlchemy's form like every other error."""
    kind = exc.OperationalError if isinstance(error, sqlite3.OperationalError) else exc.DatabaseError
    return kind(statement, None, error)  # type: ignore[arg-type]


_INSERT_ONE = (
    f"INSERT INTO jobs ({', '.join(ONE_JOB_COLUMNS)}, created_at, errors, has_dependencies) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, '[]', 0)"
)
_INSERT_MANY = (
    f"INSERT INTO jobs ({', '.join(BULK_JOB_COLUMNS)}, created_at, errors, has_dependencies) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, '[]', 0)"
)


class _HintCompiler(SQLiteCompiler):
    """Renders a table hint given for SQLite (`with_hint(jobs, "INDEXED BY ...", "sqlite")`),
    which SQLAlchemy's SQLite compiler leaves out: see `tables.CLAIM_INDEX`."""

    def get_from_hint_text(self, table: Any, text: str | None) -> str | None:
        return text


class SQLiteBackend:
    name = "sqlite"

    def create_engine(self, url: str, factory: Callable[..., Engine], **options: Any) -> Engine:
        busy = float(options["busy_timeout"])
        synchronous = str(options["sqlite_synchronous"])
        engine = factory(
            url,
            connect_args={"timeout": busy, "check_same_thread": False},
            json_serializer=options["json_serializer"],
            json_deserializer=options["json_deserializer"],
            pool_size=options["pool_size"],
            max_overflow=10,
            pool_timeout=options["pool_timeout"],
        )
        engine.dialect.statement_compiler = _HintCompiler

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
            dbapi_conn.create_function("lf_casefold", 1, casefolded, deterministic=True)

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

    def autocommit(self, driver: sqlite3.Connection, on: bool) -> None:
        return None  # no BEGIN issued (isolation_level None): a statement commits alone already

    def insert_jobs(self, conn: Connection, rows: list[tuple[Any, ...]]) -> list[int]:
        """Many jobs in one executemany; ids are the rowids just allocated.

        Inside a write transaction nobody else can insert, and SQLite gives each new row
        the next id (AUTOINCREMENT), so the ids are the contiguous range ending at last_insert_rowid().
        """
        created = _stored(_utcnow())
        stamp: dict[datetime, str] = {}

        def values(row: tuple[Any, ...]) -> tuple[Any, ...]:
            when = row[8]
            text = stamp.get(when)
            if text is None:
                text = stamp[when] = _stored(when)
            return (*row[:8], text, created)

        cursor = driver_of(conn).cursor()
        try:
            cursor.executemany(_INSERT_MANY, [values(r) for r in rows])
            last = cursor.execute("SELECT last_insert_rowid()").fetchone()[0]
        except sqlite3.Error as error:
            raise _driver_error(_INSERT_MANY, error) from error
        finally:
            cursor.close()
        return list(range(last - len(rows) + 1, last + 1))

    def insert_job(self, conn: AnyConnection, values: tuple[Any, ...], now: datetime) -> tuple[int, datetime]:
        """One plain job (no unique key, dependencies or schedule; `ONE_JOB_COLUMNS` values) in
        one statement on the driver's connection, without SQLAlchemy's per-statement work (half
        the CPU of one-call enqueue); returns its id and `created_at`: `now`, the caller's
        reading of the process clock (SQLite's), which a job due now is also scheduled at."""
        created = _stored(now)
        when = values[8]
        try:
            cursor = driver_of(conn).execute(
                _INSERT_ONE, (*values[:8], created if when is now else _stored(when), values[9], created)
            )
        except sqlite3.Error as error:
            raise _driver_error(_INSERT_ONE, error) from error
        job_id = cursor.lastrowid
        assert job_id is not None
        return job_id, now

    @contextlib.contextmanager
    def stream(self, conn: Connection, query: Select[Any], size: int) -> Iterator[Iterator[Sequence[Any]]]:
        """`query`'s rows as sqlite3 gives them, `size` fetched at a time: no SQLAlchemy row
        or result processing (a date is its ISO text, a boolean 0 or 1): 1M export lines read
        and grouped in 1.6 s of CPU instead of 2.0. SQLAlchemy executes the statement (its
        cursor events, its errors); the rows are read from its cursor, closed on leaving."""
        with conn.execute(query) as result:
            cursor: sqlite3.Cursor = result.cursor  # type: ignore[assignment]

            def fetch() -> list[Any]:
                try:
                    return cursor.fetchmany(size)
                except sqlite3.Error as error:  # raised in SQLAlchemy's form, as its own fetch does
                    conn._handle_dbapi_exception(error, None, None, cursor, result.context)  # type: ignore[arg-type]
                    raise

            yield itertools.chain.from_iterable(iter(fetch, []))

    def waker(self, engine: Engine, poll_seconds: float) -> DataVersionWaker:
        return DataVersionWaker(engine.url.database or "", poll_seconds)


class DataVersionWaker:
    """Polls `PRAGMA data_version`, which changes when another connection commits; while its
    worker has free slots it also looks as soon as the write-ahead log is written (`LogWatch`),
    so an idle worker sees a new job within a millisecond instead of half a poll on average.

    With an `Election`, a change wakes only the ready worker holding the group's lock file
    (`<database>-wake-<key>.lock`, an `flock` the kernel releases when its process dies);
    a ready worker that could not take it keeps the change pending and takes the lock as
    soon as the leader gives it up (busy, stopped or dead), then claims.
    """

    #: At least this long between two looks (a busy database writes its log all the time).
    MIN_GAP = 0.001
    #: After a write of the log, look again after 1, 2, 4 … ms (at most `RECHECK_MAX`) until
    #: `RECHECK_WINDOW` has passed without another: a writer writes the log, then publishes
    #: its commit in the log's index, and may be preempted between the two for far longer
    #: than a millisecond on a loaded machine (a single look 1 ms later lost such a commit
    #: until the poll: 30 s in a test, once).
    RECHECK, RECHECK_MAX, RECHECK_WINDOW = 0.001, 0.064, 0.5

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
            lock = _open_lock(lock_path) if lock_path else None
            watch = LogWatch(f"{self._path}-wal")
            held = pending = False
            try:
                last = _data_version(conn)  # before the first wait: a commit during it is seen
                timeout = self._poll
                checked = recheck_until = 0.0
                while not stop.is_set():
                    if self._ready:  # idle slots: look as soon as the log is written
                        if watch.wait(timeout):
                            stop.wait(max(0.0, checked + self.MIN_GAP - time.monotonic()))
                    else:  # busy: the poll is soon enough (a freed slot claims by itself)
                        stop.wait(self._poll)
                        watch.wait(0)
                    if stop.is_set():
                        break
                    checked = time.monotonic()
                    version = _data_version(conn)
                    if version is None:
                        continue
                    # a commit written to the log may become visible only later (see RECHECK)
                    if watch.written:
                        recheck_until, timeout = checked + self.RECHECK_WINDOW, self.RECHECK
                    elif checked < recheck_until:
                        timeout = min(timeout * 2, self.RECHECK_MAX)
                    else:
                        timeout = self._poll
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
                watch.close()
                if lock is not None:
                    lock.close()

        self._thread = StoppableThread("ledgerflow-sqlite-waker", loop)
        self._thread.start()

    def stop(self) -> None:
        if self._thread:
            self._thread.stop()


def _data_version(conn: sqlite3.Connection) -> int | None:
    """`PRAGMA data_version` (changes when another connection commits); None if unreadable."""
    try:
        return int(conn.execute("PRAGMA data_version").fetchone()[0])
    except sqlite3.Error:
        return None


class LogWatch:
    """Tells when the write-ahead log file is written (Linux inotify, `IN_MODIFY`): every
    commit writes it. Where inotify is not available `wait` only sleeps and the waker's poll
    finds the commits; while the file is missing it sleeps `MISSING_RETRY` at most."""

    _IN_MODIFY, _IN_IGNORED = 0x2, 0x8000
    _IN_NONBLOCK, _IN_CLOEXEC = os.O_NONBLOCK, os.O_CLOEXEC
    #: While the log file is missing, try to watch it again this often (seconds).
    MISSING_RETRY = 0.05

    def __init__(self, path: str) -> None:
        self._path = path.encode()
        self._libc = _libc()
        self._fd = self._libc.inotify_init1(self._IN_NONBLOCK | self._IN_CLOEXEC) if self._libc else -1
        self._watching = False
        #: Whether the last `wait` saw the log written.
        self.written = False

    def wait(self, timeout: float) -> bool:
        """Wait up to `timeout` s for a write of the log; True if there was one (since the last call)."""
        self.written = False
        if self._fd < 0:
            time.sleep(timeout)
            return False
        if not self._watching:  # the log appears with the first writer; a checkpoint may remove it
            self._watching = self._libc.inotify_add_watch(self._fd, self._path, self._IN_MODIFY) >= 0
        if not self._watching:  # look for the log again soon: the next commit creates it
            time.sleep(min(timeout, self.MISSING_RETRY))
            return False
        if fdselect.select([self._fd], [], [], timeout)[0]:
            try:
                events = os.read(self._fd, 4096)
            except BlockingIOError:
                return False
            for offset in range(0, len(events) - 15, 16):  # a file's events carry no name: 16 bytes
                (mask,) = struct.unpack_from("I", events, offset + 4)
                if mask & self._IN_IGNORED:  # the file was removed: watch it again when it is back
                    self._watching = False
                self.written = self.written or bool(mask & self._IN_MODIFY)
        return self.written

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _libc() -> Any:
    """The C library with inotify, or None (not Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.inotify_init1, libc.inotify_add_watch  # noqa: B018
    except (OSError, AttributeError):
        return None
    return libc


def _open_lock(path: str) -> Any:
    """The wake-up lock file, or None when it cannot be opened (a read-only directory): then
    every ready worker wakes on each change, as without an election, and none is lost."""
    try:
        return open(path, "a+b")  # held for the waker thread's life
    except OSError as exc:
        log.warning("wake-up lock file %s unavailable (%s): every idle worker wakes on a change", path, exc)
        return None


def _try_flock(file: Any) -> bool:
    try:
        fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True
