"""A hostile review of the enqueue fast paths (payload shortcut, PostgreSQL's COPY text,
SQLite's one-call connection): each test is a case the fast path could get wrong."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import select

from ledgerflow import BadInput, DatabaseUnavailable
from ledgerflow.db.tables import jobs
from ledgerflow.engine.jobs import JobSpec
from ledgerflow.payload import PayloadError, check_json

#: Text that COPY's text format, JSON or a line-based reader could take for structure.
TRICKY = [
    "tab\there",
    "new\nline",
    "carriage\rreturn",
    "\\.",
    "\\.\n",
    "\n\\.\n",
    "\\N",
    "back\\slash\\",
    "\\\\t",
    "\\u0000",
    '"quote"',
    "\u2028line\u2029para\x85nel",
    "\x0b\x0c\x1b\x7f",
    "ไทย\t\\",
]


def _stored(job: Any) -> tuple[Any, ...]:
    return (job.task, job.queue, job.priority, job.state, job.args, job.kwargs, job.max_attempts, job.timeout)


def test_text_copy_could_misread_is_stored_exactly_by_the_bulk_and_the_one_call(make_app):
    """Tabs, newlines, backslashes, `\\.` and unicode separators in args, kwargs values and
    keys: every row reads back as enqueued, nothing shifted into another column or row."""
    app = make_app()
    specs = [
        JobSpec(task="echo", args=(text, i, [text]), kwargs={text: text, "n": i})
        for i, text in enumerate(TRICKY)
    ]
    ids = app.enqueue_many(specs)
    one = [app.enqueue(spec).id for spec in specs]
    assert len(set(ids) | set(one)) == 2 * len(specs)
    for spec, bulk_id, one_id in zip(specs, ids, one, strict=True):
        for job_id in (bulk_id, one_id):
            job = app.get_job(job_id)
            assert (job.args, job.kwargs) == (list(spec.args), spec.kwargs)
            assert (job.task, job.queue, job.priority, job.max_attempts) == ("echo", "default", 5, 5)
    with app.db.read() as conn:
        assert conn.execute(select(jobs.c.id)).scalars().all() == sorted([*ids, *one])


class _Odd(int):
    """An int whose text is not its number (as an enum or a units type may print itself)."""

    def __str__(self) -> str:
        return "high"

    __repr__ = __str__


def test_options_of_an_int_subclass_are_stored_by_the_bulk_as_by_the_one_call(make_app):
    app = make_app()
    spec = JobSpec(task="echo", args=(1,), priority=_Odd(1), max_attempts=_Odd(3))
    one = app.enqueue(spec)
    (bulk,) = app.enqueue_many([spec])
    for job in (app.get_job(one.id), app.get_job(bulk)):
        assert (job.priority, job.max_attempts) == (1, 3)
        assert type(job.priority) is int and type(job.max_attempts) is int


def test_an_integer_too_long_to_read_back_is_refused_as_a_bad_payload():
    """Python refuses to convert an int of more than `sys.get_int_max_str_digits()` digits to
    text (and back): refused like any other payload it cannot store, not a ValueError."""
    limit = sys.get_int_max_str_digits()
    assert check_json([10 ** (limit - 1)], "args") == f"[1{'0' * (limit - 1)}]"
    for value in ([10**limit], {"k": [-(10 ** (limit * 2))]}):
        with pytest.raises(PayloadError, match=f"args: an integer of more than {limit} digits"):
            check_json(value, "args")
    with pytest.raises(PayloadError, match="kwargs of task 'echo': an integer of more than"):
        JobSpec(task="echo", kwargs={"n": 10**limit})


@pytest.mark.parametrize(
    ("options", "why"),
    [
        ({"max_attempts": 2**31}, "max_attempts must be <= 2147483647"),
        ({"timeout": 10**400}, "timeout must be > 0 seconds"),
        ({"timeout": "5"}, "timeout must be > 0 seconds, got '5'"),
        ({"delay": float("nan")}, "delay must be >= 0 seconds, due before 9999-12-30, got nan"),
        ({"delay": float("inf")}, "delay must be >= 0 seconds"),
        ({"delay": 1e12}, "delay must be >= 0 seconds"),
        ({"delay": 10**400}, "delay must be >= 0 seconds"),
        ({"scheduled_at": datetime(9999, 12, 31, 23, tzinfo=timezone(timedelta(hours=-5)))}, "within years"),
        ({"scheduled_at": datetime(1, 1, 1, 1, tzinfo=timezone(timedelta(hours=5)))}, "within years"),
        ({"unique_key": 5}, "unique_key must be 1..255 characters"),
    ],
)
def test_options_no_insert_could_store_are_refused_as_bad_input(options, why):
    """Refused when the spec is made, naming the value, not an OverflowError, ValueError or
    TypeError at the insert (or PostgreSQL's integer out of range where SQLite stored it)."""
    with pytest.raises(BadInput, match=re.escape(why)):
        JobSpec(task="echo", **options)


def test_a_bulk_of_mixed_kinds_stores_what_one_by_one_enqueues_store(make_app):
    """Plain, unique (a key repeated within the bulk), dependent, scheduled and delayed jobs of
    several priorities, interleaved: the bulk's ids, in order, read back as the same specs
    enqueued one at a time into a second database state (same ids relative to the first)."""
    app = make_app()
    (parent,) = app.enqueue_many([JobSpec(task="parent")])
    at = datetime(2030, 1, 2, 3, 4, 5, 6, tzinfo=UTC)

    def specs(tag: str) -> list[JobSpec]:
        made = []
        for i in range(30):
            kind = i % 6
            options: dict[str, Any] = {"priority": i % 10}
            if kind == 1:
                options["unique_key"] = f"{tag}-u{i % 4}"  # repeats inside the bulk
            elif kind == 2:
                options["depends_on"] = (parent,)
            elif kind == 3:
                options["scheduled_at"] = at
            elif kind == 4:
                options["delay"] = 120
            made.append(JobSpec(task=f"t{kind}", queue=f"q{kind % 2}", args=(i, "a\tb"), **options))
        return made

    bulk = app.enqueue_many(specs("bulk"))
    alone = [app.enqueue(spec).id for spec in specs("alone")]
    assert len(bulk) == len(alone) == 30
    for i, (b, a) in enumerate(zip(bulk, alone, strict=True)):
        jb, ja = app.get_job(b), app.get_job(a)
        assert _stored(jb) == _stored(ja), i
        assert (jb.unique_key is None) == (ja.unique_key is None)
        if i % 6 != 1:
            assert jb.args == [i, "a\tb"]
        if i % 6 == 3:
            assert jb.scheduled_at == ja.scheduled_at == at
        if i % 6 == 4:
            assert abs((jb.scheduled_at - jb.created_at) - timedelta(seconds=120)) < timedelta(seconds=1)

    def same_job(ids: list[int]) -> list[tuple[int, ...]]:  # positions grouped by the id returned
        return sorted({tuple(i for i in range(30) if ids[i] == x) for x in ids})

    assert same_job(bulk) == same_job(alone) != [(i,) for i in range(30)]


_HOLDER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
conn.execute("UPDATE jobs SET queue = 'held'")  # a write, undone if killed
print("held", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("COMMIT")
print("committed", flush=True)
"""


def _hold_write_lock(path: str, seconds: float) -> subprocess.Popen[str]:
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, path, str(seconds)], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    return holder


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_one_call_enqueue_after_a_writer_killed_mid_transaction_stores_only_its_own_job(make_app):
    app = make_app(sqlite_busy_timeout=5)
    path = app.db.engine.url.database
    assert path is not None
    app.enqueue(JobSpec(task="before"))  # the one-call connection is open before the other writer
    holder = _hold_write_lock(path, 60)
    holder.send_signal(signal.SIGKILL)
    holder.wait(10)
    started = time.monotonic()
    job = app.enqueue(JobSpec(task="after"))
    assert time.monotonic() - started < 2  # the dead writer's lock went with it
    with app.db.read() as conn:
        rows = conn.execute(select(jobs.c.task, jobs.c.queue).order_by(jobs.c.id)).all()
    assert [tuple(r) for r in rows] == [("before", "default"), ("after", "default")]
    assert app.get_job(job.id).task == "after"


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_one_call_enqueue_waits_out_a_short_writer_and_reports_a_long_one_once(make_app):
    """Another process holding the write lock: within the busy timeout the enqueue waits and
    succeeds; past it, one DatabaseUnavailable after about the busy timeout, nothing stored."""
    app = make_app(sqlite_busy_timeout=1.5)
    path = app.db.engine.url.database
    assert path is not None
    app.enqueue(JobSpec(task="warm"))
    short = _hold_write_lock(path, 0.4)
    app.enqueue(JobSpec(task="waited"))
    assert short.wait(10) == 0
    long = _hold_write_lock(path, 5)
    try:
        started = time.monotonic()
        with pytest.raises(DatabaseUnavailable, match=r"database unavailable \(sqlite\).*locked"):
            app.enqueue(JobSpec(task="refused"))
        assert 1.2 < time.monotonic() - started < 3.5
    finally:
        long.kill()
        long.wait(10)
    app.enqueue(JobSpec(task="later"))
    with app.db.read() as conn:
        rows = conn.execute(select(jobs.c.task, jobs.c.queue).order_by(jobs.c.id)).all()
    assert [tuple(r) for r in rows] == [("warm", "held"), ("waited", "default"), ("later", "default")]


def test_an_enqueue_given_the_callers_connection_joins_its_transaction(make_app):
    app = make_app()
    spec = JobSpec(task="echo", args=(1,))
    with pytest.raises(RuntimeError), app.transaction() as tx:
        tx.enqueue(spec)
        tx.enqueue_many([spec, spec])
        raise RuntimeError("roll back")
    with pytest.raises(RuntimeError), app.db.begin() as conn:
        app.enqueue(spec, connection=conn)
        app.enqueue_many([spec], connection=conn)
        raise RuntimeError("roll back")
    with app.transaction() as tx:
        kept = tx.enqueue(spec)
    with app.db.read() as conn:
        assert conn.execute(select(jobs.c.id)).scalars().all() == [kept.id]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_forked_process_disposes_without_waiting_for_or_closing_the_parents_connection(make_app):
    """A child forked while a thread of the parent held the one-call connection can close its
    database (as a pre-fork server's child does) at once; the parent's connection keeps working."""
    app = make_app(sqlite_busy_timeout=2)
    app.enqueue(JobSpec(task="before"))
    with app.db.single() as conn:
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
    if pid == 0:  # the child: exit code 0 only if it disposed at once and could enqueue after
        code = 1
        try:
            started = time.monotonic()
            app.db.dispose()
            if time.monotonic() - started < 1:
                code = 0 if app.get_job(app.enqueue(JobSpec(task="child")).id).task == "child" else 2
        finally:
            os._exit(code)
    try:
        deadline = time.monotonic() + 10
        while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        if done[0] == 0:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("the child's dispose waited for the parent's connection")
        assert os.waitstatus_to_exitcode(done[1]) == 0
    finally:
        release.set()
        holder.join(10)
    app.enqueue(JobSpec(task="after"))
    with app.db.single() as conn:
        assert conn is parent_conn
    with app.db.read() as conn:
        tasks = conn.execute(select(jobs.c.task).order_by(jobs.c.id)).scalars().all()
    assert tasks == ["before", "child", "after"]
