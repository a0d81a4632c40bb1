"""Auto-stop, each rule alone, with a real worker process (`ledgerflow worker`).

The dead-job limit (100 by default) is never what fires here: each test stays far below it
and checks the reason recorded with the pause or the alert.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
from datetime import UTC, datetime

import pytest
from sqlalchemy import func, insert, select

from ledgerflow import App
from ledgerflow.db.tables import job_executions, jobs
from ledgerflow.db.tables import workers as registered
from ledgerflow.engine.autostop import AutoStop
from ledgerflow.errors import DatabaseUnavailable
from tests import forkserver
from tests.conftest import FAST, ROOT, completed_job_row, wait_until
from tests.faults import StatementFaults

APP = "tests.apps.autostop:app"


@pytest.fixture
def app(make_app) -> App:
    app = make_app()

    @app.task(name="flaky_import", max_attempts=1)
    def flaky_import(fail: bool) -> None: ...

    @app.task(name="noop")
    def noop() -> None: ...

    return app


def heartbeats_of(app: App) -> list:
    with app.db.read() as conn:
        return list(
            conn.execute(select(registered.c.heartbeat_at).where(registered.c.kind == "worker")).scalars()
        )


def wait_for_worker_heartbeats(app: App, n: int) -> None:
    """Wait until the running worker has renewed its heartbeat `n` more times (it is alive and looping)."""
    seen: set = set()

    def renewed() -> bool:
        seen.update(heartbeats_of(app))
        return len(seen) > n

    wait_until(renewed, 60, 0.1, f"{n} worker heartbeats")


def test_the_failure_rate_rule_alone_pauses_a_task_with_a_critical_alert(app, workers):
    """70 % of 20 attempts fail, never more than 2 in a row, 14 dead jobs: only the rate rule trips."""
    pattern = [i % 3 != 2 for i in range(20)]
    app.enqueue_many([app.registry.get("flaky_import").prepare(fail) for fail in pattern])
    worker = workers(app=APP, concurrency=2)
    pause = wait_until(
        lambda: next((p for p in app.store.pauses() if p.name == "flaky_import"), None),
        90,
        message="the task to be auto-stopped",
    )
    assert pause.paused_by == "autostop"
    assert "14 of 20 attempts failed in the last hour (over 60%)" in pause.reason, pause.reason
    # the alert commits with the pause: it is there as soon as the pause is
    (alert,) = app.alerts.history(kind="autostop:flaky_import")
    assert alert.severity == "critical" and alert.resolved_at is None
    assert "failed in the last hour" in alert.message and "dead jobs" not in alert.message
    assert '"task_autostopped"' in worker.log()


def test_the_memory_rule_alone_stops_claiming_and_alerts(app, workers):
    """A limit below the host's memory use: the worker runs, claims nothing, and alerts."""
    job = app.registry.get("noop").enqueue()
    worker = workers(app=APP, env={"LEDGERFLOW_AUTOSTOP_MEMORY_PERCENT": "1"})
    key = f"autostop:memory:{socket.gethostname()}"
    wait_until(lambda: app.alerts.is_open(key), 60, message="the memory alert")
    wait_for_worker_heartbeats(app, 4)
    assert app.get_job(job.id).state == "available", "no job is claimed over the memory limit"
    (alert,) = app.alerts.history(kind=key)
    assert alert.severity == "critical" and "memory use on" in alert.message and "limit 1%" in alert.message
    assert '"claiming_paused_memory"' in worker.log()
    worker.signal(signal.SIGTERM)
    assert worker.wait(60) == 0
    assert not app.store.pauses(), "a host gate pauses no task"


def test_the_cpu_rule_alone_stops_claiming_after_the_load_lasts_and_alerts(app, workers):
    """CPU above the limit for the configured time (a busy loop keeps one core at 100 %)."""
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        worker = workers(
            app=APP,
            env={
                "LEDGERFLOW_AUTOSTOP_CPU_ENABLED": "true",
                "LEDGERFLOW_AUTOSTOP_CPU_PERCENT": "1",
                "LEDGERFLOW_AUTOSTOP_CPU_SECONDS": "1",
            },
        )
        key = f"autostop:cpu:{socket.gethostname()}"
        wait_until(lambda: app.alerts.is_open(key), 90, message="the CPU alert")
        job = app.registry.get("noop").enqueue()
        wait_for_worker_heartbeats(app, 4)
        assert app.get_job(job.id).state == "available", "no job is claimed while the CPU gate is closed"
        (alert,) = app.alerts.history(kind=key)
        assert alert.severity == "critical" and "cpu use on" in alert.message and "for 1s" in alert.message
        assert '"claiming_paused_cpu"' in worker.log()
        with app.db.read() as conn:
            assert conn.execute(select(func.count()).select_from(registered)).scalar_one() == 1
    finally:
        burner.kill()
        burner.wait(10)


def seed_three_failed_attempts(app: App) -> None:
    """Three failed attempts of `flaky_import` (of finished jobs: nothing for a worker to claim)."""
    now = datetime.now(UTC)
    with app.db.begin() as conn:
        job_ids = conn.execute(
            insert(jobs).returning(jobs.c.id), [completed_job_row(now) | {"task": "flaky_import"}] * 3
        ).scalars()
        conn.execute(
            insert(job_executions),
            [
                {"job_id": i, "attempt": 1, "task": "flaky_import", "queue": "default", "status": "failed"}
                | {"started_at": now, "completed_at": now, "error_type": "ValueError"}
                for i in job_ids.all()
            ],
        )


def assert_paused_with_one_open_alert(app: App) -> None:
    assert [(p.name, p.paused_by) for p in app.store.pauses()] == [("flaky_import", "autostop")]
    (alert,) = app.alerts.history(kind="autostop:flaky_import")
    assert alert.severity == "critical" and alert.resolved_at is None
    assert "3 consecutive failed attempts" in alert.message


@pytest.mark.parametrize("fault", ["error_before", "error_after"])
def test_a_task_paused_by_autostop_always_has_its_alert_exactly_once(app, fault):
    """The alert's statement fails right after the pause was written, or the pause's COMMIT
    commits but reports an error: a later check still leaves the task paused with one open
    alert. The pause and its alert used to commit apart, and paused tasks are not checked
    again: the alert was never raised."""
    app.settings.autostop_consecutive_failures = 3
    seed_three_failed_attempts(app)
    only = (
        StatementFaults.starting("INSERT INTO alerts")
        if fault == "error_before"
        else StatementFaults.commits_of("INSERT INTO pauses")
    )
    faults = StatementFaults(fault, 1, only=only).install(app.db.engine)
    try:
        with contextlib.suppress(DatabaseUnavailable):  # the worker's maintenance loop logs it and goes on
            AutoStop(app).check()
    finally:
        faults.uninstall()
    assert faults.fired is not None
    AutoStop(app).check()  # the next periodic check (or another worker's)
    AutoStop(app).check()
    assert_paused_with_one_open_alert(app)


def test_a_worker_killed_between_the_pause_and_its_alert_leaves_neither(app, db_url, tmp_path):
    """A real worker SIGKILLs itself just before its auto-stop check writes the alert: nothing
    is paused, and the next check pauses the task with its alert."""
    seed_three_failed_attempts(app)
    env = {
        **os.environ,
        **FAST,
        "LEDGERFLOW_DATABASE_URL": db_url,
        "LEDGERFLOW_LOG_JSON": "true",
        "PYTHONPATH": str(ROOT),
        "LEDGERFLOW_AUTOSTOP_CONSECUTIVE_FAILURES": "3",
        "LEDGERFLOW_TEST_FAULT": "kill:1:ledgerflow-maintenance:^INSERT INTO alerts",
    }
    worker = forkserver.shared().spawn(
        "tests.faultrun", ["worker", "--app", APP], env=env, stdout=tmp_path / "worker.log"
    )
    assert worker.wait(120) == -signal.SIGKILL
    assert app.store.pauses() == [], "the pause rolled back with the alert"
    app.settings.autostop_consecutive_failures = 3
    AutoStop(app).check()  # the next check, as a restarted worker's
    assert_paused_with_one_open_alert(app)


def test_a_task_resumed_after_an_autostop_is_not_stopped_again_before_it_fails_again(app):
    """`ledgerflow tasks resume` (resume, then resolve the alert) after fixing the cause: the
    next check must not pause the task again on the same attempts that stopped it (nothing has
    run since); new failures after the resume stop it again, with a new alert."""
    app.settings.autostop_consecutive_failures = 3
    seed_three_failed_attempts(app)
    assert AutoStop(app).check() == ["flaky_import"]
    assert app.store.resume("task", "flaky_import")
    assert app.alerts.resolve("autostop:flaky_import", "task flaky_import resumed by user")
    assert AutoStop(app).check() == []
    assert app.store.pauses() == []
    seed_three_failed_attempts(app)  # failing again after the resume
    assert AutoStop(app).check() == ["flaky_import"]
    assert [a.resolved_at is None for a in app.alerts.history(kind="autostop:flaky_import")] == [True, False]


def test_two_workers_deciding_at_once_write_one_pause_and_one_alert(app, make_app):
    """Two processes' checks (own pools) trip the same rule at the same instant: one pause and
    one alert (the second pause's ON CONFLICT DO NOTHING writes neither)."""
    app.settings.autostop_consecutive_failures = 3
    other = make_app()
    other.settings.autostop_consecutive_failures = 3
    seed_three_failed_attempts(app)
    barrier = threading.Barrier(2)

    def run(a: App) -> None:
        barrier.wait()
        AutoStop(a).check()

    threads = [threading.Thread(target=run, args=(a,)) for a in (app, other)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert_paused_with_one_open_alert(app)
