"""Alerts: always logged, POSTed to a webhook (retried) and e-mailed; one per incident until resolved."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from sqlalchemy import update

from ledgerflow import App
from ledgerflow.alert_checks import AlertChecks
from ledgerflow.alerts import Notifier
from ledgerflow.clock import FixedClock
from ledgerflow.db.tables import alerts as alerts_table
from ledgerflow.db.tables import job_schedules
from ledgerflow.engine.autostop import HostGate
from ledgerflow.errors import DatabaseUnavailable
from ledgerflow.scheduler.loop import Scheduler
from ledgerflow.scheduler.schedules import Schedule
from tests.conftest import FAST, ROOT


class Webhook:
    """A loopback HTTP receiver that can fail its first N requests."""

    def __init__(self, fail_first: int = 0, on_post: Callable[[], None] | None = None) -> None:
        self.received: list[dict[str, Any]] = []
        self.fail_first = fail_first
        self.on_post = on_post  # runs before each answer
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if hook.on_post:
                    hook.on_post()
                if hook.fail_first > 0:
                    hook.fail_first -= 1
                    self.send_response(500)
                else:
                    hook.received.append(json.loads(body))
                    self.send_response(204)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/alerts"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Mailbox:
    def __init__(self) -> None:
        self.messages: list[Any] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(envelope)
        return "250 OK"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def webhook():
    hook = Webhook(fail_first=1)
    yield hook
    hook.close()


@pytest.fixture
def smtp():
    box = Mailbox()
    port = free_port()
    controller = Controller(box, hostname="127.0.0.1", port=port)
    controller.start()
    yield box, f"smtp://127.0.0.1:{port}?from=ledgerflow@example.test"
    controller.stop()


def wait_for(predicate: Any, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_one_alert_per_incident_until_resolved_by_webhook_and_email(make_app, webhook, smtp):
    box, smtp_url = smtp
    app = make_app(alert_webhook_url=webhook.url, alert_email="books@example.test", smtp_url=smtp_url)
    assert (
        app.alerts.raise_alert(
            "export_abandoned:daily:2026-11-26",
            "critical",
            "Export abandoned",
            "manual intervention required",
            batch="daily:2026-11-26",
        )
        is True
    )
    assert (
        app.alerts.raise_alert(
            "export_abandoned:daily:2026-11-26", "critical", "Export abandoned", "still broken"
        )
        is False
    )  # same incident: no second alert
    wait_for(lambda: webhook.received and box.messages)
    assert webhook.received[0]["incident_key"] == "export_abandoned:daily:2026-11-26"
    assert webhook.received[0]["severity"] == "critical" and webhook.received[0]["resolved"] is False
    assert "manual intervention required" in box.messages[0].content.decode()
    assert box.messages[0].rcpt_tos == ["books@example.test"]
    wait_for(lambda: app.alerts.history()[0].delivery.get("webhook") == "ok")
    assert app.alerts.resolve("export_abandoned:daily:2026-11-26", "delivered on retry") is True
    assert app.alerts.resolve("export_abandoned:daily:2026-11-26") is False
    wait_for(lambda: len(webhook.received) == 2 and len(box.messages) == 2)
    assert webhook.received[1]["resolved"] is True and "RESOLVED" in box.messages[1].content.decode()
    assert app.alerts.raise_alert("export_abandoned:daily:2026-11-26", "critical", "Again", "new incident")
    history = app.alerts.history()
    assert [a.resolved_at is None for a in history] == [True, False]
    assert [a.incident_key for a in app.alerts.history(open_only=True)] == [
        "export_abandoned:daily:2026-11-26"
    ]
    assert history[1].to_dict()["severity"] == "critical"


def test_undeliverable_webhook_is_retried_then_logged_and_never_raises():
    notifier = Notifier("http://127.0.0.1:9/nowhere", None, None, timeout=0.5, attempts=2)
    result = notifier.deliver(
        {"incident_key": "k", "severity": "error", "title": "t", "message": "m", "at": "now", "context": {}}
    )
    assert result["webhook"].startswith("URLError")
    with pytest.raises(ValueError, match="unknown severity"):
        from ledgerflow.alerts import Alerts

        Alerts(None, notifier).raise_alert("k", "catastrophic", "t", "m")  # type: ignore[arg-type]


def test_a_delivery_is_recorded_even_when_the_pool_is_exhausted_at_that_moment(make_app):
    """The pool-exhausted alert is delivered exactly while no connection is free: recording its
    delivery waits for one (bounded) instead of losing it."""
    held: list[Any] = []
    release = threading.Timer(1.0, lambda: [conn.close() for conn in held])

    def exhaust_pool_for_a_second() -> None:
        held.extend(app.db.engine.connect() for _ in range(1 + 10))  # pool size + overflow
        release.start()

    hook = Webhook(on_post=exhaust_pool_for_a_second)
    try:
        app = make_app(alert_webhook_url=hook.url, db_pool_size=1, db_pool_timeout=0.2)
        assert app.alerts.raise_alert("k", "critical", "Pool", "no connection free")
        app.alerts.notifier.flush()
        release.join()
        (alert,) = app.alerts.history(kind="k")
        assert alert.delivery == {"webhook": "ok"}
    finally:
        hook.close()


# ------------------------------------------------------------------ every alert, end to end
class Probe:
    """Makes one alert's condition start and clear, and runs what detects it."""

    key: str

    def start(self) -> None: ...
    def clear(self) -> None: ...
    def check(self) -> None: ...


class QueueOverflow(Probe):
    key = "queue_overflow:bulk"
    settings = {"alert_queue_depths": {"bulk": 3}}

    def __init__(self, app: App) -> None:
        self.app, self.checks = app, AlertChecks(app)

        @app.task(name="bulk_item", queue="bulk")
        def bulk_item() -> None: ...

        self.task = bulk_item

    def start(self) -> None:
        self.app.enqueue_many([self.task.prepare() for _ in range(4)])

    def clear(self) -> None:
        self.app.run_worker("bulk", burst=True)

    def check(self) -> None:
        self.checks.check()


class DeadLetters(Probe):
    key = "dlq_size"
    settings = {"alert_dlq_size": 2}

    def __init__(self, app: App) -> None:
        self.app, self.checks = app, AlertChecks(app)

        @app.task(name="doomed", max_attempts=1)
        def doomed() -> None:
            raise RuntimeError("no")

        @app.task(name="doomed_too", max_attempts=1)
        def doomed_too() -> None:
            raise RuntimeError("no either")

        self.tasks = (doomed, doomed, doomed_too)

    def start(self) -> None:  # dead jobs of two tasks count together
        self.app.enqueue_many([task.prepare() for task in self.tasks])
        self.app.run_worker(burst=True)

    def clear(self) -> None:
        self.app.store.purge_dead()

    def check(self) -> None:
        self.checks.check()


class SchedulerDown(Probe):
    key = "scheduler_down"
    settings = {"alert_scheduler_silence_seconds": 120}

    def __init__(self, app: App) -> None:
        self.clock = FixedClock(datetime.now(UTC))
        self.app, self.checks = app, AlertChecks(app, self.clock)

        @app.task(name="yearly")
        def yearly() -> None: ...

        app.schedules.add(Schedule(name="yearly", cron_expression="0 0 1 1 *", job_type="yearly"))
        self.scheduler = Scheduler(app)

    def start(self) -> None:
        """No scheduler heartbeat for longer than the silence allowed."""
        self.clock.advance(seconds=121)

    def clear(self) -> None:
        self.scheduler.tick()  # a scheduler runs again: its heartbeat is now
        self.clock.set(datetime.now(UTC))

    def check(self) -> None:
        self.checks.check()


class PoolExhausted(Probe):
    settings = {"db_pool_size": 1, "db_pool_timeout": 0.2}

    def __init__(self, app: App) -> None:
        self.app, self.checks = app, AlertChecks(app)
        self.key = self.checks.pool_key

    def start(self) -> None:
        held = [self.app.db.engine.connect() for _ in range(1 + 10)]  # pool size + overflow
        try:
            with pytest.raises(DatabaseUnavailable), self.app.db.read():
                pass
        finally:
            for conn in held:
                conn.close()

    def check(self) -> None:
        self.checks.check()


class HostReading(Probe):
    """A host gate with its reading injected (the real-process tests use the real one)."""

    def __init__(self, app: App, resource: str, seconds: float) -> None:
        self.app, self.reading = app, 10.0
        self.gate = HostGate(app, resource, 90.0, seconds, lambda: self.reading, every=0)
        self.key = self.gate.key

    def start(self) -> None:
        self.reading = 97.0

    def clear(self) -> None:
        self.reading = 40.0

    def check(self) -> None:
        self.gate.sample()
        if self.app.alerts.is_open(self.key):
            assert not self.gate.is_open(), "an open incident means no claiming"


class MissedFires(Probe):
    key = "schedule_missed:hourly"

    def __init__(self, app: App) -> None:
        @app.task(name="tick")
        def tick() -> None: ...

        schedule = app.schedules.add(
            Schedule(name="hourly", cron_expression="0 * * * *", job_type="tick", allow_overlap=True)
        )
        self.at = datetime(2026, 11, 26, 0, 0, 30, tzinfo=UTC)
        with app.db.begin() as conn:
            conn.execute(
                update(job_schedules).where(job_schedules.c.id == schedule.id).values(created_at=self.at)
            )
        self.clock = FixedClock(self.at)
        self.scheduler = Scheduler(app, self.clock)

    def start(self) -> None:  # the scheduler was down for three hours
        self.at += timedelta(hours=3)
        self.clock.set(self.at)

    def clear(self) -> None:  # the next fire on time
        self.at += timedelta(hours=1)
        self.clock.set(self.at)

    def check(self) -> None:
        self.scheduler.tick()


PROBES: dict[str, Callable[[App], Probe]] = {
    "queue_overflow": QueueOverflow,
    "dlq_size": DeadLetters,
    "scheduler_down": SchedulerDown,
    "db_pool_exhausted": PoolExhausted,
    "memory": lambda app: HostReading(app, "memory", 0),
    "cpu": lambda app: HostReading(app, "cpu", 0.3),
    "schedule_missed": MissedFires,
}


@pytest.fixture
def quiet_webhook():
    hook = Webhook()
    yield hook
    hook.close()


@pytest.mark.parametrize("kind", PROBES)
def test_each_alert_is_raised_delivered_once_resolved_when_it_clears_and_listed(
    kind, make_app, quiet_webhook, smtp
):
    box, smtp_url = smtp
    probe_type = PROBES[kind]
    settings = getattr(probe_type, "settings", {})
    app = make_app(
        alert_webhook_url=quiet_webhook.url, alert_email="ops@example.test", smtp_url=smtp_url, **settings
    )
    probe = probe_type(app)
    key = probe.key

    def sent() -> list[bool]:
        """The `resolved` flag of each webhook message and e-mail of this incident, in order."""
        app.alerts.notifier.flush()
        hooks = [m["resolved"] for m in quiet_webhook.received if m["incident_key"] == key]
        mails = [
            "RESOLVED" in m.content.decode() for m in box.messages if f"incident: {key}" in m.content.decode()
        ]
        assert hooks == mails, "the webhook and the e-mail tell the same story"
        return hooks

    def detected(state: bool) -> bool:
        probe.check()
        return app.alerts.is_open(key) is state

    probe.check()
    assert not app.alerts.is_open(key) and sent() == []
    probe.start()
    wait_for(lambda: detected(True))
    probe.start()  # the condition goes on (or happens again): still one incident
    probe.check()
    assert app.alerts.is_open(key)
    wait_for(lambda: sent() == [False])
    probe.clear()
    wait_for(lambda: detected(False))
    probe.check()
    wait_for(lambda: sent() == [False, True])
    (resolved,) = app.alerts.history(kind=key)
    assert resolved.resolved_at is not None and resolved.delivery == {"webhook": "ok", "email": "ok"}
    probe.start()  # it comes back: a new incident
    wait_for(lambda: detected(True))
    assert [a.resolved_at is None for a in app.alerts.history(kind=key)] == [True, False]
    wait_for(lambda: sent() == [False, True, False])


def test_a_dead_job_alert_resolves_once_the_dlq_of_its_task_is_empty_so_the_next_death_alerts_again(
    make_app, quiet_webhook
):
    """`job_dead:TASK` is one incident per task: it must end when that task's dead jobs are retried
    or purged, or the task's next death is never told to anyone."""
    app = make_app(alert_webhook_url=quiet_webhook.url)
    broken = {"now": True}

    @app.task(name="flaky_export", max_attempts=1)
    def flaky_export() -> None:
        if broken["now"]:
            raise RuntimeError("destination down")

    checks = AlertChecks(app)
    app.enqueue(flaky_export.prepare())
    app.run_worker(concurrency=1, burst=True)
    checks.check()
    assert app.alerts.is_open("job_dead:flaky_export"), "dead jobs left: still open"

    broken["now"] = False
    assert len(app.store.retry_dead("flaky_export").retried) == 1
    app.run_worker(concurrency=1, burst=True)
    checks.check()
    assert not app.alerts.is_open("job_dead:flaky_export"), "the DLQ of the task is empty: resolved"

    broken["now"] = True
    app.enqueue(flaky_export.prepare())
    app.run_worker(concurrency=1, burst=True)
    app.alerts.notifier.flush()
    told = [(m["incident_key"], m["resolved"]) for m in quiet_webhook.received]
    assert told == [
        ("job_dead:flaky_export", False),
        ("job_dead:flaky_export", True),
        ("job_dead:flaky_export", False),
    ]


def test_a_dead_job_alert_resolves_when_the_dead_jobs_are_purged(make_app):
    app = make_app()

    @app.task(name="always_broken", max_attempts=1)
    def always_broken() -> None:
        raise RuntimeError("broken")

    app.enqueue(always_broken.prepare())
    app.run_worker(concurrency=1, burst=True)
    assert app.alerts.is_open("job_dead:always_broken")
    app.store.purge_dead(task="always_broken")
    AlertChecks(app).check()
    assert not app.alerts.is_open("job_dead:always_broken")


# ------------------------------------------------------------------ redelivery (the outbox)
SENDER = """
import time
from ledgerflow import App
app = App()
app.alerts.raise_alert(
    "export_abandoned:daily:2026-11-26", "critical", "Export abandoned", "manual intervention", batch=7
)
app.alerts.notifier.flush(60)
time.sleep(60)
"""


def test_an_alert_whose_sender_was_killed_before_delivering_it_is_delivered_once_by_another_process(
    db_url, make_app, tmp_path
):
    """The process that recorded the alert is SIGKILLed while its webhook request is answered
    (not delivered): the alert checks of two workers send it later, once, and record that."""
    sender: list[subprocess.Popen[bytes]] = []

    def kill_the_sender_once() -> None:
        if sender and sender[0].poll() is None:
            os.kill(sender[0].pid, signal.SIGKILL)
            sender[0].wait(30)

    hook = Webhook(fail_first=1, on_post=kill_the_sender_once)  # the killed one's request: not delivered
    env = {
        **os.environ,
        **FAST,
        "LEDGERFLOW_DATABASE_URL": db_url,
        "LEDGERFLOW_ALERT_WEBHOOK_URL": hook.url,
        "LEDGERFLOW_ALERT_CHECK_SECONDS": "0.5",
        "LEDGERFLOW_ALERT_REDELIVER_AFTER_SECONDS": "3",
        "PYTHONPATH": str(ROOT),
    }
    workers: list[subprocess.Popen[bytes]] = []
    try:
        sender.append(subprocess.Popen([sys.executable, "-c", SENDER], env=env, cwd=ROOT))
        assert sender[0].wait(120) == -signal.SIGKILL
        app = make_app()
        (alert,) = app.alerts.history()
        assert alert.delivery == {} and hook.received == []
        for n in range(2):  # two workers run the checks at once: one of them sends it
            with open(tmp_path / f"worker{n}.log", "wb") as out:
                workers.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "ledgerflow", "worker", "--app", "tests.apps.basic:app"],
                        env=env,
                        cwd=ROOT,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                    )
                )
        wait_for(lambda: app.alerts.history()[0].delivery.get("webhook") == "ok", timeout=60)
        (redelivered,) = app.alerts.history()
        assert set(redelivered.delivery) == {"webhook", "redelivered"}
        time.sleep(3 * 0.5 + 3)  # more passes, past the margin again: not sent twice
        assert len(hook.received) == 1
        (sent,) = hook.received
        assert sent["incident_key"] == "export_abandoned:daily:2026-11-26" and sent["context"] == {"batch": 7}
        assert sent["message"] == "manual intervention" and sent["resolved"] is False
        assert sent["redelivery"] is True
        assert datetime.fromisoformat(sent["at"]) == alert.opened_at
    finally:
        for worker in workers:
            worker.terminate()
        for worker in workers:
            worker.wait(60)
        hook.close()


def record_undelivered(app: App, key: str) -> int:
    """An incident recorded as by a process that died before delivering it."""
    with app.db.begin() as conn:
        opened = app.alerts.open_in(conn, key, "critical", f"Title {key}", f"message {key}", n=1)
    assert opened is not None
    return opened.alert_id


def test_two_processes_redelivering_at_once_send_each_alert_once(make_app, quiet_webhook, smtp):
    box, smtp_url = smtp
    channels = {
        "alert_webhook_url": quiet_webhook.url,
        "alert_email": "ops@test.example",
        "smtp_url": smtp_url,
    }
    first, second = make_app(**channels), make_app(**channels)
    keys = [f"autostop:task{i}" for i in range(6)]
    for key in keys:
        record_undelivered(first, key)
    time.sleep(0.1)
    barrier = threading.Barrier(2)
    taken: list[int] = []

    def run_pass(app: App) -> None:
        barrier.wait()
        taken.append(app.alerts.redeliver(0.05))

    threads = [threading.Thread(target=run_pass, args=(app,)) for app in (first, second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    first.alerts.notifier.flush()
    second.alerts.notifier.flush()
    assert sum(taken) == len(keys)
    assert sorted(m["incident_key"] for m in quiet_webhook.received) == keys
    assert len(box.messages) == len(keys)
    wait_for(lambda: all(a.delivery.get("email") == "ok" for a in first.alerts.history()))
    assert first.alerts.redeliver(0.05) == second.alerts.redeliver(0.05) == 0
    first.alerts.notifier.flush()
    assert len(quiet_webhook.received) == len(keys)


def test_only_undelivered_alerts_are_taken_by_a_process_with_a_channel_a_few_per_pass(
    make_app, quiet_webhook
):
    silent = make_app()  # no channel configured: takes nothing
    app = make_app(alert_webhook_url=quiet_webhook.url)
    assert app.alerts.raise_alert("dlq_size", "error", "DLQ", "delivered normally")
    app.alerts.notifier.flush()
    wait_for(lambda: app.alerts.history()[0].delivery == {"webhook": "ok"})
    undelivered = [record_undelivered(app, f"job_dead:t{i}") for i in range(3)]
    time.sleep(0.1)
    assert silent.alerts.redeliver(0.05) == 0
    assert all(a.delivery == {} for a in app.alerts.history() if a.id in undelivered)
    assert app.alerts.redeliver(0.05, limit=2) == 2  # bounded
    assert app.alerts.redeliver(0.05, limit=2) == 1
    app.alerts.notifier.flush()
    assert [m["incident_key"] for m in quiet_webhook.received] == [
        "dlq_size",
        "job_dead:t0",
        "job_dead:t1",
        "job_dead:t2",
    ]
    old = record_undelivered(app, "job_dead:old")  # before the upgrade, or from a day-long outage
    with app.db.begin() as conn:
        conn.execute(
            update(alerts_table)
            .where(alerts_table.c.id == old)
            .values(opened_at=datetime.now(UTC) - timedelta(days=1, minutes=1))
        )
    assert app.alerts.redeliver(0.05) == 0
    # taken by a process that died before recording: taken again only after 5 margins
    stuck = record_undelivered(app, "job_dead:stuck")
    taken_at = datetime.now(UTC) - timedelta(seconds=10)
    with app.db.begin() as conn:
        conn.execute(
            update(alerts_table)
            .where(alerts_table.c.id == stuck)
            .values(opened_at=taken_at, delivery={"redelivery": {"at": taken_at.isoformat(), "by": "gone:1"}})
        )
    assert app.alerts.redeliver(5) == 0
    assert app.alerts.redeliver(1) == 1
    app.alerts.notifier.flush()
    assert [m["incident_key"] for m in quiet_webhook.received][-1] == "job_dead:stuck"
    assert len(quiet_webhook.received) == 5
    wait_for(lambda: all(a.delivery.get("webhook") == "ok" for a in app.alerts.history() if a.id != old))


def test_an_alert_resolved_before_its_redelivery_is_not_sent_as_open_after_its_resolution(
    make_app, quiet_webhook
):
    """The sender died before delivering the opening; the condition cleared and the incident was
    resolved (its resolution message sent): the opening is not sent afterwards as still open."""
    app = make_app(alert_webhook_url=quiet_webhook.url)
    record_undelivered(app, "job_dead:gone")
    assert app.alerts.resolve("job_dead:gone")
    app.alerts.notifier.flush()
    time.sleep(0.1)
    assert app.alerts.redeliver(0.05) == 0
    app.alerts.notifier.flush()
    assert [(m["incident_key"], m["resolved"]) for m in quiet_webhook.received] == [("job_dead:gone", True)]


def test_an_alert_still_queued_in_its_live_sender_is_not_taken_again_by_that_process(make_app):
    """A slow webhook keeps this process's alerts queued past the margin: its own alert checks do
    not take them as abandoned (the sender is alive) and send them a second time."""
    release = threading.Event()
    hook = Webhook(on_post=lambda: release.wait(20))
    try:
        app = make_app(alert_webhook_url=hook.url)
        assert app.alerts.raise_alert("dlq_size", "error", "DLQ", "first")
        assert app.alerts.raise_alert("job_dead:t", "error", "Dead", "second, queued behind the first")
        time.sleep(0.2)
        assert app.alerts.redeliver(0.05) == 0
        release.set()
        app.alerts.notifier.flush()
        wait_for(lambda: all(a.delivery.get("webhook") == "ok" for a in app.alerts.history()))
        assert sorted(m["incident_key"] for m in hook.received) == ["dlq_size", "job_dead:t"]
    finally:
        release.set()
        hook.close()
