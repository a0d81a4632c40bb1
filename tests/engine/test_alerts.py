"""Alerts: always logged, POSTed to a webhook (retried) and e-mailed; one per incident until resolved."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from ledgerflow.alerts import Notifier


class Webhook:
    """A loopback HTTP receiver that can fail its first N requests."""

    def __init__(self, fail_first: int = 0) -> None:
        self.received: list[dict[str, Any]] = []
        self.fail_first = fail_first
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
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
