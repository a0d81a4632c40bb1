"""The claim stays an index walk whatever the statistics say (a table of 20,000 jobs,
half of them done, freshly analysed), and PostgreSQL never JIT-compiles it.

After ANALYZE, PostgreSQL costed the claim as a walk of the whole backlog: it JIT-compiled
every claim (56 ms for a 1 ms statement) and joined `id IN (subquery)` to a sequential scan
of `jobs` (118 ms per claim at 20,000 jobs). These tests read the plan the database chooses.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import update

from ledgerflow.db.tables import jobs
from ledgerflow.engine.leases import (
    LeaseSQL,
    due_query,
    expired_leases,
    has_stageable,
    next_due,
    runnable_soon,
    stage,
)
from tests.apps import basic
from tests.engine.plans import explain, explain_statement, recorded, scans_jobs

JOBS = 20_000


def _plan(app: Any, sql: LeaseSQL, backend: str) -> str:
    values = {"queues": ["default"], "tasks": [basic.record.name], "limit": 20, "worker": "w", "token": 1}
    compiled = sql._claim.compile(dialect=app.db.engine.dialect).construct_expanded_state(values)
    explain = "EXPLAIN QUERY PLAN " if backend == "sqlite" else "EXPLAIN (ANALYZE, COSTS OFF) "
    with app.db.begin() as conn:
        given = compiled.positional_parameters if backend == "sqlite" else compiled.parameters
        rows = conn.exec_driver_sql(explain + compiled.statement, given).all()
        conn.rollback()  # EXPLAIN ANALYZE ran the claim: take it back
    return "\n".join(str(r[-1] if backend == "sqlite" else r[0]) for r in rows)


def test_the_claim_walks_an_index_after_statistics_are_taken(make_app, backend):
    app = make_app()
    ids = app.enqueue_many([basic.record.prepare() for _ in range(JOBS)])
    with app.db.begin() as conn:  # half the table done, as in the middle of a run
        conn.execute(update(jobs).where(jobs.c.id <= ids[JOBS // 2]).values(state="completed"))
        conn.exec_driver_sql("ANALYZE")
    sql = LeaseSQL(app.db, 6.0)
    plan = _plan(app, sql, backend)
    if backend == "sqlite":
        assert "ix_jobs_claim" in plan, plan
        assert "SCAN jobs" not in plan, plan
    else:
        assert "Seq Scan on jobs" not in plan, plan
        assert "Index Cond: (id = ANY" in plan, plan
        assert "JIT" not in plan, plan
    with app.db.begin() as conn:
        claims = sql.claim(conn, worker_id="w", queues=["default"], tasks=[basic.record.name], limit=20)
    assert [c.job.id for c in sorted(claims, key=lambda c: c.job.id)] == ids[JOBS // 2 + 1 : JOBS // 2 + 21]


def test_the_worker_reads_keep_the_claim_index_after_analyze(make_app, backend):
    """A retained history (19,000 completed jobs), 1,000 waiting in two queues (a tenth of them
    due later), statistics taken: the claim of one and of two queues, the burst worker's
    "anything left?" check and `next_due` still read the claim index, never the whole table.
    After ANALYZE SQLite scanned the table for the burst check (105-130 ms at 1,000,000 jobs)
    and skip-scanned the index for the claim, sorting every waiting job."""
    app = make_app()
    later = datetime.now(UTC) + timedelta(hours=1)
    specs = [basic.record.configure(queue="default").prepare() for _ in range(19_000)]
    for i in range(1_000):
        task = basic.record.configure(queue="default" if i % 2 else "other")
        specs.append((task.configure(scheduled_at=later) if i % 10 == 0 else task).prepare())
    ids = app.enqueue_many(specs)
    with app.db.begin() as conn:
        conn.execute(update(jobs).where(jobs.c.id <= ids[18_999]).values(state="completed"))
        conn.exec_driver_sql("ANALYZE")
    sql = LeaseSQL(app.db, 6.0)
    tasks = [basic.record.name]
    reads = {
        "claim of one queue": (
            sql._claim,
            {"queues": ["default"], "tasks": tasks, "limit": 20, "worker": "w", "token": 1},
        ),
        "claim of two": (
            sql._claim,
            {"queues": ["default", "other"], "tasks": tasks, "limit": 20, "worker": "w", "token": 1},
        ),
        "burst check": (runnable_soon(app.db, ["default", "other"], tasks, 5.0), {}),
        "next due": (due_query(["default", "other"]), {}),
    }
    for name, (statement, values) in reads.items():
        plan = explain_statement(app, statement, values, backend)
        if backend == "sqlite":
            assert "SCAN jobs" not in plan and "ix_jobs_claim" in plan, (name, plan)
        else:
            assert "Seq Scan on jobs" not in plan, (name, plan)
    if backend == "sqlite":  # one queue: the index's order, no sort of every waiting job
        one_queue = explain_statement(app, sql._claim, reads["claim of one queue"][1], backend)
        assert "TEMP B-TREE" not in one_queue, one_queue
    with app.db.read() as conn:
        assert conn.execute(runnable_soon(app.db, ["other"], tasks, 5.0)).first() is not None
        assert next_due(app.db, conn, ["default", "other"]) is not None


def test_no_statement_of_a_worker_scans_jobs_after_analyze(make_app, backend):
    """19,000 completed jobs and 1,000 waiting, statistics taken: SQLite then estimates half the
    table per state. Every statement a burst worker runs on `jobs` while it drains the 1,000
    (claim, completion, the burst check, search indexing), and the staging and rescue reads of
    its maintenance loop, keep an index: after ANALYZE at 1,000,000 jobs the check for due
    retries scanned the table (194 ms a call)."""
    app = make_app()

    @app.task(name="noop")
    def noop() -> None:
        pass

    ids = app.enqueue_many([noop.prepare() for _ in range(20_000)])
    with app.db.begin() as conn:
        conn.execute(update(jobs).where(jobs.c.id <= ids[18_999]).values(state="completed"))
        conn.exec_driver_sql("ANALYZE")
    with recorded(app, ("SELECT", "UPDATE", "DELETE", "INSERT", "WITH")) as statements:
        app.run_worker(burst=True, queues=["default"])
        with app.db.begin() as conn:  # what the maintenance loop runs besides
            assert not has_stageable(app.db, conn)
            assert stage(app.db, conn) == []
            assert expired_leases(app.db, conn) == []
    assert app.store.counts()[("default", "noop", "completed")] == 20_000
    assert len(statements) >= 3, statements  # at least the claim, the completion, the burst check
    scanning = {s: plan for s, p in statements.items() if scans_jobs(plan := explain(app, s, p, backend))}
    assert not scanning, scanning
