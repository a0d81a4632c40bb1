"""Every read of `jobs` keeps an index after statistics are taken (ANALYZE, which an operator
or `PRAGMA optimize` may run): the worker's claim, burst check, `next_due`, completion,
staging and rescue (SQLite pins them with INDEXED BY), and the reads migration 0016 touched
(it made `ix_jobs_finished_at` and `ix_jobs_schedule` partial and dropped
`ix_jobs_state_finished`): retention, the dead-letter purge, a schedule's overlap check,
`unique_for`, the check for due retries and the dashboard's live counts. Tables of 20,000
jobs; the statements are the ones the code runs where they are recorded as executed.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import String, cast, func, select, update

from ledgerflow.api.listing import list_jobs
from ledgerflow.cleanup import Retention, prune
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
from ledgerflow.engine.search import BulkActions, JobFilter, count_matching
from ledgerflow.engine.states import CLAIMABLE, LIVE, JobState
from tests.apps import basic
from tests.engine.plans import explain, explain_statement, recorded, scans_jobs

JOBS = 20_000
NOW = datetime.now(UTC)


def _history(app: Any) -> list[int]:
    """20,000 jobs: 18,000 finished over the last 60 days (500 of them dead, 500 made by 50
    schedules), 500 completed with unique keys, 500 running (half with expired leases), 1,000
    waiting."""
    ids = app.enqueue_many([basic.record.prepare() for _ in range(JOBS)])
    with app.db.begin() as conn:
        for n, job_id in enumerate(ids[:18_000]):
            if n % 500 == 0:  # one finish time per 500 jobs, oldest first
                finished = NOW - timedelta(days=60) + timedelta(days=60 * n / 18_000)
                conn.execute(
                    update(jobs)
                    .where(jobs.c.id >= job_id, jobs.c.id < job_id + 500)
                    .values(state="completed", finished_at=finished)
                )
        conn.execute(
            update(jobs).where(jobs.c.id > ids[16_999], jobs.c.id <= ids[17_499]).values(state="dead")
        )
        schedule = (jobs.c.id % 50) + 1
        conn.execute(
            update(jobs).where(jobs.c.id > ids[17_499], jobs.c.id <= ids[17_999]).values(schedule_id=schedule)
        )
        conn.execute(
            update(jobs)
            .where(jobs.c.id > ids[17_999], jobs.c.id <= ids[18_499])
            .values(unique_key="key-" + cast(jobs.c.id, String), state="completed", finished_at=NOW)
        )
        for low, high, expires in ((18_499, 18_749, -1), (18_749, 18_999, 1)):
            conn.execute(
                update(jobs)
                .where(jobs.c.id > ids[low], jobs.c.id <= ids[high])
                .values(
                    state="running", lease_token=jobs.c.id, lease_expires_at=NOW + timedelta(hours=expires)
                )
            )
        conn.exec_driver_sql("ANALYZE")
    return ids


def _reads(app: Any, ids: list[int]) -> dict[str, Callable[[], Any]]:
    store = app.store
    keep = Retention(
        jobs=timedelta(days=59),
        fires=timedelta(days=90),
        alerts=timedelta(days=60),
        workers=timedelta(days=7),
        export_work=timedelta(days=7),
    )

    def unique_for() -> Any:
        with app.db.begin() as conn:
            return store._recent_unique(conn, f"key-{ids[18_100]}", 3600.0)

    def overlap() -> Any:
        with app.db.begin() as conn:
            return app.schedules.running_job(conn, 7)

    def rescue() -> Any:
        with app.db.begin() as conn:
            return expired_leases(app.db, conn)

    def stage_check() -> Any:
        with app.db.begin() as conn:
            return has_stageable(app.db, conn)

    return {
        "retention": lambda: prune(app, keep),
        "purge of old dead jobs": lambda: store.purge_dead(older_than=timedelta(days=59)),
        "schedule overlap": overlap,
        "unique_for": unique_for,
        "rescue": rescue,
        "due retries and scheduled jobs": stage_check,
        "live counts": lambda: store.counts(LIVE),
    }


def test_reads_of_jobs_keep_their_indexes_after_analyze(make_app, backend):
    app = make_app()
    ids = _history(app)
    for name, read in _reads(app, ids).items():
        with recorded(app) as statements:
            read()
        assert statements, name
        for statement, parameters in statements.items():
            plan = explain(app, statement, parameters, backend)
            assert not scans_jobs(plan), (name, statement, plan)


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
        "next due": (due_query("other"), {"priority": 0}),
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


def test_the_reads_of_the_enqueue_indexes_keep_them_after_analyze(make_app, backend):
    """A plain job enters three indexes at enqueue besides the claim index (state, task, queue;
    state, id; created_at). Each is the index of a read at scale (docs/benchmarks.md, "Indexes
    written per enqueue"): the counts per state, task and queue (every metrics scrape, the
    alert check, the queue summary, autostop) read the first in its order, with no sort (its
    columns merged into the second made them 7-10x slower on SQLite at 1,000,000 jobs); the
    listings by state newest first read the second; the enqueue-time filters of a listing, a
    search count and a bulk count read the third (dropped: 0.1 -> 90 ms a count of one hour's
    jobs at 1,000,000). The same history as above, enqueue times spread over 60 days."""
    app = make_app()
    _history(app)
    with app.db.begin() as conn:
        finished = jobs.c.finished_at.isnot(None)
        conn.execute(update(jobs).where(finished).values(created_at=jobs.c.finished_at))
        conn.exec_driver_sql("ANALYZE")
    window = JobFilter(enqueued_after=NOW - timedelta(days=30.5), enqueued_before=NOW - timedelta(days=29.5))
    dead = select(jobs.c.task, func.count()).where(jobs.c.state == JobState.DEAD).group_by(jobs.c.task)

    def dead_per_task() -> Any:
        with app.db.read() as conn:
            return conn.execute(dead).all()

    counting = {
        "counts of every state": lambda: app.store.counts(),
        "counts for the alert check": lambda: app.store.counts([*CLAIMABLE, JobState.DEAD]),
        "dead per task": dead_per_task,
    }
    listing = {
        "list available": lambda: list_jobs(app.db, state="available"),
        "list dead": lambda: list_jobs(app.db, state="dead"),
        "list enqueued in a window": lambda: list_jobs(app.db, filt=window),
        "search count of a window": lambda: count_matching(app.db, window),
        "bulk count of a window": lambda: BulkActions(app.store).count(window, "delete"),
    }
    assert count_matching(app.db, window) == BulkActions(app.store).count(window, "delete")[0] == 500
    for name, read in {**counting, **listing}.items():
        with recorded(app) as statements:
            read()
        assert statements, name
        for statement, parameters in statements.items():
            plan = explain(app, statement, parameters, backend)
            if name == "counts of every state" and backend == "postgresql":
                continue  # every row counted: a sequential scan is a fair plan for PostgreSQL
            assert not scans_jobs(plan), (name, statement, plan)
            if backend == "sqlite" and name in counting:
                assert "COVERING INDEX ix_jobs_state_task_queue" in plan, (name, plan)
                assert "TEMP B-TREE" not in plan, (name, plan)
            if backend == "sqlite" and "window" in name:
                assert "ix_jobs_created_at" in plan, (name, plan)
