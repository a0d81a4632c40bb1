"""PostgreSQL runs the worker's claim on the driver's connection (`DriverStatement`): the text and
parameters it sends are the very ones SQLAlchemy sends for the same claim (one rendering per number
of queues and tasks: `queue IN (…)` expanded, which PostgreSQL plans as `queue = …` for one
queue), its rows become the same jobs, and the connection's cursor listeners (tracing, the fault
tests) see it as they see SQLAlchemy's statements. The version taken back in f441387 sent
`= ANY(array)` instead, and the planner then sorted a large backlog (test_backlog_reads)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from sqlalchemy import (
    Column,
    Integer,
    MetaData,
    String,
    Table,
    bindparam,
    cast,
    event,
    insert,
    select,
    update,
)
from sqlalchemy.engine.default import DefaultExecutionContext
from sqlalchemy.exc import DatabaseError, DataError, IntegrityError, OperationalError, ProgrammingError

from ledgerflow.db.backends import driver_of
from ledgerflow.db.database import is_transient
from ledgerflow.db.postgres import DriverStatement, conninfo, driver_error
from ledgerflow.db.tables import jobs
from ledgerflow.engine.jobs import JobSpec
from ledgerflow.engine.leases import LeaseSQL, _claimed_job
from ledgerflow.errors import DatabaseUnavailable
from tests.faults import StatementFaults

pytestmark = pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)  # SQLite: SQLAlchemy's

#: (queues, tasks) of the claims compared: one queue (`=`), several, and repeated shapes
SHAPES = [
    (["default"], ["t"]),
    (["default"], ["t", "u", "v"]),
    (["a", "default"], ["t"]),
    (["a", "b", "default"], ["u", "t"]),
    (["default"], ["t"]),
]


@contextmanager
def _sent(app: Any) -> Iterator[list[tuple[str, Any, bool]]]:
    """(statement, parameters, run by SQLAlchemy) of each cursor execute meanwhile."""
    seen: list[tuple[str, Any, bool]] = []

    def record(_conn: Any, _cursor: Any, statement: str, parameters: Any, context: Any, _many: bool) -> None:
        seen.append((statement, parameters, isinstance(context, DefaultExecutionContext)))

    event.listen(app.db.engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(app.db.engine, "before_cursor_execute", record)


def _jobs(app: Any) -> list[int]:
    """Jobs of every column kind a claim returns: JSON payloads, a unique key, a trace context,
    several queues, tasks and priorities."""
    now = datetime.now(UTC)
    specs = [
        JobSpec(task="t", args=(1, "é", None, [1.5]), kwargs={"k": {"n": [1, 2]}}, priority=5),
        JobSpec(task="u", queue="a", unique_key="once", scheduled_at=now - timedelta(minutes=1)),
        JobSpec(task="v", priority=0, timeout=2.5, max_attempts=9),
        JobSpec(task="t", queue="b", kwargs={"deep": {"x": "y\\z"}}),
        JobSpec(task="t"),
    ]
    ids = [app.enqueue(spec).id for spec in specs]
    traced = {"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"}
    with app.db.begin() as conn:
        conn.execute(update(jobs).where(jobs.c.id == ids[-1]).values(trace_context=traced))
    return ids


def test_the_claim_sends_what_sqlalchemy_sends_and_reads_the_same_jobs(make_app):
    app = make_app()
    _jobs(app)
    sql = LeaseSQL(app.db, 6.0)
    assert sql._claim_driver is not None
    for queues, tasks in SHAPES:
        params = {"queues": queues, "tasks": tasks, "limit": 10, "worker": "w\x00x", "token": 2**62 - 1}
        with app.db.begin() as conn, _sent(app) as seen:
            savepoint = conn.begin_nested()  # one transaction: the same now() in both claims
            by_sqlalchemy = conn.execute(sql._claim, params).all()
            savepoint.rollback()
            by_driver = sql._claim_driver.rows(conn, params)
            conn.rollback()
        claims = [(s, p) for s, p, _ in seen if s.startswith("WITH claimed AS")]
        assert [ours for s, _, ours in seen if s.startswith("WITH claimed AS")] == [True, False]
        assert claims[0] == claims[1]  # the text and every parameter, as sent to psycopg
        statement, sent = claims[1]
        assert (
            f"jobs.queue IN ({', '.join(f'%(queues_{i})s::VARCHAR' for i in range(1, len(queues) + 1))})"
            in statement
        )
        assert "ANY (%(queues" not in statement and "ANY (%(tasks" not in statement
        assert sent["worker"] == "w\ufffdx"  # the String type's bind processing (no NUL)
        assert by_driver and [tuple(r) for r in by_sqlalchemy] == by_driver
        assert [_claimed_job(r) for r in by_sqlalchemy] == [_claimed_job(r) for r in by_driver]
    assert len(sql._claim_driver._shapes) == 4  # one rendering per shape, kept


def test_the_worker_claim_runs_the_driver_statement(make_app):
    """`LeaseSQL.claim` takes the jobs through the driver statement, in claim order, with their
    execution rows, and announces it once to the cursor listeners."""
    app = make_app()
    ids = _jobs(app)
    sql = LeaseSQL(app.db, 6.0)
    with app.db.begin() as conn, _sent(app) as seen:
        claims = sql.claim(conn, worker_id="w", queues=["a", "b", "default"], tasks=["t", "u", "v"], limit=10)
    assert [(s.startswith("WITH claimed AS"), ours) for s, _, ours in seen] == [(True, False)]
    assert sorted(c.job.id for c in claims) == sorted(ids)
    assert [c.job.priority for c in claims] == sorted(c.job.priority for c in claims)
    assert all(c.job.state == "running" and c.job.worker_id == "w" and c.job.attempt == 1 for c in claims)
    assert all(c.job.scheduled_at.tzinfo is UTC and c.job.started_at is not None for c in claims)
    assert {c.job.args[1] for c in claims if c.job.args} == {"é"}
    with app.db.read() as conn:
        executions = conn.exec_driver_sql("SELECT job_id, status FROM job_executions").all()
    assert sorted(executions) == sorted((i, "running") for i in ids)


@pytest.mark.parametrize("mode", ["error_before", "error_after"])
def test_a_fault_at_the_driver_claim_is_seen_as_at_any_statement(make_app, mode):
    """tests/faults.py numbers the driver statement and fails it: before it, nothing is claimed;
    after it (an autocommit claim: the statement committed), the jobs are claimed though the
    caller saw an error, and the token finds them (`reclaim`)."""
    app = make_app()
    ids = _jobs(app)
    sql = LeaseSQL(app.db, 6.0)
    counting = StatementFaults().install(app.db.engine)
    with app.db.autocommit() as conn:
        assert sql.claim(conn, worker_id="w", queues=["zzz"], tasks=["t"], limit=10) == []
    counting.uninstall()
    assert [s.sql.startswith("WITH claimed AS") and s.autocommit for s in counting.log] == [True]
    faults = StatementFaults(mode, 1).install(app.db.engine)
    try:
        with pytest.raises(DatabaseUnavailable, match="injected fault"), app.db.autocommit() as conn:
            sql.claim(
                conn, worker_id="w", queues=["a", "b", "default"], tasks=["t", "u", "v"], limit=10, token=5
            )
    finally:
        faults.uninstall()
    assert faults.fired is not None and faults.fired.sql.startswith("WITH claimed AS")
    with app.db.begin() as conn:
        found = sql.reclaim(conn, worker_id="w", token=5)
    assert sorted(c.job.id for c in found) == ([] if mode == "error_before" else sorted(ids))


def test_a_listener_that_rewrites_the_statement_is_obeyed(make_app):
    """As with SQLAlchemy, a `before_cursor_execute` listener with `retval=True` (SQL commenters,
    bench.profile's EXPLAIN) decides what is sent: here it claims one job instead of ten."""
    app = make_app()
    _jobs(app)
    sql = LeaseSQL(app.db, 6.0)

    def one(_conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, _many: bool) -> Any:
        return statement + " -- rewritten", {**parameters, "limit": 1}

    event.listen(app.db.engine, "before_cursor_execute", one, retval=True)
    try:
        with app.db.begin() as conn, _sent(app) as seen:
            claims = sql.claim(
                conn, worker_id="w", queues=["a", "b", "default"], tasks=["t", "u", "v"], limit=10
            )
            conn.rollback()
    finally:
        event.remove(app.db.engine, "before_cursor_execute", one)
    assert len(claims) == 1
    assert [s.endswith(" -- rewritten") for s, _, _ in seen] == [True]


def test_a_listener_of_after_cursor_execute_alone_sees_the_driver_claim(make_app):
    """A listener of `after_cursor_execute` only (no `before_…` one) is told of the claim, as
    SQLAlchemy tells it of every statement."""
    app = make_app()
    _jobs(app)
    sql = LeaseSQL(app.db, 6.0)
    seen: list[str] = []

    def after(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        seen.append(statement)

    event.listen(app.db.engine, "after_cursor_execute", after)
    try:
        with app.db.begin() as conn:
            claims = sql.claim(conn, worker_id="w", queues=["default"], tasks=["t"], limit=1)
            conn.rollback()
    finally:
        event.remove(app.db.engine, "after_cursor_execute", after)
    assert claims and len(seen) == 1 and "UPDATE jobs" in seen[0]


def test_shapes_beyond_the_kept_ones_are_rendered_each_time(make_app):
    """A statement with more shapes than it keeps still sends SQLAlchemy's text for each."""
    app = make_app()
    _jobs(app)
    sql = LeaseSQL(app.db, 6.0)
    driver = DriverStatement(sql._claim, app.db.engine.dialect, [])
    driver.MAX_SHAPES = 1
    for n in (1, 2, 3, 2):
        params = {"queues": ["q"] * n, "tasks": ["t"], "limit": 1, "worker": "w", "token": 1}
        text, values = driver.parameters(params)
        expanded = sql._claim.compile(dialect=app.db.engine.dialect).construct_expanded_state(params)
        assert text == expanded.statement
        assert [values[f"queues_{i}"] for i in range(1, n + 1)] == ["q"] * n
    assert len(driver._shapes) == 1


# --- review (branch reviewpg): the driver claim's listeners and errors as SQLAlchemy's ---


def test_a_listener_that_keeps_state_on_the_execution_context_sees_the_driver_claim(make_app):
    """Listeners keep per-statement state on the execution context: OpenTelemetry's SQLAlchemy
    instrumentation (`opentelemetry-instrument`) sets `context._otel_span` in
    `before_cursor_execute` and ends it in `after_cursor_execute` or `handle_error`. The driver
    claim passed no context (None): every claim failed with AttributeError under it."""
    app = make_app()
    _jobs(app)
    sql = LeaseSQL(app.db, 6.0)
    ended: list[str] = []

    def before(_conn: Any, _cursor: Any, statement: str, _params: Any, context: Any, _many: bool) -> None:
        context._span = statement[:4]

    def after(_conn: Any, _cursor: Any, _statement: str, _params: Any, context: Any, _many: bool) -> None:
        ended.append(context._span)

    def failed(error: Any) -> None:
        ended.append("error " + error.execution_context._span)

    listeners = [("before_cursor_execute", before), ("after_cursor_execute", after), ("handle_error", failed)]
    for name, fn in listeners:
        event.listen(app.db.engine, name, fn)
    try:
        with app.db.begin() as conn:
            claims = sql.claim(
                conn, worker_id="w", queues=["a", "b", "default"], tasks=["t", "u", "v"], limit=10
            )
            conn.rollback()
        assert len(claims) == 5 and [e for e in ended if e.startswith(("WITH", "error"))] == ["WITH"]
        with pytest.raises(DatabaseError), app.db.engine.connect() as conn:
            conn.exec_driver_sql("SET LOCAL statement_timeout = 1")
            conn.exec_driver_sql("SELECT pg_sleep(0.2)")  # SQLAlchemy's: for the comparison
        with pytest.raises(DatabaseError), app.db.engine.connect() as conn:
            conn.exec_driver_sql("LOCK TABLE jobs IN ACCESS EXCLUSIVE MODE")
            with app.db.engine.connect() as other:
                other.exec_driver_sql("SET LOCAL lock_timeout = 50")
                sql.claim(other, worker_id="w", queues=["default"], tasks=["t"], limit=1)
    finally:
        for name, fn in listeners:
            event.remove(app.db.engine, name, fn)
    assert [e for e in ended if e.startswith(("WITH", "error"))] == ["WITH", "error SELE", "error WITH"]


def _terminate_others(app: Any) -> None:
    """Every other session of the test database ends, as in a server restart (each waited for)."""
    with psycopg.connect(conninfo(app.db.engine), autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )


def _run_after_restart(app: Any, by: str) -> None:
    """One statement by the path `by` on a pooled connection that a restart killed."""
    engine = app.db.engine
    if by == "one-job insert":  # the one-call enqueue: a pooled driver connection, no `Connection`
        pooled = engine.raw_connection()
        try:
            app.store.insert_plain(pooled, JobSpec(task="t"))
        finally:
            pooled.close()
        return
    with engine.connect() as conn:
        if by == "sqlalchemy":
            conn.execute(LeaseSQL(app.db, 6.0)._claim, _CLAIM)
        elif by == "driver claim":
            claim = LeaseSQL(app.db, 6.0)._claim_driver
            assert claim is not None
            claim.rows(conn, _CLAIM)
        elif by == "copy":
            app.store.enqueue(conn, [JobSpec(task="t"), JobSpec(task="t")])
        else:  # the restart comes after the stream's savepoint, as its statement is sent
            query = select(jobs.c.id).order_by(jobs.c.id)
            sql = str(query.compile(dialect=conn.dialect))

            def restart(_c: Any, _cursor: Any, statement: str, *_: Any) -> None:
                if statement == sql:
                    _terminate_others(app)

            event.listen(conn, "before_cursor_execute", restart)
            with app.db.backend.stream(conn, query, 2) as rows:
                list(rows)


_CLAIM = {"queues": ["default"], "tasks": ["t"], "limit": 1, "worker": "w", "token": 1}


@pytest.mark.parametrize("by", ["sqlalchemy", "driver claim", "copy", "one-job insert", "export stream"])
def test_a_dropped_connection_at_a_driver_statement_recycles_the_pool_as_sqlalchemy_does(make_app, by):
    """After a restart every pooled connection is dead. SQLAlchemy, seeing the first one fail,
    marks the whole pool stale (each is replaced on its next checkout) and tells its
    `handle_error` listeners. The statements run on the driver's connection (the claim, COPY of
    a bulk enqueue, the one-call enqueue's insert, the export's stream) invalidated only their
    own connection, so each other pooled connection failed once more afterwards, each a
    transient error and a backoff."""
    app = make_app()
    _jobs(app)
    engine = app.db.engine
    held = [engine.connect() for _ in range(3)]
    for conn in held:
        conn.exec_driver_sql("SELECT 1")
    for conn in held:
        conn.close()
    if by != "export stream":
        _terminate_others(app)
    seen: list[bool] = []
    event.listen(engine, "handle_error", lambda ctx: seen.append(ctx.is_disconnect))
    with pytest.raises(OperationalError) as caught:
        _run_after_restart(app, by)
    assert caught.value.connection_invalidated and is_transient(caught.value)
    again = [engine.connect() for _ in range(3)]  # the other two pooled ones and a new one
    try:
        assert [c.exec_driver_sql("SELECT 1").scalar() for c in again] == [1, 1, 1]
    finally:
        for conn in again:
            conn.close()
    # told once, as a disconnect; a pooled driver connection has no `Connection` to tell them
    assert seen == ([] if by == "one-job insert" else [True])


_unique = Table("review_unique", MetaData(), Column("x", Integer, primary_key=True))


@pytest.mark.parametrize(
    ("value", "kind"),
    [("1", IntegrityError), ("x", DataError), (str(2**40), DataError)],
    ids=["unique violation", "not a number", "out of range"],
)
def test_a_driver_statement_error_has_sqlalchemy_s_class(make_app, value, kind):
    """The error of a statement on the driver is the class SQLAlchemy gives the same psycopg
    error (IntegrityError, DataError…, caught as such by callers), not a generic DatabaseError,
    and is as transient (or not) as SQLAlchemy's."""
    app = make_app()
    statement = insert(_unique).values(x=cast(bindparam("v", type_=String), Integer)).returning(_unique.c.x)
    driver = DriverStatement(statement, app.db.engine.dialect, [_unique.c.x])
    with app.db.engine.connect() as conn:
        conn.exec_driver_sql("CREATE TEMP TABLE review_unique (x int4 PRIMARY KEY)")
        conn.execute(insert(_unique).values(x=1))
        errors = []
        for run in (lambda: conn.execute(statement, {"v": value}), lambda: driver.rows(conn, {"v": value})):
            savepoint = conn.begin_nested()
            with pytest.raises(DatabaseError) as caught:
                run()
            savepoint.rollback()
            errors.append(caught.value)
        assert driver.rows(conn, {"v": "2"}) == [(2,)]  # the connection carries on
    assert [type(e) for e in errors] == [kind, kind]
    assert [is_transient(e) for e in errors] == [False, False]
    assert type(errors[0].orig) is type(errors[1].orig)


@pytest.mark.parametrize(
    ("statement", "kind"),
    [
        ("SELECT 'x'::int", DataError),
        ("SELECT nosuchcolumn", ProgrammingError),
        ("SELECT pg_sleep(1)", OperationalError),
    ],
    ids=["data", "programming", "timeout"],
)
def test_driver_error_gives_sqlalchemy_s_class(make_app, statement, kind):
    """`driver_error` (COPY, one-job insert, stream) gives the psycopg error SQLAlchemy's class
    for it, not a generic DatabaseError for every error that is not operational."""
    app = make_app()
    with app.db.engine.connect() as conn:
        conn.exec_driver_sql("SET LOCAL statement_timeout = 20")
        raw = driver_of(conn)
        with pytest.raises(psycopg.Error) as caught:
            raw.execute(statement)
        with pytest.raises(DatabaseError) as raised:  # on a `Connection`, SQLAlchemy's handling raises it
            raise driver_error(conn, statement, caught.value)
        error = raised.value
        conn.rollback()
    assert type(error) is kind and error.orig is caught.value
    assert is_transient(error) == (kind is OperationalError)
