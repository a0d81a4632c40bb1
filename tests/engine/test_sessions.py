"""Database sessions: PostgreSQL's connection limits and keepalives, bulk work, one-round-trip writes.

The limits are PostgreSQL's: SQLite has no network and no server sessions (its lock wait is the
busy timeout), so those tests run on PostgreSQL only.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from sqlalchemy import BigInteger, Select, case, event, exc, func, literal, select, text, update

from ledgerflow import DatabaseUnavailable, JobFilter, JobSpec
from ledgerflow.db import postgres
from ledgerflow.db.database import Database
from ledgerflow.db.migrate import _LOCK_ID, migrate
from ledgerflow.db.tables import jobs
from ledgerflow.engine import leases
from ledgerflow.engine.autostop import AutoStop
from ledgerflow.engine.search import count_matching
from tests.apps import partition
from tests.conftest import wait_until

postgresql_only = pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)


def session_settings(db: Database) -> dict[str, str]:
    names = ("statement_timeout", "lock_timeout", "idle_in_transaction_session_timeout")
    with db.read() as conn:
        return {n: conn.exec_driver_sql(f"SHOW {n}").scalar_one() for n in names}


def idle_in_transaction(db: Database) -> list[int]:
    with db.read() as conn:
        query = (
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND state = 'idle in transaction'"
        )
        return list(conn.exec_driver_sql(query).scalars())


def test_a_single_statement_write_commits_on_both_backends(db_url):
    db = Database(db_url)
    db.run_single(lambda conn: conn.execute(text("CREATE TABLE single_write (x integer)")))
    db.run_single(lambda conn: conn.execute(text("INSERT INTO single_write VALUES (1)")))
    with db.read() as conn:
        assert conn.execute(text("SELECT count(*) FROM single_write")).scalar_one() == 1
    db.dispose()


def numbers(up_to: int) -> Select[tuple[int]]:
    """1…up_to, made by the database as fast as it can send them."""
    n = select(literal(1).label("i")).cte("n", recursive=True)
    n = n.union_all(select(n.c.i + 1).where(n.c.i < up_to))
    return select(n.c.i)


def test_a_stream_left_early_ends_its_statement_and_the_transaction_carries_on(db_url):
    db = Database(db_url)
    with db.read(transaction=True) as conn:
        with db.stream(conn, numbers(1_000_000), size=1000) as rows:
            assert next(rows) == (1,)  # the server is still sending when the stream is left
        with db.stream(conn, numbers(3_000), size=1000) as rows:
            assert [r[0] for r in rows] == list(range(1, 3_001))
        assert conn.execute(select(literal(1))).scalar_one() == 1
    db.dispose()


def test_an_error_mid_stream_comes_in_sqlalchemy_form_and_the_transaction_carries_on(db_url):
    db = Database(db_url)
    n = numbers(3_000).subquery()
    smallest = literal(-9_223_372_036_854_775_807, BigInteger) - 1  # abs() of it overflows, both backends
    query = select(func.abs(case((n.c.i == 2_500, smallest), else_=n.c.i)))
    read: list[int] = []
    with db.read(transaction=True) as conn:
        with pytest.raises(exc.DBAPIError), db.stream(conn, query, size=1000) as rows:
            read.extend(r[0] for r in rows)
        assert read == list(range(1, len(read) + 1)) and 1_000 <= len(read) < 2_500
        assert conn.execute(select(literal(1))).scalar_one() == 1
    db.dispose()


@postgresql_only
def test_with_a_libpq_older_than_17_a_stream_reads_through_a_server_side_cursor(db_url, monkeypatch):
    monkeypatch.setattr(postgres, "CHUNKED_ROWS", False)
    db = Database(db_url)
    with db.read(transaction=True) as conn:
        with db.stream(conn, numbers(1_000_000), size=1000) as rows:
            assert next(rows) == (1,)
        with db.stream(conn, numbers(3_000), size=1000) as rows:
            assert [r[0] for r in rows] == list(range(1, 3_001))
    db.dispose()


def test_a_stream_passes_the_engine_cursor_events_like_any_statement(db_url):
    db = Database(db_url)
    seen: list[tuple[str, str]] = []
    for name in ("before_cursor_execute", "after_cursor_execute"):
        event.listen(db.engine, name, lambda *args, name=name: seen.append((name, args[2])))
    with db.read(transaction=True) as conn, db.stream(conn, numbers(10)) as rows:
        assert len(list(rows)) == 10
    streamed = [name for name, sql in seen if "RECURSIVE" in sql]
    assert streamed == ["before_cursor_execute", "after_cursor_execute"]
    db.dispose()


@postgresql_only
def test_pooled_sessions_carry_timeouts_and_tcp_keepalives(db_url, make_app):
    app = make_app()
    assert session_settings(app.db) == {
        "statement_timeout": "30s",
        "lock_timeout": "5s",
        "idle_in_transaction_session_timeout": "5s",
    }
    with app.db.read() as conn:
        sock = socket.socket(fileno=conn.connection.driver_connection.pgconn.socket)  # type: ignore[union-attr]
        try:
            options = {
                "keepalive": sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
                "idle": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
                "interval": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
                "count": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
                "user_timeout_ms": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT),
            }
        finally:
            sock.detach()  # the descriptor stays psycopg's
    assert options == {"keepalive": 1, "idle": 5, "interval": 2, "count": 3, "user_timeout_ms": 5000}


@postgresql_only
def test_settings_and_url_parameters_override_the_defaults(db_url, make_app):
    app = make_app(db_statement_timeout=12, db_lock_timeout=0, db_idle_in_transaction_timeout=0.5)
    assert session_settings(app.db) == {
        "statement_timeout": "12s",
        "lock_timeout": "0",
        "idle_in_transaction_session_timeout": "500ms",
    }
    db = Database(db_url + "?keepalives_idle=9&options=-c%20lock_timeout%3D7s")
    with db.read() as conn:
        params = conn.connection.driver_connection.info.get_parameters()  # type: ignore[union-attr]
    assert params["keepalives_idle"] == "9" and params["tcp_user_timeout"] == "5000"
    assert session_settings(db)["lock_timeout"] == "7s"
    db.dispose()


@postgresql_only
def test_a_statement_past_the_timeout_fails_as_retryable_and_bulk_work_lifts_it(db_url, make_app):
    app = make_app(db_statement_timeout=0.2)
    with pytest.raises(DatabaseUnavailable, match="statement timeout"), app.db.read() as conn:
        conn.execute(text("SELECT pg_sleep(1)"))
    with app.db.begin() as conn:
        app.db.lift_limits(conn)
        conn.execute(text("SELECT pg_sleep(0.5)"))
    assert session_settings(app.db)["statement_timeout"] == "200ms", "lifted for that transaction only"


@postgresql_only
def test_a_bulk_enqueue_is_not_cut_by_the_statement_timeout(db_url, make_app):
    app = make_app(db_statement_timeout=0.1)  # far shorter than a COPY of 100,000 jobs
    ids = app.enqueue_many([partition.record.prepare() for _ in range(100_000)])
    with app.db.read(transaction=True) as conn:
        app.db.lift_limits(conn)
        assert conn.execute(select(func.count()).select_from(jobs)).scalar_one() == len(ids) == 100_000


@postgresql_only
def test_a_lock_held_by_a_session_that_went_quiet_is_released_and_no_one_waits_long(db_url, make_app):
    app = make_app(db_idle_in_transaction_timeout=1, db_lock_timeout=0.3)
    (job_id,) = app.enqueue_many([partition.record.prepare()])
    quiet = app.db.engine.connect()
    quiet.begin()
    quiet.execute(update(jobs).where(jobs.c.id == job_id).values(priority=1))  # then says nothing
    with pytest.raises(DatabaseUnavailable, match="lock timeout"), app.db.begin() as conn:
        conn.execute(update(jobs).where(jobs.c.id == job_id).values(priority=2))
    wait_until(lambda: idle_in_transaction(app.db) == [], 10, 0.1, "the server ended the idle transaction")
    with app.db.begin() as conn:
        conn.execute(update(jobs).where(jobs.c.id == job_id).values(priority=3))
    with pytest.raises(Exception, match="idle-in-transaction"):
        quiet.commit()
    quiet.close()


@postgresql_only
def test_a_migration_waits_for_another_migrator_longer_than_the_lock_timeout(db_url, make_app):
    app = make_app(db_lock_timeout=0.2)
    holder = Database(db_url)
    release = threading.Event()
    errors: list[BaseException] = []

    def hold_the_migration_lock() -> None:
        with holder.begin() as conn:
            conn.execute(text(f"SELECT pg_advisory_xact_lock({_LOCK_ID})"))
            release.wait(60)

    def run_migrate() -> None:
        try:
            migrate(app.db)
        except BaseException as exc:
            errors.append(exc)

    waiting = text(
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND wait_event = 'advisory' "
        "AND clock_timestamp() - query_start > interval '1 second'"
    )
    threads = [threading.Thread(target=hold_the_migration_lock), threading.Thread(target=run_migrate)]
    try:
        threads[0].start()
        wait_until(
            lambda: holder.run_single(
                lambda c: c.execute(
                    text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'")
                ).scalar_one()
            ),
            30,
            0.05,
        )
        threads[1].start()
        wait_until(lambda: errors or holder.run_single(lambda c: c.execute(waiting).scalar_one()), 30, 0.1)
    finally:
        release.set()
        for t in threads:
            t.join(60)
    assert errors == [], "the migration waited (5 lock timeouts and more) instead of failing"
    holder.dispose()


@pytest.mark.timeout(60)  # before the fix it waited for ever
@postgresql_only
def test_the_rescue_skips_a_job_whose_row_another_session_holds(db_url, make_app):
    """The holder may be a worker cut off in the middle of its heartbeat: never wait for it."""
    app = make_app()
    (job_id,) = app.enqueue_many([partition.record.prepare()])
    with app.db.begin() as conn:
        conn.execute(
            update(jobs)
            .where(jobs.c.id == job_id)
            .values(
                state="running",
                attempt=1,
                lease_token=7,
                lease_expires_at=func.now() - text("interval '1 minute'"),
            )
        )
    holder = app.db.engine.connect()
    holder.begin()
    holder.execute(select(jobs.c.id).where(jobs.c.id == job_id).with_for_update())
    try:
        with app.db.begin() as conn:
            assert leases.rescue(app.db, conn, [(job_id, 7)]) == []
    finally:
        holder.rollback()
        holder.close()
    with app.db.begin() as conn:
        assert [j.id for j in leases.rescue(app.db, conn, [(job_id, 7)])] == [job_id]


def test_chunked_rows_need_libpq_17_and_a_psycopg_whose_stream_takes_a_size():
    def stream_of_psycopg_3_1(self: Any, query: Any, params: Any = None, *, binary: Any = None) -> Any: ...

    assert not postgres.chunked_rows(170000, stream_of_psycopg_3_1)  # was a TypeError on every export
    assert not postgres.chunked_rows(160004, psycopg.Cursor.stream)
    assert postgres.chunked_rows(170000, psycopg.Cursor.stream)


def test_a_stream_gives_its_listeners_an_execution_context_to_keep_state_on(db_url):
    """A listener may keep per-statement state on the execution context (OpenTelemetry's
    SQLAlchemy instrumentation keeps its span there); the PostgreSQL stream passed None."""
    db = Database(db_url)
    ended: list[str] = []

    def before(_conn: Any, _cursor: Any, statement: str, _params: Any, context: Any, _many: bool) -> None:
        context._span = statement

    def after(_conn: Any, _cursor: Any, _statement: str, _params: Any, context: Any, _many: bool) -> None:
        ended.append(context._span)

    event.listen(db.engine, "before_cursor_execute", before)
    event.listen(db.engine, "after_cursor_execute", after)
    try:
        with db.read(transaction=True) as conn, db.stream(conn, numbers(10)) as rows:
            assert len(list(rows)) == 10
    finally:
        event.remove(db.engine, "before_cursor_execute", before)
        event.remove(db.engine, "after_cursor_execute", after)
    assert [s for s in ended if "RECURSIVE" in s] and all(isinstance(s, str) for s in ended)
    db.dispose()


@contextlib.contextmanager
def paused_after(db: Database, first: str, seconds: float) -> Iterator[list[str]]:
    """The process stops for `seconds` once, just after a statement starting with `first` (as a
    garbage collection or a starved CPU stops it): the statements run are listed."""
    ran: list[str] = []

    def after(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        ran.append(statement)
        if statement.startswith(first) and sum(s.startswith(first) for s in ran) == 1:
            time.sleep(seconds)

    event.listen(db.engine, "after_cursor_execute", after)
    try:
        yield ran
    finally:
        event.remove(db.engine, "after_cursor_execute", after)


def test_a_reader_paused_past_the_idle_in_transaction_timeout_still_answers(make_app, backend):
    """A search reads in two statements or more; the process paused between them for longer than
    `idle_in_transaction_session_timeout` (PostgreSQL ended such a read transaction: the fuzz and
    search tests failed at load 10-14 on a garbage collection there) still gets its answer."""
    app = make_app(db_idle_in_transaction_timeout=0.3)
    ids = app.enqueue_many([JobSpec(task="t", args=(f"kiwi {i}",)) for i in range(3)])
    with paused_after(app.db, "SELECT max(jobs.id)", 1.0) as ran:
        found = [j.id for j in app.store.find(JobFilter(text="kiwi"))]
    assert found == sorted(ids, reverse=True)
    assert len(ran) >= 2, "the pause fell between two statements of one read"
    with paused_after(app.db, "SELECT", 1.0):
        assert count_matching(app.db, JobFilter(text="kiwi")) == 3


def test_a_retry_the_server_ended_while_paused_is_run_again_once(make_app, backend):
    """POST /api/dlq/retry failed with a 503 at load 10-14: the process was paused (a garbage
    collection) inside its transaction past `idle_in_transaction_session_timeout`. The server
    rolled it back, so it runs once more: every dead job is retried exactly once."""
    app = make_app(db_idle_in_transaction_timeout=0.3)
    ids = app.enqueue_many([JobSpec(task="t", args=(i,)) for i in range(3)])
    with app.db.begin() as conn:
        conn.execute(update(jobs).where(jobs.c.id.in_(ids)).values(state="dead", attempt=1, max_attempts=1))
    with paused_after(app.db, "SELECT jobs.id", 1.0) as ran:
        report = app.store.retry_dead()
    assert report.retried == ids and report.refused == {}
    assert sum(s.startswith("SELECT jobs.id") for s in ran) == (2 if backend == "postgresql" else 1)
    with app.db.read() as conn:
        rows = conn.execute(select(jobs.c.state, jobs.c.max_attempts).where(jobs.c.id.in_(ids))).all()
    assert rows == [("available", 2)] * 3
    app.store.cancel(ids[0])
    with paused_after(app.db, "UPDATE jobs", 1.0):  # one job's retry (POST /api/jobs/{id}/retry)
        assert app.store.retry(ids[0]).state == "available"


@postgresql_only
def test_a_write_the_server_ended_while_paused_fails_as_one_retryable_error_and_writes_nothing(make_app):
    app = make_app(db_idle_in_transaction_timeout=0.3)
    (job_id,) = app.enqueue_many([JobSpec(task="t")])
    with pytest.raises(DatabaseUnavailable, match="idle-in-transaction"), app.db.begin() as conn:
        conn.execute(update(jobs).where(jobs.c.id == job_id).values(priority=9))
        time.sleep(1.0)
        conn.execute(update(jobs).where(jobs.c.id == job_id).values(queue="other"))
    with app.db.read() as conn:  # the pool hands out a live connection again
        assert conn.execute(select(jobs.c.priority, jobs.c.queue).where(jobs.c.id == job_id)).one() == (
            JobSpec(task="t").priority,
            "default",
        )


@postgresql_only
def test_limits_are_lifted_and_streams_read_only_inside_a_transaction(db_url):
    db = Database(db_url)
    with db.read() as conn:  # PostgreSQL: each statement alone, where either would last one statement
        with pytest.raises(ValueError, match="needs a transaction"):
            db.lift_limits(conn)
        with pytest.raises(ValueError, match="needs a transaction"), db.stream(conn, numbers(3)):
            pass
    db.dispose()


def test_an_auto_stop_check_holds_one_pooled_connection_at_a_time(make_app):
    """It read the pauses on a second connection while holding its read: with every pooled
    connection held so, each check would wait `pool_timeout` for one more."""
    app = make_app()
    held, most = [0], [0]

    def checkout(*_: Any) -> None:
        held[0] += 1
        most[0] = max(most[0], held[0])

    def checkin(*_: Any) -> None:
        held[0] -= 1

    event.listen(app.db.engine, "checkout", checkout)
    event.listen(app.db.engine, "checkin", checkin)
    try:
        AutoStop(app).check()
    finally:
        event.remove(app.db.engine, "checkout", checkout)
        event.remove(app.db.engine, "checkin", checkin)
    assert most == [1]
