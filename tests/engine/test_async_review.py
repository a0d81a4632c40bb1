"""Hostile review of the async task's path (review7): what an async attempt raises, how its
timeout meets a task that will not stop, against a real worker and real SQLite files and
PostgreSQL."""

from __future__ import annotations

import asyncio

from ledgerflow import JobState


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
