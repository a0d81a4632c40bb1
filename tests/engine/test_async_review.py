"""Hostile review of the async task's path (review7): what an async attempt raises, how its
timeout meets a task that will not stop, against a real worker and real SQLite files and
PostgreSQL."""

from __future__ import annotations

import asyncio
import signal
import time

from ledgerflow import JobState, current_job
from tests.apps import basic
from tests.conftest import count_runs, run_rows, wait_until


class Abort(BaseException):
    """A BaseException of the task's own (not an Exception, not SystemExit/KeyboardInterrupt)."""


def test_an_async_task_raising_a_base_exception_fails_the_attempt_as_a_sync_task_does(make_app):
    """GeneratorExit or a BaseException subclass of the task's own fails the attempt (one
    execution row, its retry), as in a sync task (the thread pool catches BaseException): it
    left the attempt without an outcome before, the job running until its lease ran out and a
    rescue ran it again."""
    app = make_app()

    @app.task(name="aborts", max_attempts=2, retry_backoff=[0.0])
    async def aborts() -> None:
        await asyncio.sleep(0)
        raise Abort("stop here")

    @app.task(name="gen_exit", max_attempts=1)
    async def gen_exit() -> None:
        await asyncio.sleep(0)
        raise GeneratorExit

    @app.task(name="aborts_sync", max_attempts=2, retry_backoff=[0.0])
    def aborts_sync() -> None:
        raise Abort("stop here")

    a, g, s = aborts.enqueue(), gen_exit.enqueue(), aborts_sync.enqueue()
    app.run_worker(burst=True, concurrency=3)
    for job in (a, s):
        dead = app.get_job(job.id)
        assert dead.state == JobState.DEAD, dead.state
        assert [(e.type, e.message, e.attempt) for e in dead.errors] == [
            ("Abort", "stop here", 1),
            ("Abort", "stop here", 2),
        ]
        rows = app.store.executions(job.id)
        assert [(r["attempt"], r["status"], r["error_type"]) for r in rows] == [
            (1, "failed", "Abort"),
            (2, "failed", "Abort"),
        ]
    dead = app.get_job(g.id)
    assert dead.state == JobState.DEAD, dead.state
    assert [e.type for e in dead.errors] == ["GeneratorExit"]


def test_an_async_task_that_ignores_its_timeout_cancellation_fails_by_the_heartbeat(make_app):
    """A task that catches the cancellation of its timeout and goes on awaiting (here 4 s) does
    not complete with its late result: the heartbeat fails the attempt as a timeout once past
    its timeout plus a lease (`_overdue`) and fences it; the retry completes, one execution row
    per attempt. Held on main and after the asyncpath merge (review7)."""
    app = make_app()
    ended: list[tuple[int, str]] = []

    @app.task(name="stubborn", timeout=0.3, max_attempts=2, retry_backoff=[0.0])
    async def stubborn() -> str:
        job = current_job()
        assert job is not None
        if job.attempt > 1:
            return "second attempt"
        until = time.monotonic() + 4
        while time.monotonic() < until:
            try:
                await asyncio.sleep(until - time.monotonic())
            except asyncio.CancelledError:
                continue  # ignores it
        ended.append((job.attempt, "late"))
        return "late"

    job = stubborn.enqueue()
    worker = app.worker(concurrency=2, burst=True, lease_seconds=2)
    began = time.monotonic()
    worker.run()
    done = app.get_job(job.id)
    assert done.state == JobState.COMPLETED, done.state
    assert done.result == "second attempt"
    rows = app.store.executions(job.id)
    assert [(r["attempt"], r["status"], r["error_type"]) for r in rows] == [
        (1, "failed", "timeout"),
        (2, "completed", None),
    ]
    assert [e.type for e in done.errors] == ["timeout"]
    assert ended == [(1, "late")]  # the abandoned task ran on (the burst's end waited for it)
    assert time.monotonic() - began < 30


def test_sigterm_lets_running_async_jobs_finish_and_starts_no_prefetched_one(db_url, make_app, workers):
    """A real worker process running async jobs (two slots, more prefetched) drains on SIGTERM:
    the running ones finish (their ends, which start prefetched jobs, start none once the stop
    began), the rest stay available and untouched; a later worker runs each exactly once."""
    app = make_app()
    ids = app.enqueue_many([basic.record_async.prepare(sleep=0.8) for _ in range(12)])
    w = workers(concurrency=2, name="async-graceful")
    wait_until(lambda: len(run_rows(db_url)) >= 2, 30, message="2 async jobs running")
    w.signal(signal.SIGTERM)
    assert w.wait(15) == 0, w.log()[-2000:]
    rows = run_rows(db_url)
    started = {r["job_id"] for r in rows if r["phase"] == "start"}
    finished = {r["job_id"] for r in rows if r["phase"] == "end"}
    assert started == finished and len(started) <= 4, (started, finished)
    assert all(app.get_job(i).state == JobState.COMPLETED for i in started)
    assert all(app.get_job(i).state == JobState.AVAILABLE for i in set(ids) - started)
    assert all(not app.store.executions(i) for i in set(ids) - started), "no attempt of the rest"
    rest = workers(concurrency=4, burst=True, name="async-rest")
    assert rest.wait(60) == 0
    assert set(count_runs(db_url).values()) == {1}
    assert {app.get_job(i).state for i in ids} == {JobState.COMPLETED}


def test_sigkill_mid_async_task_is_rescued_with_one_execution_row_per_attempt(db_url, make_app, workers):
    """SIGKILL of a worker process while its async tasks await: their leases lapse, a rescue
    records the attempt (`lease_expired`) and another worker completes them."""
    app = make_app()
    ids = app.enqueue_many([basic.record_async.prepare(sleep=0.5) for _ in range(40)])
    victim = workers(concurrency=4, name="async-victim")
    wait_until(lambda: any(r["pid"] == victim.pid for r in run_rows(db_url)), 30, message="victim runs")
    time.sleep(0.3)
    victim.signal(signal.SIGKILL)
    victim.wait(10)
    survivor = workers(concurrency=4, name="async-survivor")
    wait_until(lambda: {app.get_job(i).state for i in ids} == {JobState.COMPLETED}, 90, 0.3, "all completed")
    runs = count_runs(db_url)
    assert set(runs) == set(ids), "no job lost"
    for job_id in ids:
        execs = app.store.executions(job_id)
        assert [e["attempt"] for e in execs] == list(range(1, len(execs) + 1)), execs
        assert execs[-1]["status"] == "completed"
        assert all(e["error_type"] == "lease_expired" for e in execs[:-1]), execs
        assert len(execs) <= 2  # a claim the victim held (running or prefetched) is rescued once
    rescued = [i for i in ids if len(app.store.executions(i)) == 2]
    assert rescued, "the victim held async jobs when killed"
    assert "job_rescued" in survivor.log()


def test_sync_async_and_process_tasks_share_the_worker_concurrency(make_app, db_url, workers):
    """One real worker process runs sync, async and process-isolated jobs together: at most
    `concurrency` of the marked ones at once (their start/end marks in commit order), each
    completes once; a process job past its timeout (`spin`, killed) fails as a timeout."""
    app = make_app()
    ids = app.enqueue_many(
        [basic.record.prepare(sleep=0.1) for _ in range(8)]
        + [basic.record_async.prepare(sleep=0.1) for _ in range(8)]
        + [basic.isolated_ok.prepare(i) for i in range(3)]
    )
    (spun,) = app.enqueue_many([basic.spin.prepare()])
    w = workers(concurrency=3, burst=True, name="mixed")
    assert w.wait(90) == 0, w.log()[-2000:]
    assert {app.get_job(i).state for i in ids} == {JobState.COMPLETED}
    assert app.get_job(spun).state == JobState.DEAD
    assert [e.type for e in app.get_job(spun).errors] == ["timeout"]
    running, peak = 0, 0
    for row in run_rows(db_url):  # by id: a start is marked after it began, an end before it ended
        running += 1 if row["phase"] == "start" else -1
        peak = max(peak, running)
    assert 1 <= peak <= 3, peak
    assert set(count_runs(db_url).values()) == {1}


def test_sigterm_past_grace_leaves_an_async_task_ignoring_cancellation_and_exits(make_app, db_url, workers):
    """SPEC: on SIGTERM a worker finishes within the grace period, then releases what is left.
    An async task that ignores its cancellation (here for 40 s) is waited for
    `ASYNC_RELEASE_WAIT` (3 s) past the grace period, then left running as a sync task's thread
    is (`left_running`: its attempt given back, its lease lapses at exit and a rescue makes it
    available) and the process exits; before, it exited only when the task chose to end."""
    app = make_app()
    (job,) = app.enqueue_many([basic.stubborn_async.prepare(40)])
    w = workers(concurrency=2, name="stubborn", env={"LEDGERFLOW_GRACE_SECONDS": "0.5"})
    wait_until(lambda: len(run_rows(db_url)) == 1, 60, message="the stubborn job running")
    stopped = time.monotonic()
    w.signal(signal.SIGTERM)
    assert w.wait(25) == 0, w.log()[-2000:]
    assert time.monotonic() - stopped < 15
    assert "async_task_left_running" in w.log()
    left = app.get_job(job)
    assert left.state == JobState.RUNNING and left.max_attempts == 6  # the attempt is given back
    assert [r["phase"] for r in run_rows(db_url)] == ["start"]
