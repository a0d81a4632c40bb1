"""Job behaviours on both backends, with an in-process worker (burst mode)."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import event, select, text

from ledgerflow import BadInput, Conflict, JobState, NotFound, current_job
from ledgerflow.cleanup import prune
from ledgerflow.db.tables import job_executions, jobs


def test_completed_job_keeps_result_and_one_execution_row(make_app):
    app = make_app()

    @app.task(name="double")
    def double(x: int) -> int:
        return x * 2

    job = double.enqueue(21)
    assert job.state == JobState.AVAILABLE
    app.run_worker(burst=True, concurrency=2)
    done = app.get_job(job.id)
    assert done.state == JobState.COMPLETED
    assert done.result == 42
    execs = app.store.executions(job.id)
    assert [(e["attempt"], e["status"]) for e in execs] == [(1, "completed")]
    assert execs[0]["duration_seconds"] is not None


def test_failing_task_retries_with_growing_delays_then_dead_and_dlq_retry_revives_it(make_app):
    app = make_app()
    calls: list[float] = []

    @app.task(name="flaky", max_attempts=3, retry_backoff=[0.3, 1.0])
    def flaky() -> None:
        calls.append(time.monotonic())
        raise ValueError(f"attempt {len(calls)} failed")

    job = flaky.enqueue()
    app.run_worker(burst=True)
    dead = app.get_job(job.id)
    assert dead.state == JobState.DEAD
    assert [e.attempt for e in dead.errors] == [1, 2, 3]
    assert dead.errors[0].type == "ValueError" and "attempt 1 failed" in dead.errors[0].message
    assert "Traceback" in (dead.errors[0].traceback or "")
    gaps = [b - a for a, b in itertools.pairwise(calls)]
    assert gaps[0] >= 0.25 and gaps[1] >= 0.9 and gaps[1] > gaps[0]
    assert [e["status"] for e in app.store.executions(job.id)] == ["failed"] * 3
    assert app.alerts.is_open("job_dead:flaky")

    assert app.store.retry_dead(ids=[job.id]).retried == [job.id]
    assert app.get_job(job.id).state == JobState.AVAILABLE
    app.run_worker(burst=True)
    again = app.get_job(job.id)
    assert again.state == JobState.DEAD and again.attempt == 4 and len(again.errors) == 4


def test_async_and_sync_timeouts_are_recorded_and_retried_while_other_jobs_run(make_app):
    app = make_app(max_abandoned_threads=10)

    @app.task(name="slow_async", timeout=0.5, max_attempts=2, retry_backoff=0.1)
    async def slow_async() -> None:
        await asyncio.sleep(30)

    @app.task(name="slow_sync", timeout=0.5, max_attempts=2, retry_backoff=0.1)
    def slow_sync() -> None:
        time.sleep(5)

    @app.task(name="quick")
    def quick() -> str:
        return "ok"

    a, s = slow_async.enqueue(), slow_sync.enqueue()
    q = [quick.enqueue() for _ in range(5)]
    started = time.monotonic()
    app.run_worker(burst=True, concurrency=4)
    assert time.monotonic() - started < 4.5  # did not wait for the sleeps
    for job_id in (a.id, s.id):
        job = app.get_job(job_id)
        assert job.state == JobState.DEAD
        assert [e.type for e in job.errors] == ["timeout", "timeout"]
        assert [e["error_type"] for e in app.store.executions(job_id)] == ["timeout", "timeout"]
    assert all(app.get_job(j.id).state == JobState.COMPLETED for j in q)


def test_process_isolated_task_spinning_in_python_is_killed_on_timeout(make_app):
    from tests.apps import basic

    app = make_app()
    spin = app.task(name="spin", isolation="process", timeout=1.5, max_attempts=1)(basic.spin.func)
    ok = app.task(name="isolated_ok", isolation="process", timeout=30)(basic.isolated_ok.func)
    job, good = spin.enqueue(), ok.enqueue(21)
    app.run_worker(burst=True, concurrency=2)  # returns only because the spinning child was killed
    killed = app.get_job(job.id)
    assert killed.state == JobState.DEAD and killed.errors[0].type == "timeout"
    assert app.get_job(good.id).result == 42


def test_process_isolated_task_error_keeps_child_type_and_traceback(make_app):
    app = make_app()
    from tests.apps import basic

    boom = app.task(name="fail_always", isolation="process", max_attempts=1)(basic.fail_always.func)
    job = boom.enqueue()
    app.run_worker(burst=True)
    error = app.get_job(job.id).errors[0]
    # the child fails inside the test app's _mark (no job context in a child process)
    assert error.type and error.traceback and "Traceback" in error.traceback


def test_rolled_back_transaction_leaves_no_job_and_committed_one_does(make_app):
    app = make_app()

    @app.task(name="noop")
    def noop() -> None: ...

    with pytest.raises(RuntimeError), app.transaction() as tx:
        tx.enqueue(noop.prepare())
        raise RuntimeError("caller's work failed")
    with app.db.engine.connect() as conn:
        with conn.begin() as outer:
            app.enqueue(noop.prepare(), connection=conn)
            outer.rollback()
        assert conn.execute(select(jobs.c.id)).first() is None
    with app.transaction() as tx:
        committed = tx.enqueue(noop.prepare())
    assert app.get_job(committed.id).state == JobState.AVAILABLE


def test_enqueue_joins_caller_connection_and_sees_its_uncommitted_rows(make_app):
    app = make_app()

    @app.task(name="noop2")
    def noop2() -> None: ...

    with app.db.engine.begin() as conn:
        conn.execute(text("CREATE TABLE IF NOT EXISTS orders (id INTEGER PRIMARY KEY)"))
    with app.db.engine.begin() as conn:
        conn.execute(text("INSERT INTO orders (id) VALUES (1)"))
        job = app.enqueue(noop2.prepare(), connection=conn)
    assert app.get_job(job.id).task == "noop2"


def test_second_enqueue_of_live_unique_job_returns_the_existing_one(make_app):
    app = make_app()

    @app.task(name="unique_task")
    def unique_task(n: int) -> None: ...

    first = unique_task.configure(unique_key="receipt-42").enqueue(1)
    second = unique_task.configure(unique_key="receipt-42").enqueue(2)
    assert second.id == first.id and second.args == [1]
    app.run_worker(burst=True)
    third = unique_task.configure(unique_key="receipt-42").enqueue(3)  # the key is free once done
    assert third.id != first.id


def test_lower_priority_number_runs_first(make_app):
    app = make_app()
    order: list[int] = []

    @app.task(name="prio")
    def prio(p: int) -> None:
        order.append(p)

    for p in (5, 9, 0, 3, 7, 1):
        prio.configure(priority=p).enqueue(p)
    app.run_worker(burst=True, concurrency=1)
    assert order == [0, 1, 3, 5, 7, 9]


def test_priority_out_of_range_and_bad_arguments_are_refused(make_app):
    app = make_app()

    @app.task(name="p")
    def p(x: object) -> None: ...

    with pytest.raises(BadInput, match=r"priority must be 0\.\.9"):
        p.configure(priority=10).enqueue(1)
    with pytest.raises(BadInput, match=r"args of task .p.: a object is not JSON"):
        p.enqueue(object())
    with pytest.raises(BadInput, match="unknown job option"):
        p.configure(colour="red")


def test_child_waits_for_parent_and_is_cancelled_when_parent_dies(make_app):
    app = make_app()
    order: list[str] = []

    @app.task(name="step")
    def step(name: str) -> None:
        order.append(name)

    @app.task(name="broken", max_attempts=1)
    def broken() -> None:
        raise RuntimeError("parent failed")

    parent = step.enqueue("parent")
    child = step.configure(depends_on=[parent]).enqueue("child")
    grandchild = step.configure(depends_on=[child.id]).enqueue("grandchild")
    assert child.state == JobState.SCHEDULED
    app.run_worker(burst=True, concurrency=4)
    assert order == ["parent", "child", "grandchild"]

    bad = broken.enqueue()
    orphan = step.configure(depends_on=[bad]).enqueue("orphan")
    orphan2 = step.configure(depends_on=[orphan]).enqueue("orphan2")
    app.run_worker(burst=True)
    for job_id in (orphan.id, orphan2.id):
        job = app.get_job(job_id)
        assert job.state == JobState.CANCELLED and "dependency" in (job.state_reason or "")
    late = step.configure(depends_on=[bad]).enqueue("late")
    assert late.state == JobState.CANCELLED and f"dependency {bad.id} is dead" in (late.state_reason or "")
    with pytest.raises(NotFound, match="unknown job id"):
        step.configure(depends_on=[999_999]).enqueue("x")
    assert app.get_job(grandchild.id).state == JobState.COMPLETED


def test_paused_queue_and_task_hold_their_jobs_until_resumed(make_app):
    app = make_app()
    ran: list[str] = []

    @app.task(name="in_reports", queue="reports")
    def in_reports() -> None:
        ran.append("reports")

    @app.task(name="mailer")
    def mailer() -> None:
        ran.append("mailer")

    in_reports.enqueue()
    mailer.enqueue()
    assert app.store.pause("queue", "reports") is True
    assert app.store.pause("queue", "reports") is False
    assert app.store.pause("task", "mailer") is True
    assert app.run_worker("default,reports", burst=True) is not None
    assert ran == []
    assert {p.name for p in app.store.pauses()} == {"reports", "mailer"}
    app.store.resume("queue", "reports")
    app.store.resume("task", "mailer")
    app.run_worker("default,reports", burst=True)
    assert sorted(ran) == ["mailer", "reports"]


def test_delayed_job_waits_for_its_time(make_app):
    app = make_app()
    seen: list[float] = []

    @app.task(name="later")
    def later() -> None:
        seen.append(time.monotonic())

    start = time.monotonic()
    job = later.configure(delay=1.0).enqueue()
    assert job.state == JobState.SCHEDULED
    at = later.configure(scheduled_at=datetime.now(UTC) + timedelta(seconds=0.5)).enqueue()
    app.run_worker(burst=True)  # burst ignores not-yet-due jobs
    app.run_worker(burst=True, poll_interval=0.1) if seen else None
    time.sleep(1.1)
    app.run_worker(burst=True)
    assert app.get_job(job.id).state == JobState.COMPLETED
    assert app.get_job(at.id).state == JobState.COMPLETED
    assert min(seen) - start >= 0.5


def test_cancel_and_retry_follow_the_state_machine(make_app):
    app = make_app()

    @app.task(name="c")
    def c() -> None: ...

    job = c.configure(delay=3600).enqueue()
    assert app.store.cancel(job.id).state == JobState.CANCELLED
    with pytest.raises(Conflict):
        app.store.cancel(job.id)
    assert app.store.retry(job.id).state == JobState.AVAILABLE
    app.run_worker(burst=True)
    with pytest.raises(Conflict, match="completed"):
        app.store.retry(job.id)
    with pytest.raises(NotFound):
        app.store.retry(424242)


def test_current_job_exposes_attempt_to_sync_and_async_tasks(make_app):
    app = make_app()
    seen: dict[str, tuple[int, int]] = {}

    @app.task(name="ctx_sync", max_attempts=2, retry_backoff=0.05)
    def ctx_sync() -> None:
        job = current_job()
        assert job is not None
        seen["sync"] = (job.attempt, job.job_id)
        if job.attempt == 1:
            raise RuntimeError("first attempt fails")

    @app.task(name="ctx_async")
    async def ctx_async() -> None:
        job = current_job()
        assert job is not None
        seen["async"] = (job.attempt, job.job_id)

    s, a = ctx_sync.enqueue(), ctx_async.enqueue()
    app.run_worker(burst=True)
    assert seen == {"sync": (2, s.id), "async": (1, a.id)}
    assert current_job() is None


def test_prune_deletes_old_completed_jobs_and_executions_only(make_app):
    app = make_app()

    @app.task(name="old")
    def old() -> None: ...

    done, waiting = old.enqueue(), old.configure(delay=3600).enqueue()
    app.run_worker(burst=True)
    with app.db.begin() as conn:
        past = datetime.now(UTC) - timedelta(days=40)
        conn.execute(jobs.update().where(jobs.c.id == done.id).values(finished_at=past))
        conn.execute(job_executions.update().values(completed_at=past))
    pruned = prune(app)
    assert (pruned["jobs"], pruned["executions"]) == (1, 1)
    with pytest.raises(NotFound):
        app.get_job(done.id)
    assert app.get_job(waiting.id).state == JobState.SCHEDULED


def test_enqueue_many_inserts_in_order_and_list_pages_by_id(make_app):
    app = make_app()

    @app.task(name="bulk")
    def bulk(i: int) -> None: ...

    ids = app.enqueue_many([bulk.prepare(i) for i in range(1200)])
    assert len(ids) == 1200 and ids == sorted(ids)
    assert [app.get_job(i).args for i in ids[:3]] == [[0], [1], [2]]
    page1 = app.store.list(limit=500)
    page2 = app.store.list(limit=500, before_id=page1[-1].id)
    assert len(page1) == len(page2) == 500 and page2[0].id < page1[-1].id
    assert app.store.counts()[("default", "bulk", "available")] == 1200


def test_snoozed_job_runs_again_later_without_using_an_attempt(make_app):
    from ledgerflow import Snooze

    app = make_app()
    calls: list[int] = []

    @app.task(name="snoozy", max_attempts=1)
    def snoozy() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise Snooze(0.2, "destination breaker is open")
        return "done"

    job = snoozy.enqueue()
    for _ in range(3):
        app.run_worker(burst=True)
        time.sleep(0.25)
    done = app.get_job(job.id)
    assert done.state == JobState.COMPLETED and done.result == "done" and len(calls) == 3
    assert done.errors == [] and (done.max_attempts, done.snoozes, done.attempt) == (1, 2, 3)
    assert [e["error_type"] for e in app.store.executions(job.id)] == ["snoozed", "snoozed", None]


def test_snoozes_are_counted_apart_and_capped(make_app):
    from ledgerflow import Snooze

    app = make_app(max_snoozes=3)

    @app.task(name="always_snoozes", max_attempts=2)
    def always_snoozes() -> None:
        raise Snooze(0, "not yet")

    job = always_snoozes.enqueue()
    app.run_worker(burst=True)
    dead = app.get_job(job.id)
    assert dead.state == JobState.DEAD and (dead.snoozes, dead.attempt, dead.max_attempts) == (3, 4, 2)
    assert [e.type for e in dead.errors] == ["snooze_limit"]
    assert dead.errors[0].message == "snoozed 3 times, the limit (LEDGERFLOW_MAX_SNOOZES=3)"
    statuses = [(e["status"], e["error_type"]) for e in app.store.executions(job.id)]
    assert statuses == [("failed", "snoozed")] * 3 + [("failed", "snooze_limit")]
    assert app.store.retry(job.id).max_attempts == 2, "a retried job still has an attempt to spend"


def test_sync_timeouts_are_each_kept_whatever_the_order_and_number_of_attempts(make_app):
    """Sync timeouts share one loop timer (the earliest deadline): an attempt started after one
    with a longer timeout still ends at its own, among 300 quick attempts (the heap of
    deadlines compacted on the way), and one that ends in time is not failed by its deadline."""
    app = make_app(max_abandoned_threads=10)
    started: dict[str, float] = {}

    @app.task(name="long_first", timeout=30, priority=0)
    def long_first() -> None:
        started["long_first"] = time.monotonic()
        time.sleep(1.5)

    @app.task(name="short_later", timeout=0.4, max_attempts=1, priority=1)
    def short_later() -> None:
        started["short_later"] = time.monotonic()
        time.sleep(5)

    @app.task(name="quick", timeout=0.3, priority=2)
    def quick(i: int) -> int:
        return i

    first, later = long_first.enqueue(), short_later.enqueue()
    quick_ids = app.enqueue_many([quick.prepare(i) for i in range(300)])
    app.run_worker(burst=True, concurrency=3)
    assert started["short_later"] >= started["long_first"]
    assert app.get_job(first.id).state == JobState.COMPLETED  # ran 1.5 s of its 30
    dead = app.get_job(later.id)
    assert dead.state == JobState.DEAD and [e.type for e in dead.errors] == ["timeout"]
    (execution,) = app.store.executions(later.id)
    assert execution["error_type"] == "timeout"
    assert 0.35 <= execution["duration_seconds"] < 4  # its own 0.4 s, not the 30 s armed first
    states = {app.get_job(i).state for i in quick_ids}
    assert states == {JobState.COMPLETED}  # their 0.3 s deadlines passed after they ended


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_prefetched_jobs_start_while_the_database_thread_writes_a_cycle(make_app, kind):
    """Slots freed by ended sync or async tasks take the next prefetched jobs at once, not only
    when the cycle on the database thread answers (each of its statements is slowed here by
    0.1 s, the jobs take 0.02 s, 8 are prefetched)."""
    app = make_app()
    windows: list[tuple[float, float]] = []
    starts: list[float] = []

    def before(*_: object) -> None:
        if threading.current_thread().name.startswith("ledgerflow-db"):
            began = time.monotonic()
            time.sleep(0.1)
            windows.append((began, time.monotonic()))

    event.listen(app.db.engine, "before_cursor_execute", before)

    def sync_stamp(i: int) -> int:
        starts.append(time.monotonic())
        time.sleep(0.02)
        return i

    async def async_stamp(i: int) -> int:
        starts.append(time.monotonic())
        await asyncio.sleep(0.02)
        return i

    stamp = app.task(name="stamp")(sync_stamp if kind == "sync" else async_stamp)
    app.enqueue_many([stamp.prepare(i) for i in range(30)])
    app.run_worker(burst=True, concurrency=2, prefetch=8)
    event.remove(app.db.engine, "before_cursor_execute", before)
    assert len(starts) == 30
    # started 30 ms or more into a statement: after a job that was running when it began had
    # ended (a start just after the statement began may be one handed over just before it)
    during = [t for t in starts if any(a + 0.03 < t < b for a, b in windows)]
    assert len(during) >= 2, (len(during), len(windows))  # before: none (each waited for the answer)
    assert app.store.counts()[("default", "stamp", "completed")] == 30
