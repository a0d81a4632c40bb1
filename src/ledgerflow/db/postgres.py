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
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from sqlalchemy import (
    BigInteger,
    Connection,
    Interval,
    Select,
    Text,
    column,
    exc,
    func,
    literal,
    make_url,
    or_,
    select,
    table,
)
from sqlalchemy.engine import Dialect, Engine
from sqlalchemy.pool import PoolProxiedConnection
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ClauseElement, ColumnElement

from ledgerflow.db.backends import (
    BULK_JOB_COLUMNS,
    ONE_JOB_COLUMNS,
    POOL_RECYCLE_SECONDS,
    AnyConnection,
    Election,
    SessionLimits,
    StoppableThread,
    cursor_stream,
    driver_of,
    search_candidates,
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


#: The job search side tables (migration 0018): the JSON text of args and kwargs, and of
#: errors, per job, each with a GIN trigram index, filled up to `job_search_mark.indexed_to`.
job_search = table("job_search", column("id", BigInteger), column("body", Text))
job_error_search = table("job_error_search", column("id", BigInteger), column("body", Text))

#: The virtual transactions of every other session of this database (each transaction holds
#: a lock on its own virtual transaction id from its start to its end).
_OPEN_TRANSACTIONS = (
    "SELECT coalesce(array_agg(l.virtualxid), '{}') FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
    "WHERE l.locktype = 'virtualxid' AND l.granted AND l.pid <> pg_backend_pid() "
    "AND a.datname = current_database()"
)
_STILL_OPEN = (
    "SELECT coalesce(array_agg(virtualxid), '{}') FROM pg_locks "
    "WHERE locktype = 'virtualxid' AND granted AND virtualxid = ANY(%(waits)s)"
)
#: The id sequence's last value, and how many ids a session draws at once (its CACHE). It also
#: drops this transaction's snapshot of `pg_stat_activity` (kept to the transaction's end, so a
#: second read of the open transactions in one indexer transaction left out every session
#: connected since the first).
_LAST_ID = (
    "SELECT coalesce(pg_sequence_last_value(seqrelid), 0), seqcache, pg_stat_clear_snapshot() "
    "FROM pg_sequence WHERE seqrelid = pg_get_serial_sequence('jobs', 'id')::regclass"
)
#: Index the next jobs of a range (whose ids can no longer commit): their args and kwargs
#: text, and their errors when they have some (a restore); how many and the last id.
_INDEX_RANGE = (
    "WITH chunk AS (SELECT id, args, kwargs, errors FROM jobs WHERE id > %(mark)s AND id <= %(target)s "
    "ORDER BY id LIMIT %(chunk)s), "
    "texts AS (INSERT INTO job_search (id, body) SELECT id, args::text || E'\\n' || kwargs::text FROM chunk "
    "ON CONFLICT (id) DO NOTHING), "
    "errs AS (INSERT INTO job_error_search (id, body) SELECT id, errors::text FROM chunk "
    "WHERE errors <> '[]' ON CONFLICT (id) DO UPDATE SET body = excluded.body) "
    "SELECT count(*), max(id) FROM chunk"
)
#: Re-index the errors of the jobs noted as changed (the notes read, up to a chunk), then
#: forget those notes (a later change has a note of its own, kept); how many notes.
_INDEX_CHANGED = (
    "WITH noted AS (SELECT seq, id FROM job_search_dirty ORDER BY seq LIMIT %(chunk)s), "
    "errs AS (INSERT INTO job_error_search (id, body) SELECT id, errors::text FROM jobs "
    "WHERE id IN (SELECT id FROM noted) AND errors <> '[]' "
    "ON CONFLICT (id) DO UPDATE SET body = excluded.body) "
    "SELECT coalesce(array_agg(seq), '{}') FROM noted"
)


def text_candidates(
    id_column: ColumnElement[Any], patterns: Sequence[str], errors: bool
) -> ColumnElement[bool]:
    """`id_column IN (...)`: the jobs whose indexed text (args and kwargs, or `errors`) is
    `ILIKE` one of `patterns` (through the GIN trigram index), plus every job above the index
    mark (not indexed yet) and, for errors, every job whose errors changed since it was
    indexed. A superset: callers recheck the text on the job itself."""
    index = job_error_search if errors else job_search
    indexed = select(index.c.id).where(or_(*(index.c.body.ilike(p, escape="\\") for p in patterns)))
    return search_candidates(id_column, indexed, errors)


def search_pending(conn: Connection) -> bool:
    """Whether a job above the search index mark, or one whose errors changed, waits (the
    newest id, not EXISTS over `id >` the mark: planned before the mark is read, that scans)."""
    return bool(
        conn.exec_driver_sql(
            "SELECT coalesce((SELECT max(id) FROM jobs) > (SELECT indexed_to FROM job_search_mark), false) "
            "OR EXISTS (SELECT 1 FROM job_search_dirty)"
        ).scalar_one()
    )


def _next_target(conn: Connection, mark: int) -> tuple[int, list[str]]:
    """The sequence's last value, and the transactions to wait for before indexing up to it
    (read after it: every transaction that may hold an id at or below it, and not yet ended).

    The mark stays (no target) when the sequence has a CACHE above 1 (an operator's ALTER SEQUENCE):
    a session then hands out ids drawn earlier, below the last value, in transactions begun
    after it was read, which no wait can foresee; searches scan the jobs above the mark."""
    target, cache, _ = conn.exec_driver_sql(_LAST_ID).one()
    target = int(target)
    if target <= mark or cache > 1:
        return mark, []
    return target, list(conn.exec_driver_sql(_OPEN_TRANSACTIONS).scalar_one())


def _merge_pending(conn: Connection, *indexes: str) -> None:
    """Move the entries just added to GIN `indexes` from their pending list into the index, in
    bulk, here off the hot path: a search reads a pending list whole, and with autovacuum off
    nothing else would merge one before it fills (4 MB). Only an index's owner may (else, or
    without pg_trgm, the index is left to autovacuum)."""
    conn.exec_driver_sql(
        "SELECT gin_clean_pending_list(c.oid) FROM unnest(%(names)s::text[]) n "
        "JOIN pg_class c ON c.oid = to_regclass(n) WHERE pg_has_role(c.relowner, 'USAGE')",
        {"names": list(indexes)},
    )


def index_jobs(conn: Connection, chunk: int) -> int:
    """Index up to `chunk` jobs below a safe target and move the mark past them, then re-index
    the errors of up to `chunk` jobs whose errors changed; how many were indexed (0 when
    another session is indexing). Run in a READ COMMITTED transaction.

    Ids are drawn from the sequence in one order and committed in another, so the highest
    committed id is no mark: a transaction holding a lower id may commit later. The mark
    moves instead to a `target` read as the sequence's last value, once every transaction
    of this database open just after that read (`waits_for`) has ended: an id at or below
    the target was drawn before the read, by a transaction then open (so waited for) or
    already ended, so once they have all ended, each such id is committed (and seen by the
    next statement's snapshot) or never will be. The mark row's lock makes indexers take
    turns, so errors are indexed in the order they were read."""
    state = conn.exec_driver_sql(
        "SELECT indexed_to, target, waits_for FROM job_search_mark FOR UPDATE SKIP LOCKED"
    ).one_or_none()
    if state is None:
        return 0
    mark, target, waits = int(state[0]), int(state[1]), list(state[2])
    if waits:
        waits = list(conn.exec_driver_sql(_STILL_OPEN, {"waits": waits}).scalar_one())
    if mark >= target:
        target, waits = _next_target(conn, mark)
    done = 0
    if mark < target and not waits:
        count, top = conn.exec_driver_sql(
            _INDEX_RANGE, {"mark": mark, "target": target, "chunk": chunk}
        ).one()
        done = int(count)
        if done:
            _merge_pending(conn, "ix_job_search_body", "ix_job_error_search_body")
        mark = target if done < chunk else int(top)
        if mark >= target:  # the next pass may go on at once if what is open now has ended
            target, waits = _next_target(conn, mark)
    if (mark, target, waits) != (int(state[0]), int(state[1]), list(state[2])):
        conn.exec_driver_sql(
            "UPDATE job_search_mark SET indexed_to = %(mark)s, target = %(target)s, waits_for = %(waits)s",
            {"mark": mark, "target": target, "waits": waits},
        )
    noted = conn.exec_driver_sql(_INDEX_CHANGED, {"chunk": chunk}).scalar_one()
    if noted:
        conn.exec_driver_sql("DELETE FROM job_search_dirty WHERE seq = ANY(%(seqs)s)", {"seqs": list(noted)})
        _merge_pending(conn, "ix_job_error_search_body")
    return done + len(noted)


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


#: Key of the one-job insert's cursor in a pooled connection's `info` (kept for the driver
#: connection's life: the pool clears `info` when it replaces the connection).
_INSERT_CURSOR = "ledgerflow_insert_cursor"


def _insert_cursor(conn: AnyConnection) -> psycopg.Cursor[Any]:
    """The cursor kept for the one-job insert on `conn`'s driver connection (a new one if the
    connection has none yet, or the one kept was closed)."""
    driver: psycopg.Connection[Any] = driver_of(conn)
    info = conn.info if isinstance(conn, Connection | PoolProxiedConnection) else {}
    cursor: psycopg.Cursor[Any] | None = info.get(_INSERT_CURSOR)
    if cursor is None or cursor.closed or cursor.connection is not driver:
        cursor = info[_INSERT_CURSOR] = driver.cursor()
    return cursor


def conninfo(engine: Engine) -> str:
    """A libpq URI for a raw psycopg connection to the engine's database."""
    return engine.url.set(drivername="postgresql").render_as_string(hide_password=False)


def driver_error(
    conn: AnyConnection,
    statement: str,
    error: psycopg.Error,
    *,
    parameters: Any = None,
    cursor: Any = None,
    context: Any = None,
) -> exc.DBAPIError:
    """Turn an error raised on the driver's connection (driver claim, COPY, one-job insert,
    export stream) into SQLAlchemy's, as its own execute would: its class (IntegrityError,
    DataError…) and, on a disconnect, the whole pool marked stale (a server restart killed
    every pooled connection, not only this one) so none is handed out again. On a `Connection`
    SQLAlchemy's own handling runs (its `handle_error` listeners told) and raises."""
    if isinstance(conn, Connection):
        conn._handle_dbapi_exception(error, statement, parameters, cursor, context)  # type: ignore[arg-type]
    raw = driver_of(conn)
    broken = bool(getattr(raw, "closed", False) or getattr(raw, "broken", False))
    if broken and isinstance(conn, PoolProxiedConnection):
        pool = getattr(conn, "_pool", None)  # a pooled driver connection (`Database.single`)
        if pool is not None:
            pool._invalidate(conn, error)  # every connection older than now is replaced at checkout
        else:
            conn.invalidate(error)
    wrapped = exc.DBAPIError.instance(
        statement, parameters, error, psycopg.Error, connection_invalidated=broken
    )
    assert isinstance(wrapped, exc.DBAPIError)
    return wrapped


@dataclass(frozen=True)
class _Shape:
    """One rendering of a `DriverStatement`: for one length of each expanding parameter."""

    sql: str
    fixed: dict[str, Any]  # the statement's own values, bound once
    #: each caller parameter: its names in `sql` (several for an expanding one) and their processors
    given: dict[str, tuple[tuple[str, Callable[[Any], Any] | None], ...]]
    expanding: frozenset[str]


class _DriverContext:
    """What cursor-execute and `handle_error` listeners are given as the execution context of a
    statement sent on the driver (SQLAlchemy's is not built): one per execution, on which they
    may keep state (OpenTelemetry's instrumentation keeps its span as `context._otel_span`)."""

    executemany = False
    isddl = False
    compiled = None

    def __init__(self, conn: Connection, cursor: Any) -> None:
        self.root_connection = self.connection = conn
        self.dialect = conn.dialect
        self.cursor = cursor
        self.execution_options = conn.get_execution_options()

    def handle_dbapi_exception(self, error: BaseException) -> None:
        """SQLAlchemy's hook for a dialect on an error: nothing to do."""


class DriverStatement:
    """A Core statement run on the driver's connection with the very text and parameters
    SQLAlchemy would send: none of SQLAlchemy's per-execution work (cache key, expanding the
    `IN` lists, parameter processing set-up, result metadata), its type conversions applied as
    it would. The text is rendered by SQLAlchemy once per shape (the number of values of each
    expanding parameter, e.g. `queue IN (%(queues_1)s)` for one queue, which PostgreSQL plans
    as `queue = …`) and kept; psycopg prepares each on its fifth use per connection, as it does
    the statements SQLAlchemy sends. The statement is announced to the connection's
    cursor-execute listeners as SQLAlchemy announces its own (tracing, tests/faults.py)."""

    #: shapes kept (a worker has a few: its queue sets by the number of tasks)
    MAX_SHAPES = 64

    def __init__(
        self, statement: ClauseElement, dialect: Dialect, columns: Sequence[ColumnElement[Any]]
    ) -> None:
        compiled = statement.compile(dialect=dialect)
        assert isinstance(compiled, SQLCompiler)
        self._compiled = compiled
        self._expanding = tuple(
            name for name, bind in compiled.binds.items() if bind.expanding and bind.required
        )
        self._dialect = dialect
        self._types = [c.type.dialect_impl(dialect) for c in columns]
        self._results: list[Callable[[Any], Any] | None] | None = None  # by the first answer's types
        self._shapes: dict[tuple[int, ...], _Shape] = {}

    def shape(self, params: dict[str, Any]) -> _Shape:
        """The text and parameter layout SQLAlchemy renders for `params`' shape."""
        key = tuple(len(params[name]) for name in self._expanding)
        found = self._shapes.get(key)
        if found is not None:
            return found
        compiled = self._compiled
        state = compiled.construct_expanded_state(params)
        escaped = compiled.escaped_bind_names
        # each bound value processed by its type as SQLAlchemy does (e.g. `String` makes text
        # storable), the expanded ones by their element's
        processors: dict[str, Callable[[Any], Any]] = {}
        for name, bind in compiled.binds.items():
            process = bind.type.dialect_impl(self._dialect).bind_processor(self._dialect)
            if process is not None:
                processors[escaped.get(name, name)] = process
        processors.update(state.processors)
        given: dict[str, tuple[tuple[str, Callable[[Any], Any] | None], ...]] = {}
        for name in params:
            key_name = escaped.get(name, name)
            names = state.parameter_expansion.get(key_name, [key_name])
            given[name] = tuple((n, processors.get(n)) for n in names)
        taken = {n for names in given.values() for n, _ in names}
        fixed = {
            n: (processors[n](v) if n in processors else v)
            for n, v in state.parameters.items()
            if n not in taken
        }
        found = _Shape(state.statement, fixed, given, frozenset(self._expanding))
        if len(self._shapes) < self.MAX_SHAPES:
            self._shapes[key] = found
        return found

    def parameters(self, params: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """The text and the parameters sent for `params` (as given to `Connection.execute`)."""
        shape = self.shape(params)
        values = dict(shape.fixed)
        for name, value in params.items():
            names = shape.given[name]
            if name in shape.expanding:
                for (key, process), item in zip(names, value, strict=True):
                    values[key] = item if process is None else process(item)
            else:
                ((key, process),) = names
                values[key] = value if process is None else process(value)
        return shape.sql, values

    def rows(self, conn: AnyConnection, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        """Run it with `params`; its rows, converted as SQLAlchemy would. Its errors are
        SQLAlchemy's for the same psycopg error on a `Connection` (its class, the connection
        and, on a disconnect, the whole pool invalidated, `handle_error` listeners told)."""
        sql, values = self.parameters(params)
        dispatch = conn.dispatch if isinstance(conn, Connection) else None
        listened = dispatch is not None and (dispatch.before_cursor_execute or dispatch.after_cursor_execute)
        listening = conn if listened and isinstance(conn, Connection) else None
        with driver_of(conn).cursor() as cursor:
            context = None if listening is None else _DriverContext(listening, cursor)
            if listening is not None:  # each returns the statement and parameters to send, as in SQLAlchemy
                for before in listening.dispatch.before_cursor_execute:
                    sql, values = before(listening, cursor, sql, values, context, False)
            try:
                cursor.execute(sql, values)
                raw: list[tuple[Any, ...]] = cursor.fetchall()
            except psycopg.Error as error:
                if context is None and isinstance(conn, Connection):
                    context = _DriverContext(conn, cursor)
                failed = driver_error(conn, sql, error, parameters=values, cursor=cursor, context=context)
                raise failed from error
            if listening is not None:
                for after in listening.dispatch.after_cursor_execute:
                    after(listening, cursor, sql, values, context, False)
            description = cursor.description or []
        convert = self._results
        if convert is None:
            codes = [d.type_code for d in description]
            convert = self._results = [
                t.result_processor(self._dialect, code) for t, code in zip(self._types, codes, strict=True)
            ]
        if not any(convert):
            return raw
        return [tuple(v if f is None else f(v) for f, v in zip(convert, row, strict=True)) for row in raw]


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
            pool_recycle=POOL_RECYCLE_SECONDS,
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
        INSERT does. On a connection in autocommit (a caller's), both in one transaction of their
        own: ids drawn in a transaction ended before the COPY's began are held by none, and the
        job search mark (`index_jobs`) may pass them before the COPY commits.
        """
        columns = ", ".join(("id", *BULK_JOB_COLUMNS, "created_at", "errors", "has_dependencies"))
        driver = driver_of(conn)
        try:
            with (
                driver.transaction() if driver.autocommit else contextlib.nullcontext(),
                driver.cursor() as cursor,
            ):
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
        transaction's `now()`, the database clock: the caller's `now` is not used). The
        connection's cursor for it is kept with the connection (a new psycopg cursor per call
        is ~15 us of client CPU)."""
        try:
            found = _insert_cursor(conn).execute(_INSERT_ONE, values).fetchone()
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
        context = _DriverContext(conn, cursor)
        try:
            conn.dispatch.before_cursor_execute(conn, cursor, sql, params, context, False)
            first = next(rows, None)  # sends the statement and waits for the first chunk
            conn.dispatch.after_cursor_execute(conn, cursor, sql, params, context, False)
            yield itertools.chain(() if first is None else (first,), rows)
        except psycopg.Error as error:
            raise driver_error(conn, sql, error, parameters=params, cursor=cursor, context=context) from error
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
