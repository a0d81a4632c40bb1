"""`Database`: one engine plus the backend that knows its SQL dialect's specifics.

Write transactions on SQLite start with `BEGIN IMMEDIATE` (a second writer waits for
the lock instead of failing half-way); read-only transactions use a plain `BEGIN`.
PostgreSQL reads run each statement alone (`read`), writes in transactions.
PostgreSQL sessions carry `SessionLimits` and TCP keepalives (see `postgres.py`).
Connection failures, and timeouts of those limits, surface as `DatabaseUnavailable`,
a retryable error; a checkout that times out waiting for a pooled connection is also
counted (`pool_timeouts`, for the alert).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any, TypeVar

from sqlalchemy import Connection, Select, create_engine, exc
from sqlalchemy.engine import Engine
from sqlalchemy.pool import PoolProxiedConnection
from sqlalchemy.sql.elements import ColumnElement

from ledgerflow.db.backends import (
    POOL_RECYCLE_SECONDS,
    Backend,
    SessionLimits,
    backend_for,
    dumps,
    loads,
)
from ledgerflow.errors import DatabaseUnavailable

T = TypeVar("T")


def is_transient(error: BaseException) -> bool:
    """True for errors that mean 'the database is unreachable or busy', not 'bad SQL'."""
    if isinstance(error, DatabaseUnavailable):
        return True
    if isinstance(error, exc.DBAPIError):
        if error.connection_invalidated:
            return True
        text = str(error.orig).lower() if error.orig is not None else ""
        if type(error.orig).__module__.startswith("sqlite3"):
            # SQLite reports bad SQL as OperationalError too: only lock/IO problems are transient
            return any(s in text for s in ("locked", "busy", "unable to open", "disk i/o"))
        if isinstance(error, exc.OperationalError | exc.InterfaceError):
            return True
        return any(s in text for s in ("terminating connection", "server closed", "connection"))
    return isinstance(error, exc.TimeoutError | ConnectionError | OSError)


class Database:
    """A connection pool to one ledgerflow database (SQLite file or PostgreSQL)."""

    def __init__(
        self,
        url: str,
        *,
        sqlite_synchronous: str = "NORMAL",
        busy_timeout: float = 30.0,
        connect_timeout: float = 5.0,
        pool_size: int = 5,
        limits: SessionLimits = SessionLimits(),
        pool_timeout: float = 30.0,
    ) -> None:
        self.url = url
        self.backend: Backend = backend_for(url)
        self.engine: Engine = self.backend.create_engine(
            url,
            create_engine,
            json_serializer=dumps,
            json_deserializer=loads,
            sqlite_synchronous=sqlite_synchronous,
            busy_timeout=busy_timeout,
            connect_timeout=connect_timeout,
            pool_size=pool_size,
            limits=limits,
            pool_timeout=pool_timeout,
        )
        #: Checkouts that waited `pool_timeout` for a pooled connection and gave up (pool exhausted).
        self.pool_timeouts = 0
        self._sqlite_single = SQLiteSingle(self, busy_timeout) if self.is_sqlite else None
        self._postgres_single = None if self.is_sqlite else PostgresSingle(self)
        if self._postgres_single is not None:  # its engine's pool is a `postgres.LendingQueuePool`
            self.engine.pool.lend = self._postgres_single.lend  # type: ignore[attr-defined]
        _LIVE.add(self)

    @property
    def is_sqlite(self) -> bool:
        return self.backend.name == "sqlite"

    def now(self) -> ColumnElement[Any]:
        """The database clock as a SQL expression (leases are judged by it)."""
        return self.backend.now()

    def after(self, seconds: float) -> ColumnElement[Any]:
        """`now() + seconds` on the database clock."""
        return self.backend.after(seconds)

    @contextlib.contextmanager
    def begin(self) -> Iterator[Connection]:
        """A write transaction (committed on success, rolled back on error)."""
        with self._translate(), self.engine.begin() as conn:
            yield conn

    @contextlib.contextmanager
    def read(self, *, transaction: bool = False) -> Iterator[Connection]:
        """Reads. SQLite: one read transaction (one snapshot, no write lock). PostgreSQL: each
        statement runs alone (autocommit), so no transaction stays open between statements: a
        reader the host pauses (garbage collection, a starved CPU) is never ended by
        `idle_in_transaction_session_timeout`, and holds no snapshot. Its statements see what
        they would see in a READ COMMITTED transaction (a snapshot each). `transaction`: one
        PostgreSQL transaction too, for `lift_limits` and `stream`."""
        if transaction or self.is_sqlite:
            with (
                self._translate(),
                self.engine.connect().execution_options(ledgerflow_readonly=True) as conn,
                conn.begin(),
            ):
                yield conn
        else:
            with self.autocommit() as conn:
                yield conn

    def lift_limits(self, conn: Connection, *, lock_wait: bool = False, idle: bool = False) -> None:
        """Let the rest of this transaction run statements of any length (bulk work), with
        `lock_wait` also wait for locks as long as it takes (migrations), and with `idle` stay
        idle between statements as long as it takes (a stream read as fast as its consumer)."""
        _need_transaction(conn, "lift_limits")
        self.backend.lift_limits(conn, lock_wait=lock_wait, idle=idle)

    @contextlib.contextmanager
    def stream(
        self, conn: Connection, query: Select[Any], size: int = 5000
    ) -> Iterator[Iterator[Sequence[Any]]]:
        """`query`'s rows read as the consumer goes (memory flat), fetched `size` at a time;
        the statement ends on leaving, however far the rows were read. The rows are the
        driver's values (no SQLAlchemy result processing: SQLite gives a date as its ISO text
        and a boolean as 0 or 1): select plain columns only."""
        _need_transaction(conn, "stream")
        with self.backend.stream(conn, query, size) as rows:
            yield rows

    def run(self, fn: Callable[[Connection], T]) -> T:
        """Run `fn` in one write transaction and return its result.

        A pooled connection found dead (the server restarted) before anything was
        committed is replaced and `fn` runs once more; a failure during COMMIT is never
        retried, since the transaction may have committed.
        """
        for attempt in (1, 2):
            with self._translate(), self.engine.connect() as conn:
                try:
                    transaction = conn.begin()
                    result = fn(conn)
                except exc.DBAPIError as error:
                    with contextlib.suppress(Exception):
                        conn.rollback()
                    if attempt == 1 and error.connection_invalidated:
                        continue
                    raise
                except BaseException:
                    with contextlib.suppress(Exception):
                        conn.rollback()
                    raise
                transaction.commit()
                return result
        raise AssertionError("unreachable")

    def run_single(self, fn: Callable[[Connection], T]) -> T:
        """Run one self-contained statement in autocommit mode: one round trip on PostgreSQL,
        and no transaction left open if the network goes between BEGIN and COMMIT. On SQLite
        (no round trips to save) it is an ordinary write transaction."""
        if self.is_sqlite:
            return self.run(fn)
        with self.autocommit() as conn:
            return fn(conn)

    @contextlib.contextmanager
    def autocommit(self) -> Iterator[Connection]:
        """A connection on which each statement commits alone (PostgreSQL: one round trip, no
        BEGIN or COMMIT). Only for a single self-contained statement; on SQLite, whose
        writers need `BEGIN IMMEDIATE`, use `begin()` or `run_single()`."""
        with (
            self._translate(),
            self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn,
        ):
            yield conn

    def single(self) -> AbstractContextManager[PoolProxiedConnection | sqlite3.Connection]:
        """A driver connection (no SQLAlchemy `Connection` and isolation switch around it: 30-35
        us of a one-call enqueue's CPU) on which each statement commits alone: PostgreSQL
        autocommit (one round trip), SQLite an implicit transaction (the statement takes the
        write lock itself and waits `busy_timeout` for it, as `BEGIN IMMEDIATE` does). For one
        self-contained statement run with the driver's own API (`Backend.insert_job`).

        PostgreSQL keeps one pooled connection checked out for these statements, used by one
        thread at a time; a thread that finds it in use gets another from the pool
        (`PostgresSingle`). SQLite keeps one connection of its own, used by one thread at a time
        (`SQLiteSingle`)."""
        if self._sqlite_single is not None:
            return self._sqlite_single
        assert self._postgres_single is not None
        return self._postgres_single if self._postgres_single.take() else self._pooled_single()

    @contextlib.contextmanager
    def _pooled_single(self) -> Iterator[PoolProxiedConnection]:
        with self._translate():
            pooled = self.engine.raw_connection()
            driver = pooled.driver_connection
            try:
                self.backend.autocommit(driver, True)
                yield pooled
            finally:
                try:
                    if pooled.is_valid:
                        self.backend.autocommit(driver, False)
                finally:
                    pooled.close()

    def ping(self) -> None:
        """Raise `DatabaseUnavailable` unless the database answers a trivial query."""
        with self.read() as conn:
            conn.exec_driver_sql("SELECT 1")

    def after_fork(self) -> None:
        """Run in a process just forked from this one's (every live `Database`, by an
        `os.register_at_fork` hook): the pooled connections and the one-call connections are
        the parent's sessions (or SQLite's connections, which must not cross a fork). They are
        kept referenced, never used nor closed here, and this process opens its own: two
        processes on one PostgreSQL socket would interleave their messages."""
        _INHERITED.append(self.engine.pool)
        self.engine.dispose(close=False)  # a new, empty pool; the inherited one left alone
        if self._sqlite_single is not None:
            self._sqlite_single._after_fork()
        if self._postgres_single is not None:
            self._postgres_single.after_fork()

    def dispose(self) -> None:
        if self._sqlite_single is not None:
            self._sqlite_single.close()
        if self._postgres_single is not None:
            self._postgres_single.close()
        self.engine.dispose()

    @contextlib.contextmanager
    def _translate(self) -> Iterator[None]:
        try:
            yield
        except Exception as error:
            self.raise_translated(error)
            raise

    def translated(self, error: Exception) -> Exception:
        """`error` as callers see it: `DatabaseUnavailable` when it is transient, else itself."""
        if isinstance(error, DatabaseUnavailable):
            return error
        if isinstance(error, exc.TimeoutError):
            self.pool_timeouts += 1
        if is_transient(error) and not isinstance(error, exc.IntegrityError):
            return DatabaseUnavailable(f"database unavailable ({self.backend.name}): {_first_line(error)}")
        return error

    def raise_translated(self, error: BaseException | None) -> None:
        """Raise `error`'s translation (`translated`) from it when it differs; else return."""
        if isinstance(error, Exception):
            translated = self.translated(error)
            if translated is not error:
                raise translated from error


#: What a forked process inherited (the pool, the one-call connections): kept referenced, so
#: never closed in it (closing a SQLite connection would release the locks the process holds on
#: the same file; closing a PostgreSQL one would end the parent's session).
_INHERITED: list[object] = []


class _KeptConnection:
    """What `SQLiteSingle` and `PostgresSingle` share: a connection kept for one-call statements,
    used by one thread at a time under `_lock`. `__enter__` readies the connection (`_ready`)
    for the thread holding the lock, `__exit__` checks it after use (`_after_use`); the lock is
    released on the way out of either when the statement is over or failed, and the error
    raised as the database translates it (`Database.raise_translated`)."""

    _db: Database
    _lock: threading.Lock

    def _acquire(self) -> None:
        """Take `_lock` for the calling thread (PostgreSQL: taken already, by `take`)."""

    def _ready(self) -> Any:
        raise NotImplementedError

    def _after_use(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Any:
        self._acquire()
        try:
            return self._ready()
        except BaseException as error:
            self._lock.release()
            self._db.raise_translated(error)
            raise

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: Any) -> None:
        try:
            self._after_use()
        finally:
            self._lock.release()
        self._db.raise_translated(error)


class SQLiteSingle(_KeptConnection):
    """SQLite's connection for one-call statements (`Database.single`): taken from the pool
    once and kept out of it, used by one thread at a time, as SQLite lets one writer write at
    a time anyway. No pool check-out and check-in per statement (5-7 us of a one-call
    enqueue), and its page cache stays warm from one enqueue to the next. A thread waits up
    to `busy_timeout` for another of this process to finish with it, then up to `busy_timeout`
    for the database's write lock, as any writer does. A process forked from this one opens
    its own (a SQLite connection must not cross a fork)."""

    def __init__(self, db: Database, busy_timeout: float) -> None:
        self._db = db
        self._busy_timeout = busy_timeout
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._conn: sqlite3.Connection | None = None

    def __enter__(self) -> sqlite3.Connection:
        return super().__enter__()  # type: ignore[no-any-return]

    def _acquire(self) -> None:
        self._after_fork()
        if not self._lock.acquire(timeout=self._busy_timeout):
            raise DatabaseUnavailable(
                f"database unavailable (sqlite): other one-call statements of this process held "
                f"its connection for {self._busy_timeout:g} s"
            )

    def _ready(self) -> sqlite3.Connection:
        conn = self._conn
        if conn is None:
            pooled = self._db.engine.raw_connection()  # set up as the pool's are (`connect` event)
            conn = pooled.driver_connection
            assert isinstance(conn, sqlite3.Connection)
            pooled.detach()  # ours until `close`: the pool neither counts nor resets it
            self._conn = conn
        return conn

    def _after_use(self) -> None:
        conn = self._conn
        if conn is not None and conn.in_transaction:
            self._forget(conn)  # never hand out a connection left in a transaction (its lock held)

    def close(self) -> None:
        """Close the connection (`Database.dispose`); the next statement opens another."""
        self._after_fork()
        with self._lock:
            if self._conn is not None:
                self._forget(self._conn)

    def _after_fork(self) -> None:
        """In a process forked from the one that made this, start afresh: the parent's connection
        is never used nor closed here, and its lock (which a thread of the parent may have held
        at the fork, never to release it here) is replaced."""
        if self._pid != os.getpid():
            _INHERITED.append(self._conn)
            self._lock, self._pid, self._conn = threading.Lock(), os.getpid(), None

    def _forget(self, conn: sqlite3.Connection) -> None:
        self._conn = None
        with contextlib.suppress(Exception):
            conn.close()


class PostgresSingle(_KeptConnection):
    """PostgreSQL's connection for one-call statements (`Database.single`): one pooled connection
    kept checked out (the pool counts it against its size) in autocommit, so a one-call enqueue
    pays no check-out and check-in, no autocommit switch and back, no rollback on return
    (~20 us of its client CPU). Used by one thread at a time: `take` succeeds only when no other
    thread of this process holds it (the caller then enters it); otherwise the caller takes a
    pooled connection as before, so concurrent enqueuers of one process do not wait for each
    other. A connection an error left broken, closed or in a transaction is given back to
    the pool (which invalidates or resets it) and the next statement takes another; so is one
    kept longer than the pool's `pool_recycle`, or older than the pool's last invalidation (the
    pool then replaces it, as it does its own). A process forked from this one takes its own
    (the parent's is never used nor closed there: `Database.after_fork`)."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._lock = threading.Lock()
        self._held: PoolProxiedConnection | None = None
        self._taken_at = 0.0  # time.monotonic() when `_held` was taken from the pool

    def take(self) -> bool:
        """Reserve the connection for the calling thread (then `with` it); False if in use."""
        return self._lock.acquire(blocking=False)

    def __enter__(self) -> PoolProxiedConnection:
        return super().__enter__()  # type: ignore[no-any-return]

    def _ready(self) -> PoolProxiedConnection:
        held = self._held
        if held is not None and self._stale(held):
            self._give_back()  # the pool replaces it, as it would at a check-out
            held = None
        if held is None:
            held = self._db.engine.raw_connection()
            self._taken_at = time.monotonic()
            try:
                self._db.backend.autocommit(held.driver_connection, True)
            except BaseException:
                held.close()
                raise
            self._held = held
        return held

    def _after_use(self) -> None:
        held = self._held
        if held is not None and not _idle_autocommit(held):
            self._give_back()

    def close(self) -> None:
        """Give the connection back to the pool (`Database.dispose`); the next statement takes one."""
        with self._lock:
            self._give_back()

    def lend(self) -> None:
        """Give the connection back to the pool if no thread uses it (`LendingQueuePool`, when
        exhausted; never waits); the next statement takes one again."""
        if self._lock.acquire(blocking=False):
            try:
                self._give_back()
            finally:
                self._lock.release()

    def after_fork(self) -> None:
        """In a process just forked from this one's (`Database.after_fork`): the parent's
        connection is kept referenced, never used nor closed here (closing it would end the
        parent's session), and the lock (which a thread of the parent may have held at the
        fork, never to release it here) is replaced."""
        _INHERITED.append(self._held)
        self._lock, self._held = threading.Lock(), None

    def _stale(self, held: PoolProxiedConnection) -> bool:
        """Whether the pool would no longer hand `held` out: kept longer than `pool_recycle`,
        made before the pool's last invalidation (a disconnect any statement of this process
        met: after a server restart the pool replaces every older connection, and so the kept
        one is not tried, dead, by the next enqueue), or of a pool since replaced."""
        pool = self._db.engine.pool
        record = held._connection_record
        return (
            time.monotonic() - self._taken_at > POOL_RECYCLE_SECONDS
            or record is None
            or held._pool is not pool
            or record.starttime < pool._invalidate_time
        )

    def _give_back(self) -> None:
        """Back to the pool in transactions if it is as kept, else invalidated (the pool
        replaces it): never a connection left in a transaction or half-way through a statement."""
        held, self._held = self._held, None
        if held is None:
            return
        with contextlib.suppress(Exception):
            if _idle_autocommit(held):
                self._db.backend.autocommit(held.driver_connection, False)
            elif held.is_valid:
                held.invalidate()
        with contextlib.suppress(Exception):
            held.close()


def _idle_autocommit(pooled: PoolProxiedConnection) -> bool:
    """Whether a pooled psycopg connection is usable as `PostgresSingle` keeps it: valid, open,
    in autocommit and outside any transaction."""
    driver = pooled.driver_connection
    if not pooled.is_valid or driver is None or driver.closed or getattr(driver, "broken", False):  # 3.2+
        return False
    return bool(driver.autocommit and driver.pgconn.transaction_status == 0)  # 0: TransactionStatus.IDLE


def _need_transaction(conn: Connection, what: str) -> None:
    """Refuse `what` on an autocommit connection, where it would last one statement only."""
    if conn.get_execution_options().get("isolation_level") == "AUTOCOMMIT":
        raise ValueError(f"{what} needs a transaction: use db.begin() or db.read(transaction=True)")


def _first_line(error: BaseException) -> str:
    orig = getattr(error, "orig", None) or error
    text = str(orig).strip().splitlines()
    return text[0] if text else type(orig).__name__


#: Every `Database` of this process, for `after_fork`.
_LIVE: weakref.WeakSet[Database] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    """`Database.after_fork` of every live database, in the child of an `os.fork` (while it
    has one thread: no enqueue of its can meet the parent's connections first)."""
    for db in list(_LIVE):
        db.after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)
