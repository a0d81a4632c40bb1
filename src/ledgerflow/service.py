"""`ledgerflow serve`: the HTTP API, a worker and a scheduler in one process.

On SIGTERM/SIGINT the worker stops claiming and drains within its grace period, the HTTP
server and the scheduler stop, and the process exits 0.
"""

from __future__ import annotations

import ipaddress
import os
import signal
import sys
import threading
from typing import TYPE_CHECKING

from ledgerflow.errors import ConfigError
from ledgerflow.logs import get_logger

if TYPE_CHECKING:
    from ledgerflow.api.token import ApiToken
    from ledgerflow.app import App

log = get_logger("service")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_ready(app: App) -> None:
    """Refuse to start on a database that cannot work (one clear line)."""
    from ledgerflow.db.migrate import current_revision, head_revision

    if current_revision(app.db) != head_revision():
        raise ConfigError(
            "the database schema is not up to date: run `ledgerflow migrate` (or `ledgerflow init`)"
        )


def sign_in_message(app: App, host: str, port: int, token: ApiToken) -> str:
    """What `serve` prints at start: where to sign in, and with which token."""
    shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    shown = f"[{shown}]" if ":" in shown else shown
    lines = [f"ledgerflow is serving the dashboard and API on http://{shown}:{port}/"]
    if token.file is None:
        lines.append("sign in with LEDGERFLOW_API_TOKEN (API clients send it as a bearer token)")
    else:
        made = "made now" if token.created else "kept"
        lines.append(
            f"sign in at http://{shown}:{port}/login with the API token in {token.file.resolve()} ({made})"
        )
    if not is_loopback(host) and app.settings.metrics_token is None:
        lines.append(
            f"/api/health and /metrics are public on {host}: set LEDGERFLOW_METRICS_TOKEN to require a token"
        )
    return "\n".join(lines)


def serve(
    app: App,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    worker: bool = True,
    scheduler: bool = True,
    queues: str | None = None,
    concurrency: int = 8,
) -> None:
    """Run until SIGTERM/SIGINT; restarts the whole process if the worker asks to (abandoned threads).

    uvicorn runs in a thread (where it installs no signal handlers: in the main thread it would
    re-raise the signal after its own shutdown and kill the process before the worker drained);
    the main thread owns the signals and shuts everything down in order.
    """
    import uvicorn

    from ledgerflow.api.app import create_api
    from ledgerflow.api.token import api_token
    from ledgerflow.engine.worker import WorkerExit
    from ledgerflow.scheduler.loop import Scheduler

    check_ready(app)
    token = api_token(app.settings)
    assert token is not None
    app.sync_schedules()
    server = uvicorn.Server(
        uvicorn.Config(
            create_api(app, host=host, token=token.value),
            host=host,
            port=port,
            log_config=None,
            access_log=False,
            lifespan="off",
        )
    )
    stop = threading.Event()
    signals = {"count": 0}
    outcome: dict[str, WorkerExit] = {}
    the_worker = app.worker(queues, concurrency) if worker else None
    the_scheduler = Scheduler(app) if scheduler else None

    def run_worker() -> None:
        assert the_worker is not None
        outcome["worker"] = the_worker.run()
        stop.set()

    def run_server() -> None:
        server.run()
        stop.set()

    def run_alert_checks() -> None:
        """Without a worker here, nobody else checks this process (its database pool) for alerts."""
        from ledgerflow.alert_checks import AlertChecks

        checks = AlertChecks(app)
        while not stop.wait(min(1.0, app.settings.alert_check_seconds)):
            try:
                checks.maybe_check()
            except Exception as exc:  # the database may be what is failing: try again later
                log.warning("alert_checks_failed", error=str(exc).splitlines()[0])

    threads = [threading.Thread(target=run_server, name="ledgerflow-http")]
    if the_worker is not None:
        threads.append(threading.Thread(target=run_worker, name="ledgerflow-worker"))
    else:
        threads.append(threading.Thread(target=run_alert_checks, name="ledgerflow-alert-checks"))
    if the_scheduler is not None:
        threads.append(threading.Thread(target=the_scheduler.run, name="ledgerflow-scheduler"))

    def on_signal(signum: int, _frame: object) -> None:
        signals["count"] += 1
        log.info("service_signal", signal=signal.Signals(signum).name)
        if the_worker is not None:
            the_worker.stop(force=signals["count"] > 1)  # a second signal skips the grace period
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        for t in threads:
            t.start()
        log.info("service_started", host=host, port=port, worker=worker, scheduler=scheduler)
        print(sign_in_message(app, host, port, token), flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        server.should_exit = True
        if the_worker is not None:
            the_worker.stop()
        if the_scheduler is not None:
            the_scheduler.stop()
        for t in threads:
            t.join(app.settings.grace_seconds + 15)
        for s, handler in previous.items():
            signal.signal(s, handler)
        log.info("service_stopped", worker_exit=str(outcome.get("worker")))
    if outcome.get("worker") == WorkerExit.RESTART:
        os.execv(sys.executable, sys.orig_argv)
