"""The enqueue fast paths: a one-call enqueue on a pooled driver connection (`Database.single`)
and the bulk insert, on both backends, against the guarantees of the ordinary path."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest
from sqlalchemy import func, select

from ledgerflow import DatabaseUnavailable, JobState
from ledgerflow.db.tables import jobs


def _count(app) -> int:
    with app.db.read() as conn:
        return int(conn.execute(select(func.count()).select_from(jobs)).scalar_one())


def test_a_one_call_enqueue_gives_its_connection_back_transactional(make_app):
    app = make_app(db_pool_size=1)  # one pooled connection: the next transaction gets the same one

    @app.task(name="plain")
    def plain() -> None: ...

    job = app.enqueue(plain.prepare())
    assert app.get_job(job.id) == job
    with pytest.raises(RuntimeError), app.db.begin() as conn:
        app.enqueue(plain.prepare(), connection=conn)
        raise RuntimeError("roll back")
    assert _count(app) == 1


def test_one_call_enqueues_wait_for_a_writer_and_none_is_lost(make_app):
    app = make_app()

    @app.task(name="plain")
    def plain(i: int) -> None: ...

    errors: list[BaseException] = []
    ids: list[int] = []

    def enqueue_many_times(start: int) -> None:
        try:
            for i in range(start, start + 40):
                ids.append(app.enqueue(plain.prepare(i)).id)
        except BaseException as error:  # reported below
            errors.append(error)

    with app.db.begin() as conn:  # a writer holds SQLite's write lock while the others start
        app.enqueue(plain.prepare(-1), connection=conn)
        threads = [threading.Thread(target=enqueue_many_times, args=(k * 100,)) for k in range(4)]
        for t in threads:
            t.start()
        time.sleep(0.3)
    for t in threads:
        t.join(30)
    assert not errors
    assert len(set(ids)) == 160 and _count(app) == 161


def test_a_one_call_enqueue_on_a_dead_connection_is_retryable_and_the_next_one_works(make_app, backend):
    if backend != "postgresql":
        pytest.skip("a PostgreSQL session can be ended under the pool; a SQLite file cannot")
    app = make_app(db_pool_size=1)

    @app.task(name="plain")
    def plain() -> None: ...

    app.enqueue(plain.prepare())
    with app.db.single() as pooled:
        pid = pooled.driver_connection.info.backend_pid
    with psycopg.connect(app.db.url.replace("+psycopg", ""), autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    with pytest.raises(DatabaseUnavailable):
        app.enqueue(plain.prepare())
    job = app.enqueue(plain.prepare())
    assert app.get_job(job.id).state == JobState.AVAILABLE and _count(app) == 2
