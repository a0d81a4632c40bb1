"""Review of the worker CPU changes (issue 14): a sync task's end hands over its slot to the
next prefetched job from a loop callback, and the sync timeouts share one loop timer. Both
backends, a real worker in this process."""

from __future__ import annotations

import contextvars
import json
import signal
import threading
import time

from ledgerflow import JobState
from tests.apps import basic
from tests.conftest import count_runs, run_rows, wait_until

#: A context variable a task sets and does not reset (as `structlog.contextvars.bind_contextvars`).
LEAK: contextvars.ContextVar[str | None] = contextvars.ContextVar("review_cpu_leak", default=None)


def test_a_job_started_when_a_sync_task_ends_does_not_run_in_that_tasks_thread_context(make_app):
    """The slot a sync task frees is taken by the next prefetched job in a loop callback that
    the task's pool thread scheduled: an async job started there must not inherit the context
    variables that thread's tasks left set (they would leak from one job into another)."""
    app = make_app()
    seen: list[str | None] = []

    @app.task(name="leaves_var_set")
    def leaves_var_set() -> None:
        LEAK.set("set by a sync task")
        time.sleep(0.05)  # still running when the main loop has started what it could

    @app.task(name="reads_var")
    async def reads_var() -> None:
        seen.append(LEAK.get())

    first = leaves_var_set.enqueue()
    second = reads_var.enqueue()
    app.run_worker(burst=True, concurrency=1, prefetch=4)
    assert app.get_job(first.id).state == JobState.COMPLETED
    assert app.get_job(second.id).state == JobState.COMPLETED
    assert seen == [None]


def test_a_timeout_whose_handling_raises_does_not_disarm_the_later_timeouts(make_app):
    """One loop timer serves all sync deadlines: when failing one timed-out attempt raises (a
    retry backoff of the application that raises), the later deadlines are still watched; the
    other attempt times out at its own 0.6 s, not at timeout + a lease by the heartbeat."""
    app = make_app(max_abandoned_threads=10)
    release = threading.Event()

    def broken_backoff(_attempt: int) -> float:
        raise RuntimeError("a bug in the application's backoff")

    @app.task(name="bad_backoff", timeout=0.3, retry_backoff=broken_backoff)
    def bad_backoff() -> None:
        release.wait(20)

    @app.task(name="hangs", timeout=0.6, max_attempts=1)
    def hangs() -> None:
        release.wait(20)

    bad_backoff.enqueue()
    job = hangs.enqueue()
    worker = app.worker(concurrency=2, lease_seconds=30, heartbeat_seconds=1)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 8  # the heartbeat would fail it after 0.6 + 30 s
        while time.monotonic() < deadline and app.get_job(job.id).state != JobState.DEAD:
            time.sleep(0.05)
        dead = app.get_job(job.id)
        assert dead.state == JobState.DEAD, dead.state
        assert [e.type for e in dead.errors] == ["timeout"]
        (execution,) = app.store.executions(job.id)
        assert execution["duration_seconds"] < 3
    finally:
        release.set()
        worker.stop(force=True)
        thread.join(20)
    assert not thread.is_alive()


def test_sync_deadlines_with_an_infinite_timeout_and_a_retry_of_the_same_job(make_app):
    """The heap of deadlines holds an infinite one (never armed as a timer, never due) beside
    finite ones, and a job retried by the same worker gets a deadline of its own attempt: the
    first attempt's deadline (its key ended) does not fail the second, nor the reverse."""
    app = make_app(max_abandoned_threads=10)
    attempts: list[int] = []

    @app.task(name="forever", timeout=float("inf"))
    def forever() -> str:
        time.sleep(0.6)
        return "ran 0.6 s of an infinite timeout"

    @app.task(name="short", timeout=0.2, max_attempts=1)
    def short() -> None:
        time.sleep(3)

    @app.task(name="retried", timeout=0.4, max_attempts=2, retry_backoff=[0.0])
    def retried() -> str:
        attempts.append(1)
        if len(attempts) == 1:
            raise ValueError("first attempt fails at once")
        time.sleep(0.3)  # within its own 0.4 s; the first attempt's deadline has passed by then
        return "second attempt"

    inf_job, short_job, retried_job = forever.enqueue(), short.enqueue(), retried.enqueue()
    app.run_worker(burst=True, concurrency=3)
    assert app.get_job(inf_job.id).result == "ran 0.6 s of an infinite timeout"
    dead = app.get_job(short_job.id)
    assert dead.state == JobState.DEAD and [e.type for e in dead.errors] == ["timeout"]
    (execution,) = app.store.executions(short_job.id)
    assert execution["duration_seconds"] < 1.5
    done = app.get_job(retried_job.id)
    assert done.state == JobState.COMPLETED and done.result == "second attempt"
    assert [e["status"] for e in app.store.executions(retried_job.id)] == ["failed", "completed"]


def test_sigterm_among_quick_prefetched_jobs_starts_none_after_the_drain_and_runs_each_once(
    db_url, make_app, workers
):
    """A worker process drains on SIGTERM while quick sync and async jobs end and the slots
    they free take prefetched ones (in the loop callback of the ends): every job it started
    ends before it exits, the prefetched ones go back unstarted, and with a second worker each
    job runs exactly once."""
    app = make_app()
    ids = app.enqueue_many(
        [
            (basic.record if i % 3 else basic.record_async).prepare(sleep=0.01, label=str(i))
            for i in range(600)
        ]
    )
    w = workers(concurrency=2, name="drained")
    wait_until(lambda: len(run_rows(db_url)) >= 60, 60, 0.02, "jobs running")
    w.signal(signal.SIGTERM)
    assert w.wait(30) == 0, w.log()[-2000:]
    log = w.log()
    assert "worker_draining" in log and "worker_stopped" in log
    rows = run_rows(db_url)
    started = {r["job_id"] for r in rows if r["phase"] == "start"}
    finished = {r["job_id"] for r in rows if r["phase"] == "end"}
    assert started == finished, "every job started ended before the exit"
    assert len(started) < len(ids), "the drain stopped it before the end"
    assert {app.get_job(i).state for i in started} == {JobState.COMPLETED}
    assert {app.get_job(i).state for i in set(ids) - started} == {JobState.AVAILABLE}
    rest = workers(concurrency=2, burst=True, name="rest")
    assert rest.wait(120) == 0, rest.log()[-2000:]
    assert set(count_runs(db_url).values()) == {1} and set(count_runs(db_url)) == set(ids)
    assert {app.get_job(i).state for i in ids} == {JobState.COMPLETED}


def test_a_worker_process_at_warning_still_writes_every_failure_line_and_alert(db_url, make_app, workers):
    """The per-job INFO lines are not built when the level drops them: at WARNING a worker
    process writes no `job_completed` but every `job_retryable` and `job_dead` (and opens the
    dead job's alert); at INFO the `job_completed` lines are back."""
    app = make_app()
    (failing,) = app.enqueue_many([basic.fail_always.prepare()])
    quiet = app.enqueue_many([basic.record.prepare() for _ in range(5)])
    w = workers(concurrency=2, burst=True, name="warning", env={"LEDGERFLOW_LOG_LEVEL": "WARNING"})
    assert w.wait(60) == 0, w.log()[-2000:]
    lines = [json.loads(line) for line in w.log().splitlines() if line.startswith("{")]
    events = [line["event"] for line in lines]
    assert events.count("job_retryable") == 2 and events.count("job_dead") == 1, events
    assert "job_completed" not in events and "job_running" not in events
    assert app.alerts.is_open("job_dead:fail_always")
    assert app.get_job(failing).state == JobState.DEAD
    assert {app.get_job(i).state for i in quiet} == {JobState.COMPLETED}
    more = app.enqueue_many([basic.record.prepare() for _ in range(5)])
    w = workers(concurrency=2, burst=True, name="info", env={"LEDGERFLOW_LOG_LEVEL": "INFO"})
    assert w.wait(60) == 0, w.log()[-2000:]
    completed = [e for e in w.log().splitlines() if '"job_completed"' in e]
    assert {json.loads(e)["job_id"] for e in completed} == set(more)
