"""Hostile review of the async task's path (review7): what an async attempt raises, how its
timeout meets a task that will not stop, against a real worker and real SQLite files and
PostgreSQL."""

from __future__ import annotations

import asyncio
import time

from ledgerflow import JobState, current_job


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
