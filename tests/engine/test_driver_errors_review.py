"""Review (branch review3) of 2edc65d and the autocommit reads: an error that is not a disconnect,
raised on the driver's connection (a statement timeout in the export stream, a value COPY or the
one-call insert refuses), is SQLAlchemy's error once, tells the `handle_error` listeners once with
the statement's context, marks nothing stale, and leaves the connection and its transaction usable
as before; and a pooled connection lent in autocommit (a read, `Database.single`) goes back to
the pool in transactions."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from sqlalchemy import event, func, select, text
from sqlalchemy.exc import DataError, OperationalError

from ledgerflow.db.backends import driver_of
from ledgerflow.db.tables import jobs
from ledgerflow.engine.jobs import JobSpec

pytestmark = pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)  # SQLite: SQLAlchemy's

#: A priority out of `smallint`'s range: refused by the server, not a disconnect.
_TOO_HIGH = 2**40


def _told(app: Any) -> list[tuple[Any, ...]]:
    """(original error class, disconnect, context class, statement given) per `handle_error` call."""
    seen: list[tuple[Any, ...]] = []

    def on_error(ctx: Any) -> None:
        context = type(ctx.execution_context).__name__ if ctx.execution_context is not None else None
        seen.append((type(ctx.original_exception), ctx.is_disconnect, context, bool(ctx.statement)))

    event.listen(app.db.engine, "handle_error", on_error)
    return seen


def test_a_statement_timeout_in_the_export_stream_leaves_its_transaction_usable(make_app):
    app = make_app()
    db = app.db
    stale_since = db.engine.pool._invalidate_time
    seen = _told(app)
    slow = (
        select(text("g"))
        .select_from(text("generate_series(1, 100000) g"))
        .where(text("pg_sleep(0.001) IS NOT NULL"))
    )
    with db.read(transaction=True) as conn:
        conn.exec_driver_sql("SET LOCAL statement_timeout = '300ms'")
        read = 0
        with pytest.raises(OperationalError) as caught, db.stream(conn, slow, 10) as rows:
            for _ in rows:
                read += 1
        assert read > 0  # ended mid-stream, not at its first chunk
        assert isinstance(caught.value.orig, psycopg.errors.QueryCanceled)  # wrapped once
        assert not caught.value.connection_invalidated and not conn.invalidated
        assert conn.execute(select(func.count()).select_from(jobs)).scalar_one() == 0  # usable
    assert seen == [(psycopg.errors.QueryCanceled, False, "_DriverContext", True)]
    assert db.engine.pool._invalidate_time == stale_since


def test_a_refused_copy_in_a_savepoint_leaves_the_transaction_to_commit_the_rest(make_app):
    app = make_app()
    db = app.db
    stale_since = db.engine.pool._invalidate_time
    seen = _told(app)
    with db.begin() as conn:
        (kept,) = app.store.enqueue(conn, [JobSpec(task="t")])
        savepoint = conn.begin_nested()
        row = ("t", "default", _TOO_HIGH, "available", "[]", "{}", 3, 60.0, datetime.now(UTC))
        with pytest.raises(DataError) as caught:
            db.backend.insert_jobs(conn, [row, row])
        savepoint.rollback()
        assert isinstance(caught.value.orig, psycopg.errors.NumericValueOutOfRange)
        assert not conn.invalidated
    with db.read() as conn:
        assert conn.execute(select(jobs.c.id)).scalars().all() == [kept]
    assert seen == [(psycopg.errors.NumericValueOutOfRange, False, None, True)]
    assert db.engine.pool._invalidate_time == stale_since


def test_pooled_connections_lent_in_autocommit_go_back_in_transactions(make_app):
    """A read and `Database.single` (one refused, one not) lend pooled connections in autocommit;
    each comes back in transactions, so a later write transaction is still all or nothing."""
    app = make_app(db_pool_size=2)
    db = app.db
    stale_since = db.engine.pool._invalidate_time
    with db.read() as a, db.read() as b:  # both pooled connections, in autocommit
        assert a.execute(select(func.count()).select_from(jobs)).scalar_one() == 0
        assert b.exec_driver_sql("SELECT 1").scalar_one() == 1
    with db.single() as pooled:
        app.store.insert_plain(pooled, JobSpec(task="t"))
    with pytest.raises(DataError), db.single() as pooled:
        now = datetime.now(UTC)
        refused = ("t", "default", _TOO_HIGH, "available", "[]", "{}", 3, 60.0, now, None)
        db.backend.insert_job(pooled, refused, now)
    assert db.engine.pool._invalidate_time == stale_since
    held = [db.engine.connect() for _ in range(2)]
    try:
        for conn in held:
            assert driver_of(conn).autocommit is False
    finally:
        for conn in held:
            conn.close()
    with pytest.raises(RuntimeError), db.begin() as conn:  # a write transaction that fails half-way
        app.store.enqueue(conn, [JobSpec(task="t")])
        raise RuntimeError("half-way")
    with db.read() as conn:
        assert conn.execute(select(func.count()).select_from(jobs)).scalar_one() == 1
