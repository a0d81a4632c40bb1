"""PostgreSQL's one-call enqueue on its kept connection (`PostgresSingle`): one statement in
autocommit, so the job row and its NOTIFY commit together or not at all; a fault before or
after the statement leaves the job stored once or not at all, never twice; threads of one
process do not wait for each other; the kept connection goes back to the pool transactional.

The fault is made by tests/netproxy.py between the app and PostgreSQL (a pulled cable): before
the statement (nothing reaches the server) and after it (the server commits, the answer is
lost). The one-call path has no retry of its own: a lost answer is reported as retryable and
the job is in the table once; the next call runs on a fresh connection.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

import psycopg
import pytest
from sqlalchemy import event, func, select
from sqlalchemy.exc import DataError

from ledgerflow import App, DatabaseUnavailable, JobState
from ledgerflow.db.tables import jobs
from tests.netproxy import PartitionProxy, behind

pytestmark = pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)


def _stored(app: App) -> list[str]:
    with app.db.read() as conn:
        return list(conn.execute(select(jobs.c.args[0].as_string()).order_by(jobs.c.id)).scalars())


@pytest.mark.parametrize("fault", ["before", "after"])
def test_a_cut_before_or_after_the_statement_stores_the_job_once_or_not_at_all(db_url, proxy, fault):
    """`before`: the cable is pulled, then the enqueue is sent (it never reaches the server).
    `after`: the INSERT reaches the server and commits, then the cable is pulled (its answer is
    lost). Either way the caller sees a retryable error, the table holds the job 0 or 1 time,
    and the next enqueue (cable back) stores its own job once, on another connection."""
    app = App(database_url=behind(proxy, db_url), log_level="WARNING")
    try:
        _cut_once(app, proxy, fault)
    finally:
        app.close()


def _cut_once(app: App, proxy: PartitionProxy, fault: str) -> None:
    @app.task(name="plain")
    def plain(marker: str) -> None: ...

    app.enqueue(plain.prepare("first"))
    with app.db.single() as kept:
        first_pid = kept.driver_connection.info.backend_pid
    if fault == "before":
        proxy.drop()
    else:
        proxy.cut_after(b"the-cut-one")
    started = time.monotonic()
    with pytest.raises(DatabaseUnavailable):
        app.enqueue(plain.prepare("the-cut-one"))
    assert time.monotonic() - started < 30  # keepalives or the user timeout end the wait
    proxy.heal()
    job = app.enqueue(plain.prepare("after"))
    with app.db.single() as kept:
        assert kept.driver_connection.info.backend_pid != first_pid
    expected = ["first", "after"] if fault == "before" else ["first", "the-cut-one", "after"]
    assert _stored(app) == expected
    assert app.get_job(job.id).state == JobState.AVAILABLE


def test_a_one_call_enqueue_and_its_notify_commit_together(make_app, db_url):
    """A listener gets the NOTIFY of a one-call enqueue only once the job is visible to others
    (the statement commits alone: no transaction left open, nothing visible before it)."""
    app = make_app()

    @app.task(name="plain")
    def plain(i: int) -> None: ...

    app.enqueue(plain.prepare(0))  # the kept connection is open
    dsn = db_url.replace("+psycopg", "")
    with psycopg.connect(dsn, autocommit=True) as listener, psycopg.connect(dsn, autocommit=True) as reader:
        listener.execute("LISTEN ledgerflow_jobs")
        for i in range(1, 6):
            job = app.enqueue(plain.prepare(i))
            notes = list(listener.notifies(timeout=5, stop_after=1))
            assert [n.payload for n in notes] == ["default"]
            row = reader.execute("SELECT args FROM jobs WHERE id = %s", (job.id,)).fetchone()
            assert row == ([i],)
        with app.db.single() as kept:
            assert kept.driver_connection.info.transaction_status == psycopg.pq.TransactionStatus.IDLE


def test_a_thread_finding_the_kept_connection_in_use_enqueues_at_once_on_another(make_app):
    """The kept connection serves one thread at a time; another thread's enqueue meanwhile runs
    on a pooled connection of its own (no wait), and the kept one serves again once free."""
    app = make_app()

    @app.task(name="plain")
    def plain(i: int) -> None: ...

    app.enqueue(plain.prepare(0))
    taken, release = threading.Event(), threading.Event()
    pids: dict[str, int] = {}

    def keep() -> None:
        with app.db.single() as kept:
            pids["kept"] = kept.driver_connection.info.backend_pid
            taken.set()
            release.wait(10)

    holder = threading.Thread(target=keep)
    holder.start()
    try:
        assert taken.wait(10)
        started = time.monotonic()
        app.enqueue(plain.prepare(1))
        assert time.monotonic() - started < 2
        with app.db.single() as other:
            pids["other"] = other.driver_connection.info.backend_pid
    finally:
        release.set()
        holder.join(10)
    assert pids["other"] != pids["kept"]
    with app.db.single() as again:
        assert again.driver_connection.info.backend_pid == pids["kept"]
    assert _stored(app) == ["0", "1"]


def test_the_kept_connection_outlives_a_refused_insert_and_goes_back_to_the_pool_on_dispose(make_app):
    """A statement the server refuses leaves the kept connection idle in autocommit: it is kept
    and serves the next enqueue. `dispose` gives it back to the pool in transactions, closed
    with the pool; the next enqueue takes another."""
    app = make_app(db_pool_size=1)
    db = app.db

    @app.task(name="plain")
    def plain(i: int) -> None: ...

    app.enqueue(plain.prepare(0))
    with db.single() as kept:
        driver = kept.driver_connection
        assert driver.autocommit
    now = datetime.now(UTC)
    refused = ("plain", "default", 2**40, "available", "[]", "{}", 3, 60.0, now, None)  # priority overflows
    with pytest.raises(DataError), db.single() as kept:
        db.backend.insert_job(kept, refused, now)
    with db.single() as kept:
        assert kept.driver_connection is driver and driver.autocommit
    app.enqueue(plain.prepare(1))
    assert db.engine.pool.checkedout() == 1  # kept checked out: the pool counts it
    db.dispose()
    assert driver.closed and db.engine.pool.checkedout() == 0
    app.enqueue(plain.prepare(2))
    with db.begin() as conn:  # a pooled connection in transactions, the kept one aside
        assert conn.execute(select(func.count()).select_from(jobs)).scalar_one() == 3
    with db.single() as kept:
        assert kept.driver_connection is not driver


def test_the_kept_connection_goes_back_to_the_pool_once_as_old_as_its_recycle_age(make_app, monkeypatch):
    """The kept connection bypasses the pool's check-out, so it would outlive `pool_recycle`
    (a firewall's idle limit, a server's session settings): once older than that it is given
    back and checked out again, so the pool's own recycle (by the connection's age) applies."""
    import ledgerflow.db.database as database

    app = make_app()
    checkouts: list[object] = []
    event.listen(app.db.engine, "checkout", lambda dbapi, record, proxy: checkouts.append(dbapi))

    @app.task(name="plain")
    def plain(i: int) -> None: ...

    app.enqueue(plain.prepare(0))
    app.enqueue(plain.prepare(1))
    assert len(checkouts) == 1  # younger than the recycle age: kept, not checked out again
    monkeypatch.setattr(database, "POOL_RECYCLE_SECONDS", 0.0)
    time.sleep(0.01)
    app.enqueue(plain.prepare(2))
    assert len(checkouts) == 2  # given back and checked out again
    with app.db.single() as kept:
        assert kept.driver_connection.autocommit
    assert _stored(app) == ["0", "1", "2"]
