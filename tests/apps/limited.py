"""A test app for global limits, run by real worker processes (`--app tests.apps.limited:app`).

Each run records its start and end (process clock shared by the host) in `limit_runs`, so a
test can check how many runs overlapped without trusting the queue's own bookkeeping.
"""

from __future__ import annotations

import os
import time

from sqlalchemy import Column, Float, Integer, MetaData, String, Table, insert, update

from ledgerflow import App, current_job

app = App()
metadata = MetaData()
limit_runs = Table(
    "limit_runs",
    metadata,
    Column("job_id", Integer, primary_key=True),
    Column("task", String(100), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("started", Float, nullable=False),
    Column("ended", Float),
)


def _run(task: str, sleep: float) -> None:
    job = current_job()
    assert job is not None
    with app.db.begin() as conn:
        conn.execute(
            insert(limit_runs).values(job_id=job.job_id, task=task, pid=os.getpid(), started=time.time())
        )
    time.sleep(sleep)
    with app.db.begin() as conn:
        conn.execute(update(limit_runs).where(limit_runs.c.job_id == job.job_id).values(ended=time.time()))


@app.task(name="mail.send", queue="mail")
def send(sleep: float = 0.2) -> None:
    """A job of the `mail` queue (the tests limit the queue)."""
    _run("mail.send", sleep)


@app.task(name="bank.fetch", queue="default", global_limit=2)
def fetch(sleep: float = 0.2) -> None:
    """A task that declares its own global limit in code."""
    _run("bank.fetch", sleep)


@app.task(name="plain", queue="default")
def plain(sleep: float = 0.0) -> None:
    """An unlimited task, sharing the default queue with `bank.fetch`."""
    _run("plain", sleep)
