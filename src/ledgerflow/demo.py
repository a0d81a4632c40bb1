"""`ledgerflow demo`: show the engine (and, once loaded, the daily export) working end to end."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable
from typing import Any

from ledgerflow.app import App
from ledgerflow.engine.states import JobState

DEMO_TASK = "ledgerflow.demo.checksum"


def register_demo_tasks(app: App) -> None:
    @app.task(name=DEMO_TASK, queue="demo", max_attempts=3, retry_backoff=0.5)
    def checksum(n: int) -> str:
        """A small CPU-bound job: hash a generated payload."""
        return hashlib.sha256(f"ledgerflow-demo-{n}".encode() * 200).hexdigest()[:16]


def run_job_demo(app: App, jobs: int, on_progress: Callable[[int, int], None]) -> dict[str, Any]:
    """Enqueue `jobs` demo jobs, run them with an in-process worker, report progress."""
    task = app.registry.get(DEMO_TASK)
    started = time.monotonic()
    ids = app.enqueue_many([task.prepare(i) for i in range(jobs)])
    worker = app.worker("demo", concurrency=4, burst=True)
    thread = threading.Thread(target=worker.run, name="ledgerflow-demo-worker", daemon=True)
    thread.start()
    first, last = min(ids), max(ids)
    while True:
        counts = _counts(app, first, last)
        done = counts.get(JobState.COMPLETED, 0) + counts.get(JobState.DEAD, 0)
        on_progress(done, jobs)
        if done >= jobs or not thread.is_alive():
            break
        time.sleep(0.1)
    thread.join(30)
    elapsed = time.monotonic() - started
    counts = _counts(app, first, last)
    return {
        "jobs": jobs,
        "completed": counts.get(JobState.COMPLETED, 0),
        "dead": counts.get(JobState.DEAD, 0),
        "seconds": round(elapsed, 2),
        "jobs_per_second": round(jobs / elapsed, 1) if elapsed else None,
    }


def _counts(app: App, first: int, last: int) -> dict[str, int]:
    from sqlalchemy import func, select

    from ledgerflow.db.tables import jobs

    with app.db.read() as conn:
        rows = conn.execute(
            select(jobs.c.state, func.count()).where(jobs.c.id.between(first, last)).group_by(jobs.c.state)
        )
        return {r[0]: int(r[1]) for r in rows}
