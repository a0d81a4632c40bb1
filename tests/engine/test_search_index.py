"""The job search index (side tables filled behind a mark, off the hot path: FTS5 on SQLite, GIN
trigram on PostgreSQL) answers exactly as a scan does, whether it lags, has caught up, or holds
jobs since deleted or whose errors changed."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete, event, make_url, select, text, update

from ledgerflow import JobFilter, JobSpec, JobState
from ledgerflow.db import postgres, sqlite
from ledgerflow.db.tables import jobs
from ledgerflow.engine import search
from ledgerflow.engine.search import count_matching, index_pending

S = JobState
# casefold edge cases: ß/ẞ/SS, Turkish İ/ı, a combining acute, final sigma, the ﬁ ligature,
# characters JSON escapes, LIKE and FTS5 query syntax, and kanji
PIECES = ["ß", "ẞ", "SS", "ss", "İ", "i̇", "ı", "I", "e\u0301", "é", "Σ", "ς", "σ", "ﬁ", "fi"]
PIECES += ['"', "\\", "%", "_", "*", " ", "AND", "NEAR", "ab", "AB", "x", "1", "さくら", "商事"]
texts = st.lists(st.sampled_from(PIECES), min_size=0, max_size=6).map("".join)


def _stored(app) -> dict[int, tuple[str, str, str, str]]:
    """id → (args, kwargs, errors) JSON text as the database holds it, and the state."""
    with app.db.read() as conn:
        rows = conn.execute(text("SELECT id, args, kwargs, errors, state FROM jobs")).all()
    return {r[0]: tuple(r[1:]) for r in rows}


def _reference(app, filt: JobFilter) -> list[int]:
    """Brute force: SQLite by Python case folding over every row; PostgreSQL by a plain scan
    (indexes and side tables unused), the semantics its index must keep."""
    if not app.db.is_sqlite:
        with app.db.begin() as conn:
            conn.exec_driver_sql("SET LOCAL enable_bitmapscan = off")
            conn.exec_driver_sql("SET LOCAL enable_indexscan = off")
            where = search.matching(filt, False, scan=True)  # no side table: the rows alone
            return list(
                conn.execute(
                    jobs.select().with_only_columns(jobs.c.id).where(where).order_by(jobs.c.id.desc())
                )
                .scalars()
                .all()
            )
    found = []
    for job_id, (args, kwargs, errors, state) in _stored(app).items():
        if filt.states and state not in filt.states:
            continue
        if filt.text is not None and not any(
            f.casefold() in t.casefold() for f in search.text_forms(filt.text) for t in (args, kwargs)
        ):
            continue
        if filt.error is not None and not any(
            f.casefold() in errors.casefold() for f in search.text_forms(filt.error)
        ):
            continue
        found.append(job_id)
    return sorted(found, reverse=True)


def _index_some(app, count: int) -> None:
    if count:
        with app.db.begin() as conn:
            (sqlite if app.db.is_sqlite else postgres).index_jobs(conn, count)


def _page_through(app, filt: JobFilter, limit: int) -> list[int]:
    seen: list[int] = []
    before = None
    while page := app.store.find(filt, limit=limit, before_id=before):
        seen += [j.id for j in page]
        before = page[-1].id
    return seen


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_search_agrees_with_brute_force_as_the_index_lags_catches_up_and_jobs_change(
    make_app, monkeypatch, data
):
    app = make_app()
    with app.db.begin() as conn:
        conn.execute(delete(jobs))
    probe = data.draw(st.sampled_from([2, 20_000]), label="probe rows")
    monkeypatch.setattr(search, "PROBE_ROWS", probe)
    values = data.draw(st.lists(st.tuples(texts, texts), min_size=1, max_size=14), label="jobs")
    ids = app.enqueue_many([JobSpec(task="t", args=(a,), kwargs={"k": b}) for a, b in values])
    _index_some(app, data.draw(st.integers(0, len(ids)), label="indexed"))
    later = data.draw(st.lists(st.tuples(texts, texts), max_size=5), label="enqueued after")
    ids += app.enqueue_many([JobSpec(task="t", args=(a,), kwargs={"k": b}) for a, b in later])
    deleted = data.draw(st.lists(st.sampled_from(ids), max_size=4), label="deleted")
    failed = data.draw(st.lists(st.sampled_from(ids), max_size=4), label="failed")
    messages = [data.draw(texts, label="error") for _ in failed]
    with app.db.begin() as conn:  # drawn before: no transaction open across the drawing
        for job_id in deleted:
            conn.execute(delete(jobs).where(jobs.c.id == job_id))
        for job_id, message in zip(failed, messages, strict=True):
            errors = [
                {
                    "attempt": 1,
                    "type": "ValueError",
                    "message": message,
                    "traceback": None,
                    "at": "2026-11-30T00:00:00+00:00",
                }
            ]
            conn.execute(update(jobs).where(jobs.c.id == job_id).values(errors=errors, state=str(S.DEAD)))
    if data.draw(st.booleans(), label="caught up"):
        index_pending(app.db)

    stored = [t for a, b in values + later for t in (a, b)]
    pool = [t[i : i + n] for t in stored for n in (3, 4, 7) for i in range(max(0, len(t) - n + 1))]
    for _ in range(6):
        needle = data.draw(st.sampled_from(pool) if pool else texts, label="needle")
        needle = needle if len(needle) >= 3 else needle + "zzz"
        for filt in (
            JobFilter(text=needle),
            JobFilter(error=needle),
            JobFilter(text=needle, states=(S.DEAD,)),
        ):
            expected = _reference(app, filt)
            assert [j.id for j in app.store.find(filt, limit=1000)] == expected, filt
            assert _page_through(app, filt, limit=2) == expected, filt
            assert count_matching(app.db, filt, cap=3) == min(len(expected), 4), filt


def test_jobs_enqueued_after_the_mark_are_found_before_any_indexing(make_app, backend):
    app = make_app()
    old = app.enqueue_many([JobSpec(task="t", args=(f"Straße {i}",)) for i in range(5)])
    index_pending(app.db)
    new = app.enqueue_many([JobSpec(task="t", args=(f"STRASSE {i}",)) for i in range(3)])
    found = [j.id for j in app.find_jobs(JobFilter(text="strasse"))]
    if backend == "sqlite":  # Unicode case folding: ß is ss
        assert found == sorted(old + new, reverse=True)
    else:  # PostgreSQL's ILIKE lower-cases: ß stays ß
        assert found == sorted(new, reverse=True)


def test_deleted_jobs_leave_the_index(make_app, backend):
    app = make_app()
    ids = app.enqueue_many([JobSpec(task="t", args=("kiwi",)) for _ in range(4)])
    assert index_pending(app.db) == 4
    with app.db.begin() as conn:
        conn.execute(delete(jobs).where(jobs.c.id.in_(ids[:3])))
    assert [j.id for j in app.find_jobs(JobFilter(text="kiwi"))] == ids[3:]
    key = "rowid" if backend == "sqlite" else "id"
    with app.db.read() as conn:
        left = conn.exec_driver_sql(f"SELECT {key} FROM job_search ORDER BY {key}").scalars().all()
    assert left == ids[3:]


def test_a_running_worker_fills_the_index_and_enqueue_never_touches_it(make_app, backend):
    app = make_app()

    @app.task(name="slow")
    def slow() -> None:
        time.sleep(1.0)  # the maintenance loop (every 0.25 s here) runs meanwhile

    ids = app.enqueue_many([JobSpec(task="t", args=(f"INV-{i:04d}",)) for i in range(50)])
    with app.db.read() as conn:
        assert conn.exec_driver_sql("SELECT indexed_to FROM job_search_mark").scalar_one() == 0
        assert conn.exec_driver_sql("SELECT count(*) FROM job_search").scalar_one() == 0
    app.enqueue(JobSpec(task="slow"))
    app.run_worker(burst=True, queues=["default"])
    assert [j.id for j in app.find_jobs(JobFilter(text="inv-0042"))] == [ids[42]]
    with app.db.read() as conn:
        assert conn.exec_driver_sql("SELECT indexed_to FROM job_search_mark").scalar_one() >= ids[-1]
        rows = conn.exec_driver_sql("SELECT count(*) FROM job_search").scalar_one()
    assert rows >= len(ids)


def test_searches_use_the_indexes(make_app, backend):
    """Text and errors through the text indexes, time ranges through btree indexes."""
    app = make_app()
    day = datetime(2026, 1, 1, tzinfo=UTC)
    explain = "EXPLAIN QUERY PLAN" if backend == "sqlite" else "EXPLAIN"
    with app.db.begin() as conn:
        if backend == "postgresql":  # an empty table is scanned otherwise
            conn.exec_driver_sql("SET LOCAL enable_seqscan = off")

        def plan(filt: JobFilter) -> str:
            query = jobs.select().where(search.matching(filt, app.db.is_sqlite)).order_by(jobs.c.id.desc())
            compiled = query.limit(50).compile(app.db.engine, compile_kwargs={"literal_binds": True})
            return " | ".join(str(r[-1]) for r in conn.exec_driver_sql(f"{explain} {compiled}"))

        sqlite_index = "VIRTUAL TABLE INDEX"
        assert (sqlite_index if backend == "sqlite" else "ix_job_search_body") in plan(JobFilter(text="kiwi"))
        assert (sqlite_index if backend == "sqlite" else "ix_job_error_search_body") in plan(
            JobFilter(error="kiwi")
        )
        assert "ix_jobs_created_at" in plan(
            JobFilter(enqueued_after=day, enqueued_before=day + timedelta(days=1))
        )
        assert "ix_jobs_finished_at" in plan(
            JobFilter(finished_after=day, finished_before=day + timedelta(days=1))
        )


def test_an_error_change_committed_while_the_indexer_works_is_found_after_it(make_app, backend):
    """PostgreSQL: a failure commits between the indexer's read of the noted jobs and its
    forgetting of those notes; its own note is kept, so its errors are found (the indexer
    forgets only the notes it read). SQLite: the failure waits for the indexer's write lock."""
    app = make_app()
    job = app.enqueue(JobSpec(task="t", args=("plain",)))

    def fail(message: str) -> None:
        error = {"attempt": 1, "type": "ValueError", "message": message, "traceback": None, "at": "2026"}
        with app.db.begin() as conn:
            errors = conn.execute(select(jobs.c.errors).where(jobs.c.id == job.id)).scalar_one()
            conn.execute(update(jobs).where(jobs.c.id == job.id).values(errors=[*errors, error]))

    fail("first kiwi")
    late = threading.Thread(target=fail, args=("second mango",))

    def between(conn, cursor, statement: str, *args) -> None:
        if statement.startswith("DELETE FROM job_search_dirty") and not late.is_alive() and not late.ident:
            late.start()
            late.join(0.5 if backend == "sqlite" else 30)  # SQLite: it waits for this transaction
            assert late.is_alive() is (backend == "sqlite")

    event.listen(app.db.engine, "before_cursor_execute", between)
    try:
        assert index_pending(app.db) >= 2
    finally:
        event.remove(app.db.engine, "before_cursor_execute", between)
    late.join(30)
    assert late.ident and not late.is_alive()
    for term in ("kiwi", "mango"):
        assert [j.id for j in app.find_jobs(JobFilter(error=term))] == [job.id], term
    index_pending(app.db)
    for term in ("kiwi", "mango"):
        assert [j.id for j in app.find_jobs(JobFilter(error=term))] == [job.id], term
    with app.db.read() as conn:
        assert not conn.exec_driver_sql("SELECT count(*) FROM job_search_dirty").scalar_one()


_ONE_JOB = (
    "INSERT INTO jobs (task, queue, priority, state, args, kwargs, max_attempts, timeout, scheduled_at, "
    "created_at, errors) VALUES ('t', 'default', 0, 'available', %(args)s, '{}', 1, 60, now(), now(), '[]')"
)


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)  # SQLite: rowids in commit order
def test_ids_cached_by_a_session_before_the_mark_moved_are_found(make_app):
    """PostgreSQL, an operator's `ALTER SEQUENCE ... CACHE 10`: a session draws ten ids at
    once and hands them out in later transactions, so an id below the sequence's last value
    can be committed by a transaction that began after the mark passed it. The indexer must
    not move the mark past such ids (searches then scan), and the job is found."""
    app = make_app()
    with app.db.begin() as conn:
        conn.exec_driver_sql("ALTER SEQUENCE jobs_id_seq CACHE 10")
    with app.db.engine.connect() as held:  # one session: its cache of ids is its own
        held.exec_driver_sql(_ONE_JOB, {"args": '["first"]'})
        held.commit()
        index_pending(app.db)
        held.exec_driver_sql(_ONE_JOB, {"args": '["cached kiwi"]'})
        held.commit()
    found = [j.id for j in app.find_jobs(JobFilter(text="cached kiwi"))]
    assert found == _reference(app, JobFilter(text="cached kiwi")) and len(found) == 1
    index_pending(app.db)
    assert [j.id for j in app.find_jobs(JobFilter(text="cached kiwi"))] == found


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)  # SQLite: rowids in commit order
def test_a_session_opened_while_the_indexer_works_holds_the_next_mark(make_app, db_url):
    """PostgreSQL: the indexer reads the open transactions twice in one transaction (before and
    after a chunk), and `pg_stat_activity` is a snapshot kept for the whole transaction: a
    session that connected in between, holding an id it has not committed, was left out of the
    second read, so the mark passed its id and its job was never found."""
    app = make_app()
    app.enqueue(JobSpec(task="t", args=("first",)))
    late: list[psycopg.Connection] = []

    def during_the_chunk(conn, cursor, statement: str, *args) -> None:
        if statement.startswith("WITH chunk AS") and not late:
            dsn = make_url(db_url).set(drivername="postgresql").render_as_string(hide_password=False)
            late.append(psycopg.connect(dsn))  # a new session, in a transaction until committed
            late[0].execute(_ONE_JOB, {"args": '["late kiwi"]'})

    event.listen(app.db.engine, "before_cursor_execute", during_the_chunk)
    try:
        index_pending(app.db)
    finally:
        event.remove(app.db.engine, "before_cursor_execute", during_the_chunk)
    with late[0]:
        app.enqueue(JobSpec(task="t", args=("after",)))  # something to index past the late id
        index_pending(app.db)
        late[0].commit()
    found = [j.id for j in app.find_jobs(JobFilter(text="late kiwi"))]
    assert found == _reference(app, JobFilter(text="late kiwi")) and len(found) == 1
    index_pending(app.db)
    assert [j.id for j in app.find_jobs(JobFilter(text="late kiwi"))] == found


def test_a_bulk_on_an_autocommit_connection_draws_its_ids_in_its_own_transaction(
    make_app, backend, monkeypatch
):
    """A caller's connection in AUTOCOMMIT: a bulk enqueue must not draw its ids in one
    transaction and write them in the next (PostgreSQL: an indexer reading the target in
    between saw no transaction holding them and moved the mark past them)."""
    app = make_app()
    app.enqueue(JobSpec(task="t", args=("first",)))
    passed: list[int] = []
    copy = psycopg.Cursor.copy

    def index_first(cursor, statement, *args, **kwargs):
        if not passed:
            passed.append(index_pending(app.db))
        return copy(cursor, statement, *args, **kwargs)

    monkeypatch.setattr(psycopg.Cursor, "copy", index_first)
    with app.db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        app.enqueue_many([JobSpec(task="t", args=("bulk kiwi",))] * 3, connection=conn)
    assert passed or backend == "sqlite"
    app.enqueue(JobSpec(task="t", args=("after",)))
    index_pending(app.db)
    found = [j.id for j in app.find_jobs(JobFilter(text="bulk kiwi"))]
    assert found == _reference(app, JobFilter(text="bulk kiwi")) and len(found) == 3
