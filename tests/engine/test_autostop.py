"""Auto-stop, each rule alone, with a real worker process (`ledgerflow worker`).

The dead-job limit (100 by default) is never what fires here: each test stays far below it
and checks the reason recorded with the pause or the alert.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys

import pytest
from sqlalchemy import func, select

from ledgerflow import App
from ledgerflow.db.tables import workers as registered
from tests.conftest import wait_until

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
    # the alert is raised after the pause commits, in a transaction of its own (failed once at load 6)
    (alert,) = wait_until(
        lambda: app.alerts.history(kind="autostop:flaky_import"), 10, message="the auto-stop alert"
    )
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
