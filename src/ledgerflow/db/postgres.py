"""PostgreSQL specifics: psycopg 3, `FOR UPDATE SKIP LOCKED` claims, `LISTEN/NOTIFY` wake-ups.

A statement-level trigger (see the first migration) sends `NOTIFY ledgerflow_jobs, '<queue>'`
when jobs become available, so idle workers start them within milliseconds.

Every connection (pooled or LISTEN) notices a dead network within seconds: TCP keepalives
probe an idle connection, and `tcp_user_timeout` ends one whose sent data stays
unacknowledged (without it, a statement sent during a partition waits for the kernel's
retransmissions, which back off to minutes). Every session starts with `SessionLimits`
(statement, lock and idle-in-transaction timeouts) in its startup `options`: no extra
round trip. Values given in the database URL's query win over these defaults.
"""

from __future__ import annotations

import contextlib
import inspect
import itertools
import math
import threading
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from sqlalchemy import Connection, Interval, Select, exc, func, literal, make_url
from sqlalchemy.engine import Engine
from sqlalchemy.pool import PoolProxiedConnection
from sqlalchemy.sql.elements import ColumnElement

from ledgerflow.db.backends import (
    BULK_JOB_COLUMNS,
    ONE_JOB_COLUMNS,
    AnyConnection,
    Election,
    SessionLimits,
    StoppableThread,
    cursor_stream,
    driver_of,
)
from ledgerflow.db.types import UTCDateTime


def chunked_rows(libpq: int, stream: Callable[..., Any]) -> bool:
    """Whether `Cursor.stream` reads in chunks: libpq 17 brought chunked rows
    (`PQsetChunkedRowsMode`), psycopg 3.2 the `size` argument that uses them (psycopg 3.1, which
    the dependencies allow, has no `size`, even over a libpq 17)."""
    return libpq >= 170000 and "size" in inspect.signature(stream).parameters


CHUNKED_ROWS = chunked_rows(psycopg.pq.version(), psycopg.Cursor.stream)
CHANNEL = "ledgerflow_jobs"
#: First key of the session advisory locks that elect which worker a NOTIFY wakes.
WAKE_LOCK = 72_771_014
_JSON = {"args", "kwargs", "errors"}

#: libpq parameters set on every connection unless the database URL gives its own.
NETWORK_DEFAULTS: dict[str, int] = {
    "keepalives": 1,
    "keepalives_idle": 5,  # seconds of silence before the first probe
    "keepalives_interval": 2,  # seconds between probes
    "keepalives_count": 3,  # unanswered probes before the connection is dead
    "tcp_user_timeout": 5000,  # milliseconds sent data may stay unacknowledged
}


def connect_args(url: str, connect_timeout: float, limits: SessionLimits) -> dict[str, Any]:
    """psycopg connection parameters: the network defaults and the session limits, under the URL's own."""
    given = make_url(url).query
    args: dict[str, Any] = {k: v for k, v in NETWORK_DEFAULTS.items() if k not in given}
    args["connect_timeout"] = max(2, int(connect_timeout))
    settings = {
        "statement_timeout": limits.statement_timeout,
        "lock_timeout": limits.lock_timeout,
        "idle_in_transaction_session_timeout": limits.idle_in_transaction_timeout,
    }
    options = " ".join(f"-c {name}={_milliseconds(seconds)}" for name, seconds in settings.items())
    # No JIT: the claim's plan is costed as a walk of the whole backlog (its LIMIT is met
    # early), so past a few thousand jobs PostgreSQL compiled it on every call: 56 ms of
    # JIT for a 1 ms statement. Our statements are short; JIT never pays for them.
    options += " -c jit=off"
    own = given.get("options")
    if own:  # the URL's options come last, so its settings win
        options += " " + (own if isinstance(own, str) else " ".join(own))
    args["options"] = options
    return args


_INSERT_ONE = (
    f"INSERT INTO jobs ({', '.join(ONE_JOB_COLUMNS)}, created_at, errors, has_dependencies) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, now(), '[]', false) RETURNING id, created_at"
)


#: Lifts the statement timeout for the rest of the transaction (`lift_limits`).
_NO_STATEMENT_TIMEOUT = "set_config('statement_timeout', '0', true)"
#: A bulk insert's first round trip, two statements (the second runs without a timeout):
#: `%d` ids and the transaction's time. The sequence is looked up once (an InitPlan giving a
#: regclass); `nextval` of its name's text looks it up per row (5,000 ids: 32-64 ms, not 1.5).
_DRAW_IDS = (
    f"SELECT {_NO_STATEMENT_TIMEOUT}; "
    "SELECT array_agg(nextval((SELECT pg_get_serial_sequence('jobs', 'id')::regclass))), now() "
    "FROM generate_series(1, %d)"
)


def copy_text(ids: list[int], rows: list[tuple[Any, ...]], now: datetime, chunk: int = 2000) -> Iterator[str]:
    """COPY's text format of the bulk insert's rows (`id`, the `BULK_JOB_COLUMNS`, `created_at`
    = `now`, `errors` = `[]`, `has_dependencies` = false), `chunk` rows per piece.

    Jobs of one task and options differ only by id and payload: the cells around the payload
    are formatted once per kind of job (`psycopg`'s `write_row` formats every cell of every row:
    2.8 against 0.6 µs of client CPU per row). The payload is checked JSON text, whose encoder
    escapes every control character: only its backslashes need COPY's escape. Integers are
    written as `int`'s text: a subclass may print itself otherwise (the one-call binds the number)."""
    around: dict[tuple[Any, ...], tuple[str, str]] = {}
    created = now.isoformat()
    lines: list[str] = []
    for job_id, row in zip(ids, rows, strict=True):
        task, queue, priority, state, args, kwargs, max_attempts, timeout, when = row
        kind = (task, queue, priority, state, max_attempts, timeout, when)
        cells = around.get(kind)
        if cells is None:
            cells = around[kind] = (
                f"\t{_copy_cell(task)}\t{_copy_cell(queue)}\t{int(priority)}\t{_copy_cell(state)}\t",
                f"\t{int(max_attempts)}\t{_float_text(timeout)}\t{when.isoformat()}\t{created}\t[]\tf\n",
            )
        if "\\" in args:
            args = args.replace("\\", "\\\\")
        if "\\" in kwargs:
            kwargs = kwargs.replace("\\", "\\\\")
        lines.append(f"{job_id}{cells[0]}{args}\t{kwargs}{cells[1]}")
        if len(lines) == chunk:
            yield "".join(lines)
            lines.clear()
    if lines:
        yield "".join(lines)


def _copy_cell(text: str) -> str:
    """A text cell in COPY's text format."""
    return text.translate(_COPY_ESCAPES)


_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _float_text(value: float) -> str:
    """A float8 cell (PostgreSQL's spelling of the infinities and NaN, as psycopg writes them)."""
    if math.isfinite(value):
        return repr(float(value))
    return "NaN" if value != value else ("Infinity" if value > 0 else "-Infinity")


def _milliseconds(seconds: float) -> int:
    """A PostgreSQL timeout in ms; a positive value never rounds down to 0 (which means 'off')."""
    return max(1, round(seconds * 1000)) if seconds > 0 else 0


def conninfo(engine: Engine) -> str:
    """A libpq URI for a raw psycopg connection to the engine's database."""
    return engine.url.set(drivername="postgresql").render_as_string(hide_password=False)


def driver_error(conn: AnyConnection, statement: str, error: psycopg.Error) -> exc.DBAPIError:
    """Turn an error raised on the raw psycopg connection (COPY) into SQLAlchemy's form,
    invalidating a broken connection so the pool never hands it out again."""
    raw = driver_of(conn)
    broken = bool(getattr(raw, "closed", False) or getattr(raw, "broken", False))
    if broken and isinstance(conn, Connection | PoolProxiedConnection):
        conn.invalidate()
    kind = exc.OperationalError if isinstance(error, psycopg.OperationalError) else exc.DatabaseError
    return kind(statement, None, error, connection_invalidated=broken)  # type: ignore[arg-type]


class PostgresBackend:
    name = "postgresql"

    def __init__(self) -> None:
        self._connect_args: dict[str, Any] = {}

    def create_engine(self, url: str, factory: Callable[..., Engine], **options: Any) -> Engine:
        self._connect_args = connect_args(url, options["connect_timeout"], options["limits"])
        return factory(
            url,
            connect_args=self._connect_args,
            json_serializer=options["json_serializer"],
            json_deserializer=options["json_deserializer"],
            pool_size=options["pool_size"],
            max_overflow=10,
            pool_timeout=options["pool_timeout"],
            pool_recycle=1800,
        )

    def now(self) -> ColumnElement[Any]:
        return func.now(type_=UTCDateTime)

    def after(self, seconds: float) -> ColumnElement[Any]:
        return func.now(type_=UTCDateTime) + literal(timedelta(seconds=seconds), Interval())

    def skip_locked(self, query: Select[Any]) -> Select[Any]:
        return query.with_for_update(skip_locked=True)

    def lift_limits(self, conn: Connection, *, lock_wait: bool, idle: bool = False) -> None:
        conn.exec_driver_sql(
            f"SELECT {_NO_STATEMENT_TIMEOUT}"
            + (", set_config('lock_timeout', '0', true)" if lock_wait else "")
            + (", set_config('idle_in_transaction_session_timeout', '0', true)" if idle else "")
        )

    def autocommit(self, driver: psycopg.Connection[Any], on: bool) -> None:
        """Each statement commits alone (`on`), or back to transactions for the pool."""
        if on and driver.pgconn.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            driver.rollback()  # never commit what a previous holder left open
        driver.autocommit = on

    def insert_jobs(self, conn: Connection, rows: list[tuple[Any, ...]]) -> list[int]:
        """Many jobs through COPY, with ids drawn from the sequence first (so they come back in order).

        One round trip lifts the statement timeout for the rest of the transaction (bulk work)
        and draws the ids as one array; COPY fires the statement-level NOTIFY trigger like an
        INSERT does.
        """
        columns = ", ".join(("id", *BULK_JOB_COLUMNS, "created_at", "errors", "has_dependencies"))
        try:
            with driver_of(conn).cursor() as cursor:
                cursor.execute(_DRAW_IDS % len(rows), prepare=False)  # two statements: never prepared
                cursor.nextset()
                drawn = cursor.fetchone()
                assert drawn is not None
                ids: list[int] = drawn[0]
                now = drawn[1]
                with cursor.copy(f"COPY jobs ({columns}) FROM STDIN") as copy:
                    for text in copy_text(ids, rows, now):
                        copy.write(text)
        except psycopg.Error as error:
            raise driver_error(conn, "COPY jobs", error) from error
        return ids

    def insert_job(self, conn: AnyConnection, values: tuple[Any, ...], now: datetime) -> tuple[int, datetime]:
        """One plain job (no unique key, dependencies or schedule; `ONE_JOB_COLUMNS` values) in
        one statement on the driver's connection, without SQLAlchemy's per-statement work
        (psycopg prepares it on its fifth use); returns its id and `created_at` (the
        transaction's `now()`, the database clock: the caller's `now` is not used)."""
        try:
            found = driver_of(conn).execute(_INSERT_ONE, values).fetchone()
        except psycopg.Error as error:
            raise driver_error(conn, _INSERT_ONE, error) from error
        assert found is not None
        return int(found[0]), found[1].astimezone(UTC)

    def waker(self, engine: Engine, poll_seconds: float) -> ListenWaker:
        return ListenWaker(conninfo(engine), self._connect_args)

    @contextlib.contextmanager
    def stream(self, conn: Connection, query: Select[Any], size: int) -> Iterator[Iterator[Sequence[Any]]]:
        """`query`'s rows in chunks of `size`, as psycopg loads them: no SQLAlchemy result
        processing, so for columns whose Python value is the driver's (text, numbers, dates).

        One statement whose rows the server sends while the client works on the previous chunk
        (libpq ≥ 17 chunked rows), where a server-side cursor waits a round trip per FETCH and
        the server idles meanwhile: half the wall time of a 1M-line export. The statement passes
        through the engine's cursor events like any other (tracing, the fault tests). Leaving
        before the last row cancels the statement, inside a savepoint so that the transaction
        carries on. An older libpq reads through a server-side cursor.
        """
        if not CHUNKED_ROWS:
            with cursor_stream(conn, query, size) as rows:
                yield rows
            return
        compiled = query.compile(dialect=conn.dialect, compile_kwargs={"render_postcompile": True})
        sql, params = str(compiled), compiled.params
        savepoint = conn.begin_nested()
        raw: psycopg.Connection[Any] = conn.connection.driver_connection  # type: ignore[assignment]
        cursor = raw.cursor()
        rows = cursor.stream(sql, params, size=size)
        try:
            conn.dispatch.before_cursor_execute(conn, cursor, sql, params, None, False)
            first = next(rows, None)  # sends the statement and waits for the first chunk
            conn.dispatch.after_cursor_execute(conn, cursor, sql, params, None, False)
            yield itertools.chain(() if first is None else (first,), rows)
        except psycopg.Error as error:
            raise driver_error(conn, sql, error) from error
        finally:
            rows.close()  # left early: cancels the statement and drains what was sent
            cursor.close()
            status = raw.info.transaction_status
            if status == psycopg.pq.TransactionStatus.INTRANS:
                savepoint.commit()
            elif status == psycopg.pq.TransactionStatus.INERROR:
                savepoint.rollback()  # a broken connection is left to the transaction's owner


class ListenWaker:
    """LISTENs on a dedicated autocommit connection; reconnects (and re-LISTENs) with backoff.

    With an `Election`, a NOTIFY for queue q wakes only the ready worker holding the session
    advisory lock `(WAKE_LOCK, key(q))` of its group: the first ready one to take it keeps
    it while it stays ready, so one NOTIFY costs one claim, not one per worker. A leader that
    becomes busy unlocks and re-sends the NOTIFY for the next ready worker; a leader that dies
    loses the lock with its session, and every worker still claims once per poll interval.
    """

    #: How often the listener looks at its worker's readiness between notifications (s).
    TICK = 0.02

    def __init__(self, dsn: str, connect_args: dict[str, Any]) -> None:
        self._dsn = dsn
        self._connect_args = connect_args
        self._thread: StoppableThread | None = None
        self._ready = False

    def ready(self, ready: bool) -> None:
        self._ready = ready

    def start(self, callback: Callable[[str | None], None], election: Election | None = None) -> None:
        def on_note(conn: psycopg.Connection[Any], held: set[str], queue: str) -> None:
            if election is None:
                callback(queue)
            elif queue not in election.queues:
                return  # another group's queue: claiming would find nothing of ours
            elif not self._ready or queue in held:
                callback(queue)
            else:
                lock = (WAKE_LOCK, election.key(queue))
                row = conn.execute("SELECT pg_try_advisory_lock(%s, %s)", lock).fetchone()
                if row and row[0]:
                    held.add(queue)
                    callback(queue)

        def hand_over(conn: psycopg.Connection[Any], held: set[str]) -> None:
            assert election is not None
            for queue in sorted(held):
                conn.execute(
                    "SELECT pg_advisory_unlock(%s, %s), pg_notify(%s, %s)",
                    (WAKE_LOCK, election.key(queue), CHANNEL, queue),
                )
            held.clear()

        def loop(stop: threading.Event) -> None:
            backoff = 0.1
            while not stop.is_set():
                held: set[str] = set()  # queues whose wake lock this session holds
                try:
                    with psycopg.connect(self._dsn, autocommit=True, **self._connect_args) as conn:
                        conn.execute(f"LISTEN {CHANNEL}")
                        callback(None)  # catch up on anything sent while disconnected
                        backoff = 0.1
                        while not stop.is_set():
                            # collected first: the generator holds the connection's lock
                            notes = list(conn.notifies(timeout=self.TICK if held else 0.5, stop_after=1))
                            for payload in dict.fromkeys(n.payload for n in notes):
                                on_note(conn, held, payload)
                            if held and not self._ready:
                                hand_over(conn, held)
                except psycopg.Error:
                    stop.wait(backoff)
                    backoff = min(backoff * 2, 5.0)

        self._thread = StoppableThread("ledgerflow-pg-listener", loop)
        self._thread.start()

    def stop(self) -> None:
        if self._thread:
            self._thread.stop()
