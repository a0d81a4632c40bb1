"""The retention prune never deletes a job that was retried while the prune waited for it."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

from sqlalchemy import update

from ledgerflow import JobSpec, JobState
from ledgerflow.cleanup import Retention, prune
from ledgerflow.db.tables import jobs

S = JobState


def test_a_job_retried_while_the_prune_waits_on_it_is_kept(make_app):
    app = make_app()
    job = app.enqueue(JobSpec(task="t", delay=3600))
    app.store.cancel(job.id)
    keep = Retention(**{k: timedelta(0) for k in Retention.__dataclass_fields__})
    counts: dict[str, int] = {}
    with app.db.begin() as conn:  # an operator's retry, not committed yet, holds the row
        conn.execute(update(jobs).where(jobs.c.id == job.id).values(state=S.AVAILABLE))
        pruner = threading.Thread(
            target=lambda: counts.update(prune(app, keep, now=datetime.now(UTC) + timedelta(days=1)))
        )
        pruner.start()
        time.sleep(1.5)  # the prune found the cancelled job and waits for its row (or the lock)
    pruner.join(60)
    assert not pruner.is_alive()
    assert app.get_job(job.id).state == S.AVAILABLE, "the prune deleted a job retried meanwhile"
    assert counts["jobs"] == 0
