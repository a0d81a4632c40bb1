"""`ledgerflow serve`: the HTTP API, a worker and a scheduler in one process.

uvicorn owns the main thread and its signals; on SIGTERM/SIGINT it stops serving, then the
worker drains within its grace period and the scheduler stops.
"""

from __future__ import annotations

import ipaddress
import os
import sys
import threading
from typing import TYPE_CHECKING

from ledgerflow.errors import ConfigError
from ledgerflow.logs import get_logger

if TYPE_CHECKING:
    from ledgerflow.app import App

log = get_logger("service")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_ready(app: App, host: str, insecure: bool) -> None:
    """Refuse to start on a configuration that would be unsafe or cannot work (one clear line)."""
    if not is_loopback(host) and app.settings.api_token is None and not insecure:
        raise ConfigError(
            f"refusing to serve on {host} without LEDGERFLOW_API_TOKEN (set it, or pass --insecure)"
        )
    from ledgerflow.db.migrate import current_revision, head_revision

    if current_revision(app.db) != head_revision():
        raise ConfigError(
            "the database schema is not up to date: run `ledgerflow migrate` (or `ledgerflow init`)"
        )


def serve(
    app: App,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    worker: bool = True,
    scheduler: bool = True,
    insecure: bool = False,
    queues: str | None = None,
    concurrency: int = 8,
) -> None:
    """Run until SIGTERM/SIGINT; restarts the whole process if the worker asks to (abandoned threads)."""
    import uvicorn

    from ledgerflow.api.app import create_api
    from ledgerflow.engine.worker import WorkerExit
    from ledgerflow.scheduler.loop import Scheduler

    check_ready(app, host, insecure)
    app.sync_schedules()
    server = uvicorn.Server(
        uvicorn.Config(
            create_api(app), host=host, port=port, log_config=None, access_log=False, lifespan="off"
        )
    )
    threads: list[threading.Thread] = []
    outcome: dict[str, WorkerExit] = {}
    the_worker = app.worker(queues, concurrency) if worker else None
    the_scheduler = Scheduler(app) if scheduler else None
    if the_worker is not None:

        def run_worker() -> None:
            outcome["worker"] = the_worker.run()
            if outcome["worker"] == WorkerExit.RESTART:
                server.should_exit = True

        threads.append(threading.Thread(target=run_worker, name="ledgerflow-worker"))
    if the_scheduler is not None:
        threads.append(threading.Thread(target=the_scheduler.run, name="ledgerflow-scheduler"))
    for t in threads:
        t.start()
    log.info("service_started", host=host, port=port, worker=worker, scheduler=scheduler)
    try:
        server.run()
    finally:
        if the_worker is not None:
            the_worker.stop()
        if the_scheduler is not None:
            the_scheduler.stop()
        for t in threads:
            t.join(app.settings.grace_seconds + 15)
        log.info("service_stopped")
    if outcome.get("worker") == WorkerExit.RESTART:
        os.execv(sys.executable, sys.orig_argv)
