"""PostgreSQL specifics: psycopg 3, `FOR UPDATE SKIP LOCKED` claims, `LISTEN/NOTIFY` wake-ups.

A statement-level trigger (see the first migration) sends `NOTIFY ledgerflow_jobs, '<queue>'`
when jobs become available, so idle workers start them within milliseconds.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import psycopg
from sqlalchemy import Connection, Interval, Select, exc, func, literal
from sqlalchemy.engine import Engine
from sqlalchemy.sql.elements import ColumnElement

from ledgerflow.db.backends import BULK_JOB_COLUMNS, StoppableThread, dumps
from ledgerflow.db.types import UTCDateTime

CHANNEL = "ledgerflow_jobs"
_JSON = {"args", "kwargs", "errors"}


def conninfo(engine: Engine) -> str:
    """A libpq URI for a raw psycopg connection to the engine's database."""
    return engine.url.set(drivername="postgresql").render_as_string(hide_password=False)


def driver_error(conn: Connection, statement: str, error: psycopg.Error) -> exc.DBAPIError:
    """Turn an error raised on the raw psycopg connection (COPY) into SQLAlchemy's form,
    invalidating a broken connection so the pool never hands it out again."""
    raw = conn.connection.driver_connection
    broken = bool(getattr(raw, "closed", False) or getattr(raw, "broken", False))
    if broken:
        conn.invalidate()
    kind = exc.OperationalError if isinstance(error, psycopg.OperationalError) else exc.DatabaseError
    return kind(statement, None, error, connection_invalidated=broken)  # type: ignore[arg-type]


class PostgresBackend:
    name = "postgresql"

    def create_engine(self, url: str, factory: Callable[..., Engine], **options: Any) -> Engine:
        return factory(
            url,
            connect_args={"connect_timeout": max(2, int(options["connect_timeout"]))},
            json_serializer=options["json_serializer"],
            pool_size=options["pool_size"],
            max_overflow=10,
            pool_recycle=1800,
        )

    def now(self) -> ColumnElement[Any]:
        return func.now(type_=UTCDateTime)

    def after(self, seconds: float) -> ColumnElement[Any]:
        return func.now(type_=UTCDateTime) + literal(timedelta(seconds=seconds), Interval())

    def lock_for_claim(self, query: Select[Any]) -> Select[Any]:
        return query.with_for_update(skip_locked=True)

    def insert_jobs(self, conn: Connection, rows: list[tuple[Any, ...]]) -> list[int]:
        """Many jobs through COPY, with ids drawn from the sequence first (so they come back in order).

        COPY fires the statement-level NOTIFY trigger like an INSERT does.
        """
        drawn = conn.exec_driver_sql(
            "SELECT nextval(pg_get_serial_sequence('jobs', 'id')), now() FROM generate_series(1, %(n)s)",
            {"n": len(rows)},
        ).all()
        ids, now = [r[0] for r in drawn], drawn[0][1]
        raw = conn.connection.driver_connection
        columns = ", ".join(("id", *BULK_JOB_COLUMNS, "created_at", "errors", "has_dependencies"))
        try:
            with raw.cursor() as cursor, cursor.copy(f"COPY jobs ({columns}) FROM STDIN") as copy:  # type: ignore[union-attr]
                for job_id, (task, queue, priority, state, args, kwargs, attempts, timeout, when) in zip(
                    ids, rows, strict=True
                ):
                    copy.write_row(
                        (
                            job_id,
                            task,
                            queue,
                            priority,
                            state,
                            dumps(args) if args else "[]",
                            dumps(kwargs) if kwargs else "{}",
                            attempts,
                            timeout,
                            when,
                            now,
                            "[]",
                            False,
                        )
                    )
        except psycopg.Error as error:
            raise driver_error(conn, "COPY jobs", error) from error
        return ids

    def waker(self, engine: Engine, poll_seconds: float) -> ListenWaker:
        return ListenWaker(conninfo(engine))


class ListenWaker:
    """LISTENs on a dedicated autocommit connection; reconnects (and re-LISTENs) with backoff."""

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._thread: StoppableThread | None = None

    def start(self, callback: Callable[[str | None], None]) -> None:
        def loop(stop: threading.Event) -> None:
            backoff = 0.1
            while not stop.is_set():
                try:
                    with psycopg.connect(self._dsn, autocommit=True, connect_timeout=5) as conn:
                        conn.execute(f"LISTEN {CHANNEL}")
                        callback(None)  # catch up on anything sent while disconnected
                        backoff = 0.1
                        while not stop.is_set():
                            for note in conn.notifies(timeout=0.5):
                                callback(note.payload)
                except psycopg.Error:
                    stop.wait(backoff)
                    backoff = min(backoff * 2, 5.0)

        self._thread = StoppableThread("ledgerflow-pg-listener", loop)
        self._thread.start()

    def stop(self) -> None:
        if self._thread:
            self._thread.stop()
