"""The claim of a worker of several queues (`LeaseSQL._several`): one walk of the claim index per
queue, in its order and limited, merged and limited again. `queue IN ('a', 'b')` made both
backends sort every waiting job of those queues at each claim (PostgreSQL a bitmap scan of
ix_jobs_state_task_queue then a sort, 66,707 rows read for a claim of 20 at a 100,000-job
backlog; SQLite a temporary B-tree over them, 3,300 thousand-instruction steps). The claim of
one queue keeps its own statement (test_backlog_reads pins its plan)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from bench.common import rows_read
from sqlalchemy import event, select
from sqlalchemy.engine.default import DefaultExecutionContext

from ledgerflow.db.backends import driver_of
from ledgerflow.db.tables import jobs
from ledgerflow.engine.leases import LeaseSQL
from tests.apps import basic
from tests.conftest import race_workers
from tests.engine.plans import explain_statement
from tests.engine.test_backlog_reads import _seed

#: Rows of `jobs` read by a claim of 20 from several queues (PostgreSQL: 80 for two queues, 100
#: for three) and SQLite's thousand-instruction steps (7-10); sorting the backlog read 66,707
#: rows (two queues) and ran 3,300-5,000 steps.
SEVERAL_READS = {"postgresql": 150, "sqlite": 40}


def _values(queues: list[str], limit: int = 20) -> dict[str, Any]:
    values: dict[str, Any] = {"tasks": ["bench.noop"], "limit": limit, "worker": "w", "token": 1}
    values.update({f"queue_{i}": name for i, name in enumerate(queues)})
    return values


def _first(conn: Any, queues: list[str], limit: int) -> list[int]:
    """The first `limit` claimable jobs of these queues in claim order (a plain ordered read)."""
    return list(
        conn.execute(
            select(jobs.c.id)
            .where(jobs.c.queue.in_(queues), jobs.c.state == "available")
            .order_by(jobs.c.priority, jobs.c.scheduled_at, jobs.c.id)
            .limit(limit)
        ).scalars()
    )


def check_walks(plan: str, backend: str, count: int) -> None:
    """One ordered walk of ix_jobs_claim per queue, no scan of `jobs`, no sort of the backlog
    (PostgreSQL: the one sort is of the merged walks; SQLite's temporary B-trees are the
    caller's to check)."""
    if backend == "sqlite":
        assert "SCAN jobs" not in plan and "ANY(queue)" not in plan, plan
        assert plan.count("SEARCH jobs USING INDEX ix_jobs_claim (queue=?)") == count, plan
    else:
        assert "Seq Scan on jobs" not in plan and "Bitmap" not in plan, plan
        assert plan.count("Index Scan using ix_jobs_claim on jobs") == count, plan
        lines = [line.strip() for line in plan.splitlines()]
        sorts = [i for i, line in enumerate(lines) if line.startswith("->  Sort")]
        assert len(sorts) == 1 and lines[sorts[0] + 2] == "->  Append", plan  # the merged walks only


def _check_plan(plan: str, backend: str, count: int) -> None:
    check_walks(plan, backend, count)
    if backend == "sqlite":  # the one temporary B-tree orders the merged walks (at most `limit` rows each)
        assert plan.count("TEMP B-TREE") == 1 and plan.index("SCAN merged") < plan.index("TEMP B-TREE"), plan


@pytest.mark.parametrize("count", [2, 3])
def test_a_claim_of_several_queues_reads_a_bounded_part_of_a_large_backlog(make_app, backend, count):
    """1,000,000 jobs, 100,000 waiting over three queues, statistics taken: the claim of two or
    three of the queues reads each queue's first jobs through the claim index, and takes the
    first 20 of them all in claim order, claim after claim (PostgreSQL: as custom and as generic
    plans of the statement prepared on the driver)."""
    app = make_app()
    _seed(app, backend, mixed=True)
    sql = LeaseSQL(app.db, 6.0)
    queues = ["a", "b", "c"][:count]
    statement, driver = sql._several(count)
    assert (driver is None) == (backend == "sqlite")
    _check_plan(explain_statement(app, statement, _values(queues), backend), backend, count)
    taking: dict[str, Any] = {"worker_id": "w", "queues": queues, "tasks": ["bench.noop"], "limit": 20}
    with app.db.begin() as conn:
        modes, raw, threshold = ["default"], None, None
        if backend == "postgresql":
            raw = driver_of(conn)
            threshold, raw.prepare_threshold = raw.prepare_threshold, 0  # prepared from the first claim
            modes = ["force_custom_plan", "force_generic_plan"]
        for mode in modes:
            if backend == "postgresql":
                conn.exec_driver_sql(f"SET LOCAL plan_cache_mode = {mode}")
            for _ in range(4):
                expected = _first(conn, queues, 20)
                with rows_read(conn, backend == "sqlite") as read:
                    claims = sql.claim(conn, **taking)
                assert read[0] <= SEVERAL_READS[backend], (mode, read[0])
                assert [c.job.id for c in claims] == expected
                assert {c.job.queue for c in claims} == set(queues)  # every queue has its turn
        conn.rollback()
        if raw is not None:
            raw.prepare_threshold = threshold


def test_a_claim_of_several_queues_takes_the_first_jobs_across_them_in_claim_order(make_app):
    """Priority, then due time, then id, whichever queue the job is in; a job not yet due, a
    job of a paused queue or task, and a job under a global limit are not taken; a queue named
    twice is one queue."""
    app = make_app()
    now = datetime.now(UTC)
    early, late = now - timedelta(minutes=10), now - timedelta(minutes=5)

    def job(queue: str, priority: int, at: datetime, task: Any = basic.record) -> int:
        return app.enqueue(task.configure(queue=queue, priority=priority, scheduled_at=at).prepare()).id

    a_late = job("a", 1, late)
    b_early = job("b", 1, early)
    c_first = job("c", 0, early)
    a_low = job("a", 5, early)
    b_low = job("b", 5, late)
    job("b", 0, now + timedelta(hours=1))  # not yet due
    a_first = job("a", 0, late)
    paused_task = job("a", 0, early, basic.fail_always)
    limited = job("d", 0, early)
    sql = LeaseSQL(app.db, 6.0)
    tasks = [basic.record.name, basic.fail_always.name]

    def take(queues: list[str], limit: int) -> list[int]:
        with app.db.begin() as conn:
            claims = sql.claim(conn, worker_id="w", queues=queues, tasks=tasks, limit=limit)
            conn.rollback()
        return [c.job.id for c in claims]

    assert take(["a", "b", "c"], 10) == [c_first, paused_task, a_first, b_early, a_late, a_low, b_low]
    assert take(["a", "b", "c"], 3) == [c_first, paused_task, a_first]
    assert take(["b", "a", "b"], 3) == [paused_task, a_first, b_early]
    app.store.pause("task", basic.fail_always.name)
    app.store.pause("queue", "c")
    assert take(["a", "b", "c"], 3) == [a_first, b_early, a_late]
    app.store.resume("queue", "c")
    app.limits.set("queue", "d", concurrency=5)
    assert take(["d", "c"], 10) == [c_first]  # d's job is for `claim_limited`
    app.limits.clear("queue", "d")
    assert take(["d", "c"], 10) == [c_first, limited]
    with app.db.begin() as conn:  # claimed: gone from the next claim
        first = sql.claim(conn, worker_id="w", queues=["a", "b"], tasks=tasks, limit=2)
    assert [c.job.id for c in first] == [a_first, b_early]
    assert all(c.job.state == "running" for c in first)
    assert take(["a", "b"], 2) == [a_late, a_low]


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)  # SQLite: SQLAlchemy's
def test_the_driver_sends_what_sqlalchemy_sends_for_several_queues(make_app):
    app = make_app()
    for queue in ("a", "b", "c"):
        app.enqueue_many([basic.record.configure(queue=queue).prepare() for _ in range(3)])
    sql = LeaseSQL(app.db, 6.0)
    seen: list[tuple[str, Any, bool]] = []

    def record(_conn: Any, _cursor: Any, statement: str, parameters: Any, context: Any, _many: bool) -> None:
        seen.append((statement, parameters, isinstance(context, DefaultExecutionContext)))

    event.listen(app.db.engine, "before_cursor_execute", record)
    try:
        for count in (2, 3):
            statement, driver = sql._several(count)
            assert driver is not None
            params = {**_values(["a", "b", "c"][:count], 5), "tasks": [basic.record.name, "x"]}
            with app.db.begin() as conn:
                savepoint = conn.begin_nested()
                by_sqlalchemy = conn.execute(statement, params).all()
                savepoint.rollback()
                by_driver = driver.rows(conn, params)
                conn.rollback()
            claims = [(s, p, ours) for s, p, ours in seen if s.startswith("WITH claimed AS")]
            assert [ours for _, _, ours in claims] == [True, False]
            assert claims[0][:2] == claims[1][:2]
            assert len(by_driver) == 5 and [tuple(r) for r in by_sqlalchemy] == by_driver
            seen.clear()
        with app.db.begin() as conn:  # one queue named twice: the one-queue statement, one value
            assert (
                len(sql.claim(conn, worker_id="w", queues=["a", "a"], tasks=[basic.record.name], limit=5))
                == 3
            )
            conn.rollback()
        ((statement, parameters, _),) = seen
        assert "jobs.queue IN (%(queues_1)s::VARCHAR)" in statement and parameters["queues_1"] == "a"
    finally:
        event.remove(app.db.engine, "before_cursor_execute", record)


def test_four_worker_processes_of_several_queues_run_900_jobs_exactly_once(db_url, make_app, workers):
    """Four processes, each a worker of queues a, b and c, race from the first job."""
    app = make_app()
    procs = [workers(concurrency=4, name=f"w{i}", queues="a,b,c") for i in range(4)]
    jobs_of_three_queues = [basic.record.configure(queue="abc"[i % 3]).prepare() for i in range(900)]
    done = {(q, "record", "completed"): 300 for q in "abc"}
    race_workers(db_url, app, procs, lambda: app.enqueue_many(jobs_of_three_queues), done)
