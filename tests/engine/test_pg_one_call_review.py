"""Hostile review of PostgreSQL's kept one-call connection (`PostgresSingle`): a server
restart the pool already knows of, and a process forked from an app that has used its pool.
Real PostgreSQL sessions, ended with `pg_terminate_backend`, and real forked processes."""

from __future__ import annotations

import os
import threading

import psycopg
import pytest
from sqlalchemy import select, text

from ledgerflow.db.tables import jobs

pytestmark = pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)


def _terminate_all(db_url: str) -> int:
    """End every session of the test database but ours (a server restart, as clients see it)."""
    dsn = db_url.replace("+psycopg", "")
    with psycopg.connect(dsn, autocommit=True) as admin:
        row = admin.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchone()
    assert row is not None
    return int(row[0])


def test_an_enqueue_after_a_restart_the_pool_already_noticed_runs_on_a_new_session(make_app, db_url):
    """After a restart, the first statement to meet a dead session fails and marks every pooled
    connection of before as stale (SQLAlchemy's pool invalidation): none is handed out again.
    The kept connection follows the pool: once another statement of the process has noticed
    the restart, an enqueue runs on a new session instead of failing on the dead one."""
    app = make_app()

    @app.task(name="plain")
    def plain(i: int) -> None: ...

    app.enqueue(plain.prepare(0))  # the kept connection is open
    app.db.ping()  # and one in the pool
    assert _terminate_all(db_url) >= 2
    app.db.run(lambda conn: conn.execute(text("SELECT 1")))  # notices the restart, runs again
    job = app.enqueue(plain.prepare(1))  # main: DatabaseUnavailable (the kept session is dead)
    with app.db.read() as conn:
        assert list(conn.execute(select(jobs.c.id).order_by(jobs.c.id)).scalars())[-1] == job.id


def test_a_forked_process_enqueues_on_sessions_of_its_own(make_app):
    """A process forked from an app that has used its pool (an enqueue, then a read: a pooled
    connection waits in the pool) enqueues on a session of its own: never on one of the
    parent's (two processes on one socket interleave their messages), and the parent's
    sessions all survive the child's enqueues and its close."""
    app = make_app()

    @app.task(name="plain")
    def plain(i: int) -> None: ...

    app.enqueue(plain.prepare(0))
    with app.db.read(transaction=True) as conn:  # a second connection, back in the pool after
        parent_pids = {conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()}
    with app.db.single() as kept:
        parent_pids.add(kept.driver_connection.info.backend_pid)
    assert len(parent_pids) == 2
    reader, writer = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child reports through the pipe
        code = 1
        try:
            os.close(reader)
            ids = [app.enqueue(plain.prepare(i)).id for i in range(1, 4)]
            with app.db.single() as kept:
                pid = kept.driver_connection.info.backend_pid
            os.write(writer, f"{pid} {len(ids)}".encode())
            app.close()
            code = 0
        finally:
            os._exit(code)
    os.close(writer)
    with os.fdopen(reader) as got:
        answer = got.read()
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0, answer
    child_pid, count = (int(x) for x in answer.split())
    assert count == 3
    assert child_pid not in parent_pids  # main: the parent's pooled session, shared by both
    with app.db.single() as kept:  # the parent's kept session is still its own and alive
        assert kept.driver_connection.info.backend_pid in parent_pids
    app.enqueue(plain.prepare(4))
    with app.db.read() as conn:
        stored = list(conn.execute(select(jobs.c.args[0].as_integer()).order_by(jobs.c.id)).scalars())
    assert stored == [0, 1, 2, 3, 4]


def test_the_kept_connection_leaves_the_pool_its_full_capacity(make_app):
    """The kept connection is checked out for good once the process has enqueued: the pool
    still lends `pool_size + 10` connections at once to everything else, as it did before
    there was a kept connection (main: the eleventh transaction of a pool of one waited
    `pool_timeout` and failed while the kept connection sat idle)."""
    app = make_app(db_pool_size=1, db_pool_timeout=2.0)

    @app.task(name="plain")
    def plain(i: int) -> None: ...

    app.enqueue(plain.prepare(0))  # the kept connection is checked out from now on
    together = threading.Barrier(11)
    outcomes: list[str] = []

    def transaction() -> None:
        try:
            with app.db.begin() as conn:
                conn.execute(text("SELECT 1"))
                together.wait(10)  # all eleven hold a connection at once
            outcomes.append("ok")
        except Exception as error:
            outcomes.append(type(error).__name__)
            together.abort()

    threads = [threading.Thread(target=transaction) for _ in range(11)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert outcomes == ["ok"] * 11
    app.enqueue(plain.prepare(1))  # and the kept connection still serves
    assert app.db.engine.pool.checkedout() == 1
