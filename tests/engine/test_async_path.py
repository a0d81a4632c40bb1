"""The async task's path through the worker (issue 14, branch asyncpath): one asyncio task per
attempt, its timeout watched by the loop's deadline heap (no `wait_for`), and the slot it frees
taken by the next prefetched job as it ends. Both backends, a real worker in this process."""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time

from ledgerflow import JobState, current_job
from tests.conftest import wait_until

#: A context variable a task sets and does not reset (as `structlog.contextvars.bind_contextvars`).
LEAK: contextvars.ContextVar[str | None] = contextvars.ContextVar("async_path_leak", default=None)


def test_async_timeouts_are_each_kept_whatever_the_order_and_number_of_attempts(make_app):
    """An async attempt started after one with a longer timeout still ends at its own, among
    300 quick async attempts (the heap of deadlines compacted on the way), and one that ends in
    time is not failed by its deadline; the timed-out one is cancelled (its cleanup runs)."""
    app = make_app()
    started: dict[str, float] = {}
    cleaned: list[str] = []

    @app.task(name="long_first", timeout=30, priority=0)
    async def long_first() -> str:
        started["long_first"] = time.monotonic()
        await asyncio.sleep(1.5)
        return "ran 1.5 s of its 30"

    @app.task(name="short_later", timeout=0.4, max_attempts=1, priority=1)
    async def short_later() -> None:
        started["short_later"] = time.monotonic()
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            await asyncio.sleep(0.05)  # a cleanup that awaits, before the outcome is written
            cleaned.append("short_later")
            raise

    @app.task(name="quick", timeout=0.3, priority=2)
    async def quick(i: int) -> int:
        await asyncio.sleep(0)
        return i

    first, later = long_first.enqueue(), short_later.enqueue()
    quick_ids = app.enqueue_many([quick.prepare(i) for i in range(300)])
    app.run_worker(burst=True, concurrency=3)
    assert started["short_later"] >= started["long_first"]
    assert app.get_job(first.id).result == "ran 1.5 s of its 30"
    dead = app.get_job(later.id)
    assert dead.state == JobState.DEAD and [e.type for e in dead.errors] == ["timeout"]
    assert dead.errors[0].message == "attempt ran past its timeout of 0.4s"
    assert cleaned == ["short_later"]
    (execution,) = app.store.executions(later.id)
    assert execution["error_type"] == "timeout"
    assert 0.4 <= execution["duration_seconds"] < 4  # its own 0.4 s (and the cleanup), not 30 s
    assert {app.get_job(i).state for i in quick_ids} == {JobState.COMPLETED}


def test_an_async_task_that_swallows_its_timeout_and_returns_completes(make_app):
    """The timeout cancels the task; one that catches the cancellation and returns a value
    completes with it (as under `asyncio.wait_for`), one that raises instead fails with it."""
    app = make_app()

    @app.task(name="swallows", timeout=0.2, max_attempts=1)
    async def swallows() -> str:
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            return "stopped early"
        return "slept"

    @app.task(name="raises_instead", timeout=0.2, max_attempts=1)
    async def raises_instead() -> None:
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            raise RuntimeError("the cleanup failed") from None

    done, failed = swallows.enqueue(), raises_instead.enqueue()
    app.run_worker(burst=True, concurrency=2)
    assert app.get_job(done.id).state == JobState.COMPLETED
    assert app.get_job(done.id).result == "stopped early"
    dead = app.get_job(failed.id)
    assert dead.state == JobState.DEAD
    assert [(e.type, e.message) for e in dead.errors] == [("RuntimeError", "the cleanup failed")]


def test_an_async_job_started_when_another_ends_does_not_inherit_its_context(make_app):
    """The slot an async task frees is taken by the next prefetched job from that task's own
    end: the new job runs in a copy of the worker's context, not the ended task's (whose
    context variables, and current job, would leak into it)."""
    app = make_app()
    seen: list[tuple[str | None, int | None]] = []

    @app.task(name="leaves_var_set", priority=0)
    async def leaves_var_set() -> None:
        LEAK.set("set by an async task")
        await asyncio.sleep(0.05)

    @app.task(name="reads_var", priority=1)
    async def reads_var() -> None:
        job = current_job()
        seen.append((LEAK.get(), job.job_id if job else None))

    first = leaves_var_set.enqueue()
    second = reads_var.enqueue()
    app.run_worker(burst=True, concurrency=1, prefetch=4)
    assert app.get_job(first.id).state == JobState.COMPLETED
    assert app.get_job(second.id).state == JobState.COMPLETED
    assert seen == [(None, second.id)]
    assert LEAK.get() is None and current_job() is None


def test_concurrent_async_tasks_each_see_their_own_job_across_awaits(make_app):
    """`current_job()` in an async task is its own attempt's, before and after awaits that let
    the other running tasks run, on every attempt."""
    app = make_app()
    seen: dict[int, list[tuple[int, int]]] = {}

    @app.task(name="interleaved", max_attempts=2, retry_backoff=[0.0])
    async def interleaved(i: int) -> None:
        for _ in range(3):
            job = current_job()
            assert job is not None
            seen.setdefault(i, []).append((job.job_id, job.attempt))
            await asyncio.sleep(0.01)
        if i % 4 == 0 and current_job().attempt == 1:  # type: ignore[union-attr]
            raise ValueError("first attempt fails")

    ids = app.enqueue_many([interleaved.prepare(i) for i in range(20)])
    app.run_worker(burst=True, concurrency=4)
    for i, job_id in enumerate(ids):
        attempts = [1, 1, 1, 2, 2, 2] if i % 4 == 0 else [1, 1, 1]
        assert seen[i] == [(job_id, a) for a in attempts]
        assert app.get_job(job_id).state == JobState.COMPLETED


def test_an_async_task_exception_fails_the_attempt_with_its_type_message_and_traceback(make_app):
    app = make_app()

    @app.task(name="broken", max_attempts=2, retry_backoff=[0.0])
    async def broken(n: int) -> None:
        await asyncio.sleep(0)
        raise LookupError(f"no account {n}")

    job = broken.enqueue(7)
    app.run_worker(burst=True, concurrency=2)
    dead = app.get_job(job.id)
    assert dead.state == JobState.DEAD
    assert [(e.type, e.message, e.attempt) for e in dead.errors] == [
        ("LookupError", "no account 7", 1),
        ("LookupError", "no account 7", 2),
    ]
    assert "in broken" in dead.errors[0].traceback and "LookupError: no account 7" in dead.errors[0].traceback
    rows = app.store.executions(job.id)
    assert [(r["attempt"], r["status"], r["error_type"]) for r in rows] == [
        (1, "failed", "LookupError"),
        (2, "failed", "LookupError"),
    ]


def test_a_running_async_task_cancelled_by_an_operator_is_fenced_and_the_worker_goes_on(make_app):
    """An operator's cancel takes the lease: the heartbeat fences the attempt, its asyncio task
    is cancelled (its cleanup runs), no outcome of it is written, and the worker runs the next
    jobs."""
    app = make_app()
    events: list[str] = []

    @app.task(name="long_async", timeout=60)
    async def long_async() -> None:
        events.append("start")
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            events.append("cancelled")
            raise

    @app.task(name="after", priority=9)
    async def after() -> str:
        return "ran"

    job = long_async.enqueue()
    worker = app.worker(concurrency=1, burst=True)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: events == ["start"], 30, 0.02, "the async job running")
        later = after.enqueue()
        app.store.cancel(job.id, "stopped by the operator")
        thread.join(30)
        assert not thread.is_alive(), "the burst worker ended once the fenced job was gone"
    finally:
        if thread.is_alive():
            worker.stop(force=True)
            thread.join(20)
    assert events == ["start", "cancelled"]
    cancelled = app.get_job(job.id)
    assert cancelled.state == JobState.CANCELLED
    (row,) = app.store.executions(job.id)
    assert (row["status"], row["error_type"], row["error_message"]) == (
        "failed",
        "cancelled",
        "stopped by the operator",
    )
    assert app.get_job(later.id).result == "ran"
