"""Review of the worker CPU changes (issue 14): a sync task's end hands over its slot to the
next prefetched job from a loop callback, and the sync timeouts share one loop timer. Both
backends, a real worker in this process."""

from __future__ import annotations

import contextvars
import threading
import time

from ledgerflow import JobState

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
