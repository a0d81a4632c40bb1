"""The enqueue fast paths: a one-call enqueue on a pooled driver connection (`Database.single`)
and the bulk insert, on both backends, against the guarantees of the ordinary path."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import fields, replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from ledgerflow import App, BadInput, DatabaseUnavailable, JobState
from ledgerflow.db.backends import dumps
from ledgerflow.db.tables import jobs
from ledgerflow.engine.jobs import JobSpec


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


@pytest.mark.parametrize(
    "db_url", ["postgresql"], indirect=True
)  # a SQLite file cannot be ended under the pool
def test_a_one_call_enqueue_on_a_dead_connection_is_retryable_and_the_next_one_works(make_app):
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


payloads = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**62), 2**62)
    | st.floats(-1e12, 1e12)  # jsonb prints numbers without exponent: huge floats read back as ints
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=12,
)


def test_any_accepted_payload_is_stored_as_given_by_the_one_call_and_the_bulk_insert(make_app):
    app = make_app()

    @settings(max_examples=40, deadline=None)
    @given(
        args=st.lists(payloads, max_size=3), kwargs=st.dictionaries(st.text(max_size=8), payloads, max_size=3)
    )
    def check(args: list[Any], kwargs: dict[str, Any]) -> None:
        try:
            spec = JobSpec(task="echo", args=tuple(args), kwargs=kwargs)
        except BadInput:  # NUL, lone surrogates: refused before anything is stored
            return
        assert (spec.args_json, spec.kwargs_json) == (dumps(args), dumps(kwargs))
        one = app.enqueue(spec)
        (bulk,) = app.enqueue_many([spec])
        for job in (one, app.get_job(one.id), app.get_job(bulk)):
            assert (job.args, job.kwargs) == (args, kwargs)

    check()


def test_a_payload_changed_after_prepare_is_stored_as_it_was_checked(make_app):
    app = make_app()

    @app.task(name="takes")
    def takes(data: dict[str, float]) -> None: ...

    data = {"n": 1.5}
    spec = takes.prepare(data)
    data["n"] = float("nan")  # would have been refused
    one = app.enqueue(spec)
    (bulk,) = app.enqueue_many([spec])
    assert app.get_job(one.id).args == app.get_job(bulk).args == [{"n": 1.5}]


def test_a_payload_changed_after_prepare_is_stored_as_checked_by_every_insert_path(make_app):
    """Unique, dependent and scheduled jobs (the row-by-row insert) too: a payload grown past
    the limit or made unencodable after `prepare` is neither stored unchecked nor a crash."""
    app = make_app()

    @app.task(name="takes")
    def takes(data: dict[str, Any]) -> None: ...

    parent = app.enqueue(takes.prepare({}))
    data: dict[str, Any] = {"n": 1.5}
    specs = [
        takes.configure(unique_key="once").prepare(data),
        takes.configure(depends_on=(parent.id,)).prepare(data),
        replace(takes.prepare(data), schedule_id=7, fire_time=datetime.now(UTC)),
    ]
    data["n"] = float("nan")  # would have been refused
    data["blob"] = "x" * 2_000_000  # over the payload limit
    ids = [app.enqueue(specs[0]).id, *app.enqueue_many(specs[1:])]
    assert [app.get_job(i).args for i in ids] == [[{"n": 1.5}]] * 3


@pytest.mark.parametrize("microsecond", [0, 123456])
def test_a_scheduled_time_reads_back_exactly_from_both_insert_paths(make_app, microsecond):
    app = make_app()

    @app.task(name="later")
    def later() -> None: ...

    when = datetime(2031, 5, 6, 7, 8, 9, microsecond, tzinfo=timezone(timedelta(hours=9)))
    spec = later.configure(scheduled_at=when).prepare()
    one = app.enqueue(spec)
    (bulk,) = app.enqueue_many([spec])
    for job in (one, app.get_job(one.id), app.get_job(bulk)):
        assert job.scheduled_at == when and job.state == JobState.SCHEDULED


def test_a_prepared_spec_is_checked_and_equal_like_one_built_whole(tmp_path):
    app = App(database_url=f"sqlite:///{tmp_path}/unused.db")

    @app.task(name="task", queue="q1", priority=3)
    def task(*args: Any, **kwargs: Any) -> None: ...

    for _ in range(3):  # the first spec is built whole, the later ones from it
        spec = task.prepare(1, "two", three=[3])
        assert spec == JobSpec(task="task", args=(1, "two"), kwargs={"three": [3]}, queue="q1", priority=3)
        assert (spec.args_json, spec.kwargs_json) == ('[1,"two"]', '{"three":[3]}')
        with pytest.raises(BadInput, match="args of task 'task': nan is not a JSON number"):
            task.prepare(float("nan"))
        with pytest.raises(BadInput, match=r"priority must be 0\.\.9"):
            task.configure(priority=10).prepare()
    later = task.configure(delay=5)
    assert later.prepare().delay == later.prepare(1).delay == 5 and later.prepare(1).args == (1,)


def test_a_one_call_enqueue_refused_by_a_held_lock_is_reported_not_stored(make_app, backend):
    """A writer outside the pool holds the table past the lock wait: the enqueue says it was not
    stored, stores nothing, and the pool's only connection serves the next one."""
    app = make_app(db_pool_size=1, db_lock_timeout=0.3, sqlite_busy_timeout=0.3)

    @app.task(name="plain")
    def plain(i: int) -> None: ...

    app.enqueue(plain.prepare(0))
    if backend == "postgresql":
        holder: Any = psycopg.connect(app.db.url.replace("+psycopg", ""))
        holder.execute("LOCK TABLE jobs IN EXCLUSIVE MODE")
    else:
        holder = sqlite3.connect(app.db.url.removeprefix("sqlite:///"), isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(DatabaseUnavailable):
            app.enqueue(plain.prepare(1))
    finally:
        holder.rollback() if backend == "postgresql" else holder.execute("ROLLBACK")
        holder.close()
    app.enqueue(plain.prepare(2))
    with app.db.read() as conn:
        assert sorted(conn.execute(select(jobs.c.args)).scalars()) == [[0], [2]]


def test_concurrent_bulk_enqueues_return_each_job_its_own_id(make_app):
    """Bulks of plain and unique jobs from four threads at once: every returned id is the row
    of the spec in that position (ids drawn per bulk, in order, whatever the others drew)."""
    app = make_app()

    @app.task(name="plain")
    def plain(marker: str) -> None: ...

    returned: dict[str, int] = {}
    errors: list[BaseException] = []

    def bulks(thread: int) -> None:
        try:
            for n in range(4):
                markers = [f"{thread}-{n}-{i}" for i in range(150)]
                specs = [
                    plain.configure(unique_key=m).prepare(m) if i % 10 == 0 else plain.prepare(m)
                    for i, m in enumerate(markers)
                ]
                returned.update(zip(markers, app.enqueue_many(specs), strict=True))
        except BaseException as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=bulks, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    with app.db.read() as conn:
        stored = {row.args[0]: row.id for row in conn.execute(select(jobs.c.id, jobs.c.args))}
    assert stored == returned and len(stored) == 4 * 4 * 150


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"queue": "mail", "priority": 0, "max_attempts": 2, "timeout": 7.5},
        {"delay": 30},
        {"scheduled_at": datetime(2030, 1, 2, 3, 4, 5, 6, tzinfo=timezone(timedelta(hours=7)))},
    ],
)
def test_a_one_call_enqueue_returns_the_job_as_it_reads_back(make_app, options):
    """The returned `Job` is built without its dataclass `__init__` (`Job.inserted`): every
    field is set, and equal to the row read back."""
    app = make_app()

    @app.task(name="plain")
    def plain(*args: Any, **kwargs: Any) -> None: ...

    job = app.enqueue(plain.configure(**options).prepare(1, "ไทย", {"a": [None]}, k=2.5))
    assert set(vars(job)) == {f.name for f in fields(job)}
    assert app.get_job(job.id) == job
    assert job.args == [1, "ไทย", {"a": [None]}] and job.kwargs == {"k": 2.5}


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # PostgreSQL lends a pooled connection
def test_a_one_call_enqueue_waits_for_another_threads_at_most_the_busy_timeout(make_app):
    """SQLite's one-call statements share one connection, one thread at a time: a thread that
    keeps it past the busy timeout makes another's enqueue fail as unavailable, nothing stored."""
    app = make_app(sqlite_busy_timeout=0.3)

    @app.task(name="plain")
    def plain(i: int) -> None: ...

    app.enqueue(plain.prepare(0))
    taken, release = threading.Event(), threading.Event()

    def keep() -> None:
        with app.db.single():
            taken.set()
            release.wait(10)

    holder = threading.Thread(target=keep)
    holder.start()
    try:
        assert taken.wait(10)
        started = time.monotonic()
        with pytest.raises(DatabaseUnavailable, match=r"held its connection for 0\.3 s"):
            app.enqueue(plain.prepare(1))
        assert 0.25 < time.monotonic() - started < 5
    finally:
        release.set()
        holder.join(10)
    app.enqueue(plain.prepare(2))
    with app.db.read() as conn:
        assert sorted(conn.execute(select(jobs.c.args)).scalars()) == [[0], [2]]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_forked_process_enqueues_on_a_connection_of_its_own(make_app):
    """The child of a fork made while another thread held the one-call connection neither waits
    for it nor uses it; the parent's connection still serves the parent afterwards."""
    app = make_app(sqlite_busy_timeout=2)

    @app.task(name="plain")
    def plain(i: int) -> None: ...

    parent_conn = None
    with app.db.single() as conn:  # opened in the parent
        parent_conn = conn
    taken, release = threading.Event(), threading.Event()

    def keep() -> None:
        with app.db.single():
            taken.set()
            release.wait(10)

    holder = threading.Thread(target=keep)
    holder.start()
    assert taken.wait(10)
    pid = os.fork()
    if pid == 0:  # the child: exit code 0 only if its own connection stored the job
        code = 1
        try:
            job = app.enqueue(plain.prepare(7))
            with app.db.single() as own:
                code = 0 if own is not parent_conn and app.get_job(job.id).args == [7] else 2
        finally:
            os._exit(code)
    release.set()
    holder.join(10)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    app.enqueue(plain.prepare(8))
    with app.db.single() as conn:
        assert conn is parent_conn
    with app.db.read() as conn:
        assert sorted(conn.execute(select(jobs.c.args)).scalars()) == [[7], [8]]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_the_one_call_connection_is_replaced_after_a_dispose_or_an_open_transaction(make_app):
    app = make_app()

    @app.task(name="plain")
    def plain(i: int) -> None: ...

    app.enqueue(plain.prepare(0))
    with app.db.single() as first:
        first.execute("BEGIN IMMEDIATE")  # left open: the connection must not serve again
    with app.db.single() as second:
        assert second is not first and not second.in_transaction
    app.enqueue(plain.prepare(1))  # the write lock was not left held
    app.db.dispose()
    with pytest.raises(sqlite3.ProgrammingError):
        second.execute("SELECT 1")  # closed by the dispose
    app.enqueue(plain.prepare(2))
    with app.db.read() as conn:
        assert sorted(conn.execute(select(jobs.c.args)).scalars()) == [[0], [1], [2]]


def test_a_bulk_of_many_kinds_of_job_stores_each_as_a_one_call_enqueue_does(make_app):
    """The bulk insert formats the cells around the payload once per kind of job (PostgreSQL's
    COPY text): jobs of different tasks and options, interleaved, each read back as the same
    spec enqueued alone."""
    app = make_app()

    @app.task(name="first")
    def first(*args: Any, **kwargs: Any) -> None: ...

    @app.task(name="second.<locals>:x-y", queue="mail", priority=0, max_attempts=1, timeout=float("inf"))
    def second(*args: Any, **kwargs: Any) -> None: ...

    at = datetime(2031, 5, 6, 7, 8, 9, 123456, tzinfo=timezone(timedelta(hours=-3)))
    kinds = [first, second, first.configure(delay=60), second.configure(scheduled_at=at, timeout=0.25)]
    kinds.append(first.configure(delay=3600))  # differs from the third by its time alone
    specs = [
        kinds[i % 5].prepare(i, "tab\there", "back\\slash", 'quote"', "ไ\n", k={"v": [i, None, 1.5]})
        for i in range(40)
    ]
    ids = app.enqueue_many(specs)
    alone = [app.enqueue(spec) for spec in specs[:5]]

    def stored(job: Any) -> tuple[Any, ...]:
        kept = ("task", "queue", "priority", "state", "max_attempts", "timeout")
        return tuple(getattr(job, name) for name in kept)

    for i, job_id in enumerate(ids):
        job = app.get_job(job_id)
        assert stored(job) == stored(alone[i % 5])
        assert (job.args, job.kwargs) == (list(specs[i].args), specs[i].kwargs)
        if i % 5 == 3:
            assert job.scheduled_at == at
        elif i % 5 in (2, 4):
            delay = 60 if i % 5 == 2 else 3600
            assert abs((job.scheduled_at - job.created_at).total_seconds() - delay) < 1


@pytest.mark.parametrize(
    ("options", "why"),
    [
        ({"max_attempts": 2.5}, "max_attempts must be an integer"),
        ({"max_attempts": True}, "max_attempts must be an integer"),
        ({"timeout": float("nan")}, "timeout must be > 0"),
    ],
)
def test_options_either_path_would_store_differently_are_refused(tmp_path, options, why):
    app = App(database_url=f"sqlite:///{tmp_path}/x.db", log_level="WARNING")

    @app.task(name="plain")
    def plain() -> None: ...

    with pytest.raises(BadInput, match=why):
        plain.configure(**options).prepare()


_RACER = """
import json, sys, threading
from ledgerflow import App
app = App(database_url=sys.argv[1], log_level="WARNING")
task = app.task(name="plain")(lambda marker: None)
returned, errors = {}, []
def enqueue(thread):
    try:
        for i in range(100):
            marker = f"{sys.argv[2]}-{thread}-{i}"
            returned[marker] = app.enqueue(task.prepare(marker)).id
    except BaseException as error:
        errors.append(repr(error))
threads = [threading.Thread(target=enqueue, args=(t,)) for t in range(3)]
for t in threads: t.start()
for t in threads: t.join()
app.close()
print(json.dumps({"returned": returned, "errors": errors}))
"""


def test_one_call_enqueues_racing_from_processes_and_threads_each_store_one_job_under_its_id(db_url):
    """Three processes of three threads each enqueue one job at a time into one database: every
    call's id is the row of its own payload (SQLite: the threads of a process share one
    connection), none lost, none twice."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    racers = [
        subprocess.Popen([sys.executable, "-c", _RACER, db_url, f"p{n}"], stdout=subprocess.PIPE, env=env)
        for n in range(3)
    ]
    returned: dict[str, int] = {}
    for racer in racers:
        out, _ = racer.communicate(timeout=120)
        assert racer.returncode == 0
        result = json.loads(out)
        assert result["errors"] == []
        returned.update(result["returned"])
    app = App(database_url=db_url, log_level="WARNING")
    try:
        with app.db.read() as conn:
            stored = {row.args[0]: row.id for row in conn.execute(select(jobs.c.id, jobs.c.args))}
    finally:
        app.close()
    assert len(returned) == 900 and stored == returned
