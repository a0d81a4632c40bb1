"""The worker's claim and `next_due` (when an idle worker wakes next) read a bounded part of the
claim index however many jobs wait. 1,000,000 jobs (900,000 completed, 100,000 waiting),
statistics taken (ANALYZE of every table, the empty `pauses` and `job_limits` too); what they
read is counted by the database itself (PostgreSQL's per-transaction table counters, SQLite's
virtual machine steps). `next_due` read every waiting job (50 ms a call at a 100,000-job backlog
on either backend); PostgreSQL's claim, with the pause and limit checks as `NOT EXISTS`, sorted
every waiting job (156 ms a claim of 20)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from bench.common import rows_read
from psycopg import sql as pgsql
from sqlalchemy import event, update
from sqlalchemy.engine.default import DefaultExecutionContext

from ledgerflow.db.backends import driver_of
from ledgerflow.db.tables import jobs
from ledgerflow.engine.leases import LeaseSQL, due_query, next_due
from tests.apps import basic
from tests.engine.plans import explain_statement

JOBS, WAITING = 1_000_000, 100_000
#: A claim of 20 reads 60 rows (PostgreSQL: each job through the index, again to update it,
#: and once more for the execution row's foreign key) and runs about 5 steps (SQLite); sorting
#: the backlog read 100,040 rows.
CLAIM_READS = {"postgresql": 200, "sqlite": 100}
_COLUMNS = (
    "task, queue, priority, state, args, kwargs, attempt, max_attempts, timeout, has_dependencies, "
    "scheduled_at, created_at, errors"
)


def _seed(app: Any, backend: str, *, mixed: bool = False) -> None:
    """JOBS no-op jobs written by the database, the last WAITING of them available (due an hour
    ago), then ANALYZE: in queue `default` at priority 100, or (`mixed`) over queues a, b, c (id
    modulo 3) and priorities 100..106 (id modulo 7)."""
    done = JOBS - WAITING
    queue, priority = ("char(97 + x % 3)", "100 + x % 7") if mixed else ("'default'", "100")
    pg_queue, pg_priority = ("chr(97 + mod(x, 3))", "100 + mod(x, 7)") if mixed else ("'default'", "100")
    with app.db.begin() as conn:
        if backend == "sqlite":
            conn.exec_driver_sql(
                "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < ?) "
                f"INSERT INTO jobs ({_COLUMNS}) SELECT 'bench.noop', {queue}, {priority}, "
                "CASE WHEN x <= ? THEN 'completed' ELSE 'available' END, '[0]', '{}', 0, 5, 30.0, 0, "
                "strftime('%Y-%m-%d %H:%M:%f000', 'now', '-1 hour'), "
                "strftime('%Y-%m-%d %H:%M:%f000', 'now', '-1 hour'), '[]' FROM n",
                (JOBS, done),
            )
        else:
            conn.exec_driver_sql(
                f"INSERT INTO jobs ({_COLUMNS}) SELECT 'bench.noop', {pg_queue}, {pg_priority}, "
                "CASE WHEN x <= %(done)s THEN 'completed' ELSE 'available' END, '[0]', '{}', 0, 5, 30.0, "
                "false, now() - interval '1 hour', now() - interval '1 hour', '[]' "
                "FROM generate_series(1, %(n)s) AS x",
                {"n": JOBS, "done": done},
            )
        conn.exec_driver_sql("ANALYZE")


def test_the_claim_and_next_due_read_a_bounded_part_of_a_large_backlog(make_app, backend):
    app = make_app()
    _seed(app, backend)
    sql = LeaseSQL(app.db, 6.0)
    values = {"queues": ["default"], "tasks": ["bench.noop"], "limit": 20, "worker": "w", "token": 1}
    plan = explain_statement(app, sql._claim, values, backend)
    if backend == "sqlite":
        assert "SCAN jobs" not in plan and "TEMP B-TREE" not in plan, plan
    else:
        assert "Seq Scan on jobs" not in plan and "Sort" not in plan, plan
        assert "Index Scan using ix_jobs_claim on jobs" in plan, plan
    with app.db.begin() as conn:  # repeated past psycopg's threshold for a prepared (generic) plan
        for _ in range(8):
            with rows_read(conn, backend == "sqlite") as read:
                assert len(conn.execute(sql._claim, values).all()) == 20
            assert read[0] <= CLAIM_READS[backend], read[0]
        conn.rollback()
    plan = explain_statement(app, due_query("default"), {"priority": -(2**15)}, backend)
    if backend == "sqlite":
        assert "SCAN jobs" not in plan and "ix_jobs_claim (queue=? AND priority>?)" in plan, plan
        assert "TEMP B-TREE" not in plan, plan
    else:
        assert "Seq Scan on jobs" not in plan and "ix_jobs_claim" in plan and "Limit" in plan, plan
        assert "Sort" not in plan, plan
    with app.db.begin() as conn:
        for _ in range(8):
            with rows_read(conn, backend == "sqlite") as read:
                due = next_due(app.db, conn, ["default"])
            assert due is not None and due < datetime.now(UTC) - timedelta(minutes=59)
            # A scan of the 100,000 waiting jobs reads 100,000 rows (PostgreSQL) and runs about
            # 3,100 thousand-instruction steps (SQLite); the bounded reads a row per query.
            assert read[0] <= 5, read[0]


def _walks_the_claim_index(plan: str) -> None:
    assert "Seq Scan on jobs" not in plan and "Sort" not in plan, plan
    assert "Index Scan using ix_jobs_claim on jobs" in plan, plan


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)  # SQLite: SQLAlchemy's, above
def test_the_claim_the_worker_sends_on_the_driver_walks_the_claim_index(make_app):
    """PostgreSQL runs the worker's claim on the driver's connection (`DriverStatement`). The
    statement it sends, text and parameters as recorded at the cursor, is planned as a walk of
    ix_jobs_claim in order, both as a custom plan (what EXPLAIN shows with the values) and as the
    generic plan of the prepared statement (psycopg prepares it on its fifth use), and each claim
    reads a bounded part of the backlog. The version taken back in f441387 sent `queue =
    ANY('{default}')`, which loses the one-queue equality: the planner sorted the 100,000
    waiting jobs."""
    app = make_app()
    _seed(app, "postgresql")
    sql = LeaseSQL(app.db, 6.0)
    taking: dict[str, Any] = {"worker_id": "w", "queues": ["default"], "tasks": ["bench.noop"], "limit": 20}
    sent: list[tuple[str, Any, Any]] = []

    def record(_conn: Any, _cursor: Any, statement: str, parameters: Any, context: Any, _many: bool) -> None:
        sent.append((statement, parameters, context))

    event.listen(app.db.engine, "before_cursor_execute", record)
    try:
        with app.db.begin() as conn:
            assert len(sql.claim(conn, **taking, token=1)) == 20
            conn.rollback()
    finally:
        event.remove(app.db.engine, "before_cursor_execute", record)
    ((statement, parameters, context),) = sent
    # SQLAlchemy passes its DefaultExecutionContext; the driver statement a stand-in of its own
    assert not isinstance(context, DefaultExecutionContext), "sent by SQLAlchemy, not on the driver"
    with app.db.begin() as conn:
        raw = driver_of(conn)
        plan = "\n".join(r[0] for r in raw.execute("EXPLAIN (COSTS OFF) " + statement, parameters))
        conn.rollback()
    _walks_the_claim_index(plan)
    with app.db.begin() as conn:
        raw = driver_of(conn)
        threshold, raw.prepare_threshold = raw.prepare_threshold, 0  # prepared from the first claim
        try:
            for mode in ("force_custom_plan", "force_generic_plan"):
                raw.execute(f"SET LOCAL plan_cache_mode = {mode}")
                for _ in range(3):
                    with rows_read(conn, False) as read:
                        assert len(sql.claim(conn, **taking)) == 20
                    assert read[0] <= CLAIM_READS["postgresql"], (mode, read[0])
            # the statement psycopg prepared: the one sent, its placeholders numbered
            numbers: dict[str, int] = {}
            numbered = re.sub(
                r"%\((\w+)\)s",
                lambda m: f"${numbers.setdefault(m[1], len(numbers) + 1)}",
                statement,
            )
            found = raw.execute(
                "SELECT name, parameter_types::text[] FROM pg_prepared_statements "
                "WHERE statement = %s AND generic_plans > 0",
                (numbered,),
                prepare=False,
            ).fetchone()
            assert found is not None, "the claim sent was not prepared and run with a generic plan"
            name, types = found
            values = [parameters[n] for n in sorted(numbers, key=numbers.__getitem__)]
            explain = pgsql.SQL("EXPLAIN (COSTS OFF) EXECUTE {}({})").format(
                pgsql.Identifier(name),
                pgsql.SQL(", ").join(
                    pgsql.SQL("{}::{}").format(pgsql.Literal(v), pgsql.SQL(t))
                    for v, t in zip(values, types, strict=True)
                ),
            )
            generic = "\n".join(r[0] for r in raw.execute(explain, prepare=False))
        finally:
            raw.prepare_threshold = threshold
        conn.rollback()
    _walks_the_claim_index(generic)
    assert "Index Cond: (((queue)::text = ($" in generic, generic  # a parameter: the generic plan


def test_next_due_is_the_earliest_over_priorities_and_queues(make_app, backend):
    """The earliest due job may wait at any priority and in any of the worker's queues."""
    app = make_app()
    now = datetime.now(UTC)
    specs = [
        basic.record.configure(queue="a", priority=0, scheduled_at=now + timedelta(hours=3)).prepare(),
        basic.record.configure(queue="a", priority=4, scheduled_at=now + timedelta(hours=2)).prepare(),
        basic.record.configure(queue="a", priority=9, scheduled_at=now + timedelta(hours=1)).prepare(),
        basic.record.configure(queue="b", priority=7, scheduled_at=now + timedelta(minutes=30)).prepare(),
        basic.record.configure(queue="c", priority=1, scheduled_at=now + timedelta(minutes=10)).prepare(),
    ]
    ids = app.enqueue_many(specs)
    with app.db.begin() as conn:  # a running job is not claimable
        conn.execute(update(jobs).where(jobs.c.id == ids[4]).values(state="running"))
    with app.db.read() as conn:
        assert next_due(app.db, conn, ["a"]) == now + timedelta(hours=1)
        assert next_due(app.db, conn, ["a", "b", "a"]) == now + timedelta(minutes=30)
        assert next_due(app.db, conn, ["c"]) is None
        assert next_due(app.db, conn, []) is None
