"""Each read of `jobs` outside the claim keeps an index after statistics are taken (migration
0016 made `ix_jobs_finished_at` and `ix_jobs_schedule` partial and dropped
`ix_jobs_state_finished`): retention, the dead-letter purge, a schedule's overlap check,
`unique_for`, the lease rescue, the check for due retries and the dashboard's live counts.
The statements are the ones the code runs (recorded as executed), explained on a table of
20,000 jobs after ANALYZE.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import String, cast, update

from ledgerflow.cleanup import Retention, prune
from ledgerflow.db.tables import jobs
from ledgerflow.engine.leases import expired_leases, has_stageable
from ledgerflow.engine.states import LIVE
from tests.apps import basic
from tests.engine.plans import explain, recorded, scans_jobs

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
