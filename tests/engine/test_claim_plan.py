"""The claim stays an index walk whatever the statistics say (a table of 20,000 jobs,
half of them done, freshly analysed), and PostgreSQL never JIT-compiles it.

After ANALYZE, PostgreSQL costed the claim as a walk of the whole backlog: it JIT-compiled
every claim (56 ms for a 1 ms statement) and joined `id IN (subquery)` to a sequential scan
of `jobs` (118 ms per claim at 20,000 jobs). These tests read the plan the database chooses.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import update

from ledgerflow.db.tables import jobs
from ledgerflow.engine.leases import LeaseSQL, Outcome
from tests.apps import basic
from tests.engine.plans import explain_statement, scans_jobs

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


def test_the_batched_completion_looks_up_each_held_job_by_key(make_app, backend):
    """Statistics taken while nothing ran say few jobs run; the completion must still find each
    held job by its key, not through an index on state (PostgreSQL keeps an entry there for
    every attempt leased since the last vacuum, and a bitmap scan visits them all at each
    completion; SQLite scanned the whole table)."""
    app = make_app()
    app.enqueue_many([basic.record.prepare() for _ in range(JOBS)])
    with app.db.begin() as conn:
        conn.exec_driver_sql("ANALYZE")
    sql = LeaseSQL(app.db, 6.0)
    for _ in range(10):  # 1,000 attempts leased and completed: dead index entries of 'running'
        with app.db.begin() as conn:
            claims = sql.claim(conn, worker_id="w", queues=["default"], tasks=[basic.record.name], limit=100)
            assert sql.apply_outcomes(conn, [Outcome(c, "completed", 0.001) for c in claims]) == []
    with app.db.begin() as conn:
        held = sql.claim(conn, worker_id="w", queues=["default"], tasks=[basic.record.name], limit=50)
    if backend == "sqlite":
        params: dict[str, Any] = {"held": json.dumps([c.key for c in held])}
    else:
        params = {
            "ids": [c.job.id for c in held],
            "tokens": [c.token for c in held],
            "durations": [0.001] * 50,
        }
    plan = explain_statement(app, sql._complete, params, backend)
    assert not scans_jobs(plan), plan
    if backend == "postgresql":
        assert "ix_jobs_state_id" not in plan, plan  # nor the partial index of running jobs:
        assert "ix_jobs_lease" not in plan, plan
    with app.db.begin() as conn:
        assert sql.apply_outcomes(conn, [Outcome(c, "completed", 0.001) for c in held]) == []
    assert all(app.get_job(c.job.id).state == "completed" for c in held)


def test_the_cycle_that_completes_and_claims_walks_indexes_after_statistics_are_taken(make_app, backend):
    """The same table, freshly analysed, 50 jobs held: the statements of a cycle that completes
    them and claims the next 20 in one transaction — the completion's primary-key probes (never
    JIT-compiled on PostgreSQL) and the claim's index walk."""
    app = make_app()
    ids = app.enqueue_many([basic.record.prepare() for _ in range(JOBS)])
    with app.db.begin() as conn:
        conn.execute(update(jobs).where(jobs.c.id <= ids[JOBS // 2]).values(state="completed"))
        conn.exec_driver_sql("ANALYZE")
    sql = LeaseSQL(app.db, 6.0)
    with app.db.begin() as conn:
        held = sql.claim(conn, worker_id="w", queues=["default"], tasks=[basic.record.name], limit=50)
    if backend == "sqlite":
        done: dict[str, Any] = {"held": json.dumps([c.key for c in held])}
    else:
        done = {"ids": [c.job.id for c in held], "tokens": [c.token for c in held], "durations": [0.001] * 50}
    compiled = sql._complete.compile(dialect=app.db.engine.dialect).construct_expanded_state(done)
    explain = "EXPLAIN QUERY PLAN " if backend == "sqlite" else "EXPLAIN (ANALYZE, COSTS OFF) "
    with app.db.begin() as conn:
        given = compiled.positional_parameters if backend == "sqlite" else compiled.parameters
        rows = conn.exec_driver_sql(explain + compiled.statement, given).all()
        conn.rollback()  # EXPLAIN ANALYZE ran the completion: take it back
    plans = ["\n".join(str(r[-1] if backend == "sqlite" else r[0]) for r in rows), _plan(app, sql, backend)]
    assert not any(scans_jobs(plan) for plan in plans), plans
    assert "JIT" not in plans[0], plans[0]
    if backend == "sqlite":
        assert "ix_jobs_claim" in plans[1], plans[1]
    else:
        assert "ix_jobs_state_id" not in plans[0] and "ix_jobs_lease" not in plans[0], plans[0]
        assert "Index Cond: (id = ANY" in plans[1], plans[1]
    taking: dict[str, Any] = {
        "worker_id": "w",
        "queues": ["default"],
        "tasks": [basic.record.name],
        "limit": 20,
        "token": 2,
    }
    with app.db.begin() as conn:
        refused = sql.apply_outcomes(conn, [Outcome(c, "completed", 0.001) for c in held])
        claims = sql.claim(conn, **taking)
    assert refused == []
    assert sorted(c.job.id for c in claims) == ids[JOBS // 2 + 51 : JOBS // 2 + 71]
    assert all(app.get_job(c.job.id).state == "completed" for c in held)
