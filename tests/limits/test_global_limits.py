"""Global concurrency limits hold across real worker processes, on both backends."""

from __future__ import annotations

import threading

from sqlalchemy import func, select, update

from ledgerflow import JobState
from ledgerflow.db.tables import job_executions, jobs
from ledgerflow.engine.leases import LeaseSQL
from tests.apps import limited
from tests.conftest import wait_until


class RunningMonitor:
    """Samples, from its own connection, how many jobs of a queue or task are running."""

    def __init__(self, app, column, name: str) -> None:
        self.app, self.column, self.name = app, column, name
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        query = select(func.count()).where(jobs.c.state == JobState.RUNNING, self.column == self.name)
        while not self._stop.is_set():
            with self.app.db.read() as conn:
                self.samples.append(int(conn.execute(query).scalar_one()))
            self._stop.wait(0.01)

    def __enter__(self) -> RunningMonitor:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def runs(app, task: str, ids=None) -> list[tuple[float, float, int]]:
    """(start, end, pid) of the recorded runs of a task (optionally of these job ids)."""
    t = limited.limit_runs
    query = select(t.c.started, t.c.ended, t.c.pid).where(t.c.task == task)
    if ids is not None:
        query = query.where(t.c.job_id.in_(ids))
    with app.db.read() as conn:
        return [(r.started, r.ended, r.pid) for r in conn.execute(query)]


def max_overlap(intervals: list[tuple[float, float, int]]) -> int:
    """The largest number of runs in progress at one instant (an end before a start at a tie)."""
    events = sorted([(s, 1) for s, _, _ in intervals] + [(e, -1) for _, e, _ in intervals])
    best = current = 0
    for _, step in events:
        current += step
        best = max(best, current)
    return best


def _prepare(make_app):
    app = make_app()
    limited.metadata.create_all(app.db.engine)
    return app


def _finished(app, ids) -> bool:
    return all(app.get_job(i).state == JobState.COMPLETED for i in ids)


def test_queue_limit_holds_across_three_worker_processes(db_url, make_app, workers):
    app = _prepare(make_app)
    app.limits.set("queue", "mail", concurrency=3)
    ids = app.enqueue_many([limited.send.prepare(sleep=0.3) for _ in range(30)])
    # 3 processes x 2 slots could run 6 at once: reaching 3 takes two processes, passing it the limit
    with RunningMonitor(app, jobs.c.queue, "mail") as monitor:
        procs = [workers(app="tests.apps.limited:app", queues="mail", concurrency=2) for _ in range(3)]
        wait_until(lambda: _finished(app, ids), 240, message="all mail jobs completed")
    recorded = runs(app, "mail.send")
    assert len(recorded) == 30 and all(e is not None for _, e, _ in recorded)
    assert max(monitor.samples) <= 3, "the database showed more than 3 mail jobs running"
    assert max_overlap(recorded) == 3, "runs overlapped beyond the limit, or never reached it"
    assert {app.get_job(i).attempt for i in ids} == {1}, "a job over the limit spent an attempt"
    for p in procs:
        p.stop()


def test_task_limit_declared_in_code_holds_and_unlimited_task_of_the_queue_runs_freely(
    db_url, make_app, workers
):
    app = _prepare(make_app)
    limited_ids = app.enqueue_many([limited.fetch.prepare(sleep=0.3) for _ in range(12)])
    plain_ids = app.enqueue_many([limited.plain.prepare(sleep=0.3) for _ in range(12)])
    with RunningMonitor(app, jobs.c.task, "bank.fetch") as monitor:
        procs = [workers(app="tests.apps.limited:app", concurrency=4) for _ in range(3)]
        wait_until(lambda: _finished(app, limited_ids + plain_ids), 240, message="all jobs completed")
    stored = app.limits.get("task", "bank.fetch")
    assert stored is not None and stored.concurrency == 2 and stored.set_by == "code"
    assert max(monitor.samples) <= 2
    assert max_overlap(runs(app, "bank.fetch")) == 2
    assert max_overlap(runs(app, "plain")) > 2, "the unlimited task was held back by its neighbour's limit"
    for p in procs:
        p.stop()


def test_cleared_limit_releases_waiting_jobs_and_a_new_limit_holds_at_once(db_url, make_app, workers):
    app = _prepare(make_app)
    app.limits.set("queue", "mail", concurrency=1)
    first = app.enqueue_many([limited.send.prepare(sleep=0.3) for _ in range(6)])
    proc = workers(app="tests.apps.limited:app", queues="mail", concurrency=4)
    wait_until(lambda: app.get_job(first[0]).state != JobState.AVAILABLE, 60, message="first job claimed")
    assert app.limits.clear("queue", "mail")
    assert not app.limits.clear("queue", "mail")
    wait_until(lambda: _finished(app, first), 120, message="jobs ran after the limit was cleared")
    assert max_overlap(runs(app, "mail.send")) > 1, "clearing the limit did not free the queue"
    app.limits.set("queue", "mail", concurrency=1)
    second = app.enqueue_many([limited.send.prepare(sleep=0.2) for _ in range(5)])
    wait_until(lambda: _finished(app, second), 120, message="jobs ran under the new limit")
    assert max_overlap(runs(app, "mail.send", second)) == 1
    proc.stop()


def _starts(app, ids) -> list[float]:
    """Database-clock start times (epoch seconds) of every attempt of these jobs, in order."""
    with app.db.read() as conn:
        rows = conn.execute(select(job_executions.c.started_at).where(job_executions.c.job_id.in_(ids)))
        return sorted(r.started_at.timestamp() for r in rows)


def test_rate_limit_holds_across_worker_processes_and_spends_no_attempts(db_url, make_app, workers):
    app = _prepare(make_app)
    app.limits.set("queue", "mail", rate="4/2s")
    ids = app.enqueue_many([limited.send.prepare(sleep=0.0) for _ in range(14)])
    procs = [workers(app="tests.apps.limited:app", queues="mail", concurrency=4) for _ in range(3)]
    wait_until(lambda: _finished(app, ids), 240, message="all mail jobs completed")
    starts = _starts(app, ids)
    assert len(starts) == 14, "a job started more than once"
    # no 2-second window holds a fifth start (1 ms: the stored clock's rounding)
    assert all(later - first >= 2.0 - 1e-3 for first, later in zip(starts, starts[4:], strict=False))
    assert {app.get_job(i).attempt for i in ids} == {1}, "waiting for the rate limit spent an attempt"
    for p in procs:
        p.stop()


def test_task_and_queue_limits_together(db_url, make_app):
    """A job under two limits waits for both; the rate window and running count are shared."""
    app = _prepare(make_app)
    app.limits.set("queue", "mail", concurrency=3, rate="5/minute")
    app.limits.set("task", "mail.send", concurrency=2)
    ids = app.enqueue_many([limited.send.prepare() for _ in range(8)])

    sql = LeaseSQL(app.db, 30)
    claim = dict(worker_id="w", queues=["mail"], tasks=["mail.send"], local_caps={})
    with app.db.begin() as conn:
        ordinary = sql.claim(conn, limit=8, worker_id="w", queues=["mail"], tasks=["mail.send"])
        assert ordinary == [], "the ordinary claim took a limited job"
        first, _ = sql.claim_limited(conn, limit=8, **claim)
    assert len(first) == 2, "the task's concurrency limit of 2 was not applied"
    with app.db.begin() as conn:
        assert sql.claim_limited(conn, limit=8, **claim) == ([], None)
        conn.execute(update(jobs).where(jobs.c.id == first[0].job.id).values(state="completed"))
        assert len(sql.claim_limited(conn, limit=8, **claim)[0]) == 1
        conn.execute(update(jobs).where(jobs.c.state == "running").values(state="completed"))
        assert len(sql.claim_limited(conn, limit=8, **claim)[0]) == 2, "the queue's rate of 5 allows 2 more"
        conn.execute(update(jobs).where(jobs.c.state == "running").values(state="completed"))
        claimed, opens_in = sql.claim_limited(conn, limit=8, **claim)
        assert claimed == [], "the rate window is full"
        assert opens_in is not None and 59 < opens_in <= 60, "the window opens a minute after its first start"
    assert len(ids) == 8
    stored = app.limits.get("queue", "mail")
    assert stored is not None and stored.rate == "5/minute"
