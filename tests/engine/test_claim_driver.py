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

import pytest
from sqlalchemy import event, update

from ledgerflow.db.postgres import DriverStatement
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
        seen.append((statement, parameters, context is not None))

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
