"""Review (branch review3): `retry` and `retry_dead` now run through `Database.run`, which runs a
transaction once more when the server ended it. When the COMMIT itself is sent and its answer
lost (the connection dropped as it committed), nothing is run again: each job is retried once,
the caller is told the database was unavailable, and asking again says why nothing more moves."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
from sqlalchemy import event, select, update

from ledgerflow import DatabaseUnavailable, JobSpec
from ledgerflow.db.tables import jobs
from ledgerflow.errors import NotAllowed


@contextmanager
def _commit_answer_lost(app: Any) -> Iterator[list[str]]:
    """The next COMMIT is carried out, then its connection drops before the answer comes back;
    yields the UPDATE statements sent meanwhile."""
    dialect = app.db.engine.dialect
    commit = dialect.do_commit
    sent: list[str] = []

    def lost(dbapi_connection: Any) -> None:
        commit(dbapi_connection)
        dialect.do_commit = commit  # once
        if app.db.is_sqlite:
            raise sqlite3.OperationalError("disk I/O error")
        dbapi_connection.dbapi_connection.close()  # the pooled one's driver: SQLAlchemy sees a disconnect
        raise psycopg.OperationalError("server closed the connection unexpectedly")

    def record(_c: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if statement.startswith("UPDATE jobs"):
            sent.append(statement)

    dialect.do_commit = lost
    event.listen(app.db.engine, "before_cursor_execute", record)
    try:
        yield sent
    finally:
        dialect.do_commit = commit
        event.remove(app.db.engine, "before_cursor_execute", record)


def _dead(app: Any, n: int) -> list[int]:
    ids = app.enqueue_many([JobSpec(task="t", args=(i,)) for i in range(n)])
    with app.db.begin() as conn:
        conn.execute(update(jobs).where(jobs.c.id.in_(ids)).values(state="dead", attempt=1, max_attempts=1))
    return ids


def test_a_dead_letter_retry_whose_commit_answer_is_lost_is_not_run_again(make_app):
    app = make_app()
    ids = _dead(app, 3)
    with pytest.raises(DatabaseUnavailable), _commit_answer_lost(app) as sent:
        app.store.retry_dead()
    assert len(sent) == 1  # one transaction, not run again
    with app.db.read() as conn:
        rows = conn.execute(select(jobs.c.state, jobs.c.max_attempts).where(jobs.c.id.in_(ids))).all()
    assert rows == [("available", 2)] * 3  # committed once: one more attempt each, not two
    report = app.store.retry_dead()  # the caller asks again
    assert report.retried == [] and report.refused == {}


def test_a_job_retry_whose_commit_answer_is_lost_is_not_run_again(make_app):
    app = make_app()
    (job_id,) = _dead(app, 1)
    with pytest.raises(DatabaseUnavailable), _commit_answer_lost(app) as sent:
        app.store.retry(job_id)
    assert len(sent) == 1
    assert app.store.get(job_id).state == "available" and app.store.get(job_id).max_attempts == 2
    with pytest.raises(NotAllowed, match=f"job {job_id}.*available"):
        app.store.retry(job_id)
