"""The claim of jobs under global limits (`limits.limited_candidates`) by a worker of several
queues: one walk of the claim index per queue (`claim_order.first_in_claim_order`), and rounds
that read on from the last candidate. The candidate query `queue IN (…) AND (queue IN limited OR
task IN limited) ORDER BY … LIMIT n` sorted every waiting job of the worker's queues at each
round (PostgreSQL a bitmap scan then a sort: 36,727 rows read for a claim of 20 from two queues
at a 100,000-job backlog; SQLite, for three queues, a temporary B-tree over them: 3,600
thousand-instruction steps), while the limit rows were locked, so every claimer of those limits
waited for it; and each round read again from the first job, past every job a full limit held
back."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from bench.common import rows_read
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete, event, select

from ledgerflow import JobSpec
from ledgerflow.db.backends import driver_of
from ledgerflow.db.tables import job_executions, job_limits, jobs
from ledgerflow.engine.leases import LeaseSQL
from tests.apps import basic
from tests.conftest import race_workers
from tests.engine.plans import explain
from tests.engine.test_backlog_reads import _seed
from tests.engine.test_multiqueue_claim import check_walks
from tests.limits.test_global_limits import RunningMonitor

#: Rows of `jobs` read by a limited claim of 20 from two or three queues (PostgreSQL: 20 per
#: queue's walk, 20 each to claim the jobs and to write their execution rows, and the running
#: jobs counted, 20 more at each claim of the test: 100-220) and SQLite's thousand-instruction
#: steps (7-9); sorting the backlog read 36,727-40,060 rows and ran 3,600 steps.
SEVERAL_READS = {"postgresql": 250, "sqlite": 40}


@contextmanager
def _candidate_queries(app: Any) -> Iterator[list[tuple[str, Any]]]:
    """The candidate queries (statement, parameters) run meanwhile: the reads in claim order."""
    seen: list[tuple[str, Any]] = []

    def record(_conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, _many: bool) -> None:
        if statement.startswith("SELECT") and "ORDER BY" in statement and "priority" in statement:
            seen.append((statement, parameters))

    event.listen(app.db.engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(app.db.engine, "before_cursor_execute", record)


def _check_plan(plan: str, backend: str, count: int) -> None:
    check_walks(plan, backend, count)
    if backend == "sqlite":  # a temporary B-tree orders only a walk's (limited) rows
        lines = plan.splitlines()
        for i, line in enumerate(lines):
            if "TEMP B-TREE" in line:
                assert lines[i - 1].startswith("SCAN queue_"), plan


@pytest.mark.parametrize("count", [2, 3])
def test_a_limited_claim_of_several_queues_reads_a_bounded_part_of_a_large_backlog(make_app, backend, count):
    """1,000,000 jobs, 100,000 waiting over queues a, b, c, statistics taken; a concurrency limit
    on queue a and one on the jobs' task: a limited claim of two or three of the queues reads
    each queue's first jobs through the claim index and takes the first 20 over them in claim
    order, claim after claim (PostgreSQL: with custom and generic plans, prepared from the first
    use)."""
    app = make_app()
    _seed(app, backend, mixed=True)
    app.limits.set("queue", "a", concurrency=100_000)
    app.limits.set("task", "bench.noop", concurrency=100_000)
    sql = LeaseSQL(app.db, 6.0)
    queues = ["a", "b", "c"][:count]
    taking: dict[str, Any] = {"worker_id": "w", "queues": queues, "tasks": ["bench.noop"], "local_caps": {}}
    with _candidate_queries(app) as seen, app.db.begin() as conn:
        assert len(sql.claim_limited(conn, **taking, limit=20)[0]) == 20
        conn.rollback()
    ((statement, parameters),) = seen
    _check_plan(explain(app, statement, parameters, backend), backend, count)
    with app.db.begin() as conn:
        modes, raw, threshold = ["default"], None, None
        if backend == "postgresql":
            raw = driver_of(conn)
            threshold, raw.prepare_threshold = raw.prepare_threshold, 0
            modes = ["force_custom_plan", "force_generic_plan"]
        for mode in modes:
            if backend == "postgresql":
                conn.exec_driver_sql(f"SET LOCAL plan_cache_mode = {mode}")
            for _ in range(3):
                expected = list(
                    conn.execute(
                        select(jobs.c.id)
                        .where(jobs.c.queue.in_(queues), jobs.c.state == "available")
                        .order_by(jobs.c.priority, jobs.c.scheduled_at, jobs.c.id)
                        .limit(20)
                    ).scalars()
                )
                with rows_read(conn, backend == "sqlite") as read:
                    claims, _ = sql.claim_limited(conn, **taking, limit=20)
                assert read[0] <= SEVERAL_READS[backend], (mode, read[0])
                assert [c.job.id for c in claims] == expected
                assert {c.job.queue for c in claims} == set(queues)  # every queue has its turn
        conn.rollback()
        if raw is not None:
            raw.prepare_threshold = threshold


#: Jobs of task t1 ahead of the others in the rounds test.
AHEAD = 5000


def test_later_rounds_do_not_read_the_held_back_jobs_again(make_app, backend):
    """Task t1 (limit 1) has 5,000 jobs ahead of the others; then t2 (limit 1) and t3 in turn.
    A claim of 20 takes t1's first job and passes 19 over (round 1), takes one t2 and passes the
    second over (round 2), and takes the rest from t3 (round 3). SQLite walks the claim index
    (INDEXED BY): each round reads on from the last candidate, so the t1 jobs are read once
    (each round from the first job read them twice: 221 thousand steps). PostgreSQL reads the
    few t2 and t3 jobs through ix_jobs_state_task_queue (140 rows); a row comparison to read on
    from the last candidate made it walk past the 5,000 (5,096 rows)."""
    app = make_app()
    now = datetime.now(UTC) - timedelta(minutes=1)
    ahead = app.enqueue_many([JobSpec(task="t1", queue="r", priority=0, scheduled_at=now)] * AHEAD)
    after = app.enqueue_many(
        [JobSpec(task=f"t{2 + i % 2}", queue="r", priority=1, scheduled_at=now) for i in range(40)]
    )
    app.limits.set("task", "t1", concurrency=1)
    app.limits.set("task", "t2", concurrency=1)
    app.limits.set("queue", "r", concurrency=1000)
    with app.db.begin() as conn:
        conn.exec_driver_sql("ANALYZE")
    sql = LeaseSQL(app.db, 6.0)
    with _candidate_queries(app) as rounds, app.db.begin() as conn:
        with rows_read(conn, backend == "sqlite") as read:
            claims, _ = sql.claim_limited(
                conn, worker_id="w", queues=["r"], tasks=["t1", "t2", "t3"], limit=20, local_caps={}
            )
        conn.rollback()
    t3 = after[1::2]
    assert [c.job.id for c in claims] == [ahead[0], after[0], *t3[:18]]
    assert len(rounds) == 3
    assert read[0] <= {"postgresql": 600, "sqlite": 170}[backend], read[0]  # new: 140 rows, 136 steps


QUEUES, TASKS = ["q1", "q2", "q3"], ["t1", "t2", "t3"]
small_limit = st.one_of(st.none(), st.integers(1, 4))
scenario = st.fixed_dictionaries(
    {
        "queue_limits": st.fixed_dictionaries({q: small_limit for q in QUEUES}),
        "task_limits": st.fixed_dictionaries({t: small_limit for t in TASKS}),
        "jobs": st.lists(
            st.tuples(st.sampled_from(QUEUES), st.sampled_from(TASKS), st.integers(0, 3)), max_size=30
        ),
        "want": st.integers(1, 12),
        "local_caps": st.fixed_dictionaries({q: st.one_of(st.none(), st.integers(0, 3)) for q in QUEUES}),
    }
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(s=scenario)
def test_the_limited_claim_takes_what_a_walk_in_claim_order_takes(make_app, s):
    """Over generated jobs (three queues, three tasks, priorities), limits and worker caps, the
    limited claim takes exactly the jobs that one walk of the worker's limited jobs in claim
    order takes, each as long as every limit and cap it falls under has room."""
    app = make_app()
    with app.db.begin() as conn:
        for table in (job_executions, jobs, job_limits):
            conn.execute(delete(table))
    limits = {("queue", q): n for q, n in s["queue_limits"].items() if n}
    limits.update({("task", t): n for t, n in s["task_limits"].items() if n})
    for (kind, name), n in limits.items():
        app.limits.set(kind, name, concurrency=n)
    at = datetime.now(UTC) - timedelta(minutes=1)
    ids = app.enqueue_many(
        [
            JobSpec(task=t, queue=q, priority=p, scheduled_at=at - timedelta(seconds=i))
            for i, (q, t, p) in enumerate(s["jobs"])
        ]
    )
    caps = {q: c for q, c in s["local_caps"].items() if c is not None}
    room: dict[tuple[str, str], float] = {k: float(n) for k, n in limits.items()}
    for q, cap in caps.items():
        room[("queue", q)] = min(room.get(("queue", q), math.inf), cap)
    order = sorted(
        (p, -i, job_id, q, t) for i, (job_id, (q, t, p)) in enumerate(zip(ids, s["jobs"], strict=True))
    )
    expected = []
    for _, _, job_id, q, t in order:  # the walk: each limited job while its limits have room
        keys = [k for k in (("queue", q), ("task", t)) if k in room]
        limited = ("queue", q) in limits or ("task", t) in limits
        if limited and len(expected) < s["want"] and all(room[k] > 0 for k in keys):
            for k in keys:
                room[k] -= 1
            expected.append(job_id)
    sql = LeaseSQL(app.db, 60)
    with app.db.begin() as conn:
        claims, _ = sql.claim_limited(
            conn, worker_id="w", queues=QUEUES, tasks=TASKS, limit=s["want"], local_caps=caps
        )
        conn.rollback()
    assert [c.job.id for c in claims] == expected


def test_four_worker_processes_of_several_limited_queues_run_each_job_once_within_the_limits(
    db_url, make_app, workers
):
    """Four processes, each a worker of queues a, b and c (4 slots): queue a limited to 3
    running jobs, task record_async (in b and c) to 2, the rest of b and c unlimited. Every job
    runs once, and the database never shows a limit passed."""
    app = make_app()
    app.limits.set("queue", "a", concurrency=3)
    app.limits.set("task", basic.record_async.name, concurrency=2)
    specs = [basic.record.configure(queue="a").prepare(sleep=0.01) for _ in range(150)]
    for queue in ("b", "c"):
        specs += [basic.record.configure(queue=queue).prepare(sleep=0.01) for _ in range(75)]
        specs += [basic.record_async.configure(queue=queue).prepare(sleep=0.01) for _ in range(75)]
    done = {("a", "record", "completed"): 150}
    for queue in ("b", "c"):
        done.update({(queue, "record", "completed"): 75, (queue, "record_async", "completed"): 75})
    procs = [workers(concurrency=4, name=f"w{i}", queues="a,b,c") for i in range(4)]
    with (
        RunningMonitor(app, jobs.c.queue, "a") as queue_a,
        RunningMonitor(app, jobs.c.task, basic.record_async.name) as task_limited,
    ):
        race_workers(db_url, app, procs, lambda: app.enqueue_many(specs), done)
    assert max(queue_a.samples) <= 3, "the database showed more than 3 jobs of queue a running"
    assert max(task_limited.samples) <= 2, "the database showed more than 2 record_async jobs running"
