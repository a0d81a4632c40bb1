"""The one alert module every feature uses.

An alert is always a structured log event. When configured it is also POSTed as JSON
to a webhook (retried, with a timeout) and e-mailed over SMTP. Alerts are grouped into
incidents by key: one alert per incident until it is resolved (then one resolution
message), enforced by a unique index on open incidents in the `alerts` table.

An incident recorded but never delivered (the process died between the commit and the
delivery's record) is sent again by the periodic alert checks of any process that has a
channel configured (`Alerts.redeliver`): at least once, not exactly once.
"""

from __future__ import annotations

import json
import os
import queue
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import parse_qs, unquote, urlparse

from sqlalchemy import Text as SqlText
from sqlalchemy import case, cast, or_, select, update
from sqlalchemy.sql.elements import ColumnElement

from ledgerflow.db.tables import alerts as alerts_table
from ledgerflow.errors import BadInput, DatabaseUnavailable
from ledgerflow.logs import get_logger

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

    from ledgerflow.db.database import Database
    from ledgerflow.engine.jobs import Job

SEVERITIES = ("info", "warning", "error", "critical")
RECORD_ATTEMPTS = 8  # recording a delivery: 0.1 s doubling up to 3.2 s between tries, ~12 s in all
REDELIVER_BATCH = 20  # undelivered alerts taken per pass, at most
RETAKE_AFTER = 5  # a taken alert still unrecorded after this many margins is taken again
REDELIVER_WITHIN = timedelta(days=1)  # older undelivered alerts are left (no flood at upgrade)


@dataclass(frozen=True)
class Alert:
    id: int | None
    incident_key: str
    severity: str
    title: str
    message: str
    context: dict[str, Any]
    opened_at: datetime
    resolved_at: datetime | None
    delivery: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["opened_at"] = self.opened_at.isoformat()
        out["resolved_at"] = self.resolved_at.isoformat() if self.resolved_at else None
        return out


@dataclass(frozen=True)
class Opened:
    """An incident recorded in a caller's transaction (`Alerts.open_in`), not yet delivered."""

    alert_id: int
    payload: dict[str, Any]


class Notifier:
    """Delivers alert payloads to the webhook and by e-mail, on a background thread."""

    def __init__(
        self,
        webhook_url: str | None,
        email_to: str | None,
        smtp_url: str | None,
        *,
        timeout: float = 5.0,
        attempts: int = 3,
    ) -> None:
        self.webhook_url = webhook_url
        self.email_to = email_to
        self.smtp_url = smtp_url if email_to else None
        self.timeout = timeout
        self.attempts = attempts
        self.log = get_logger("alerts")
        self._queue: queue.Queue[tuple[dict[str, Any], Callable[[dict[str, Any]], None]] | None] = (
            queue.Queue()
        )
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return bool(self.webhook_url or self.smtp_url)

    def submit(self, payload: dict[str, Any], done: Callable[[dict[str, Any]], None]) -> None:
        if not self.enabled:
            return
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="ledgerflow-alerts", daemon=True)
                self._thread.start()
        self._queue.put((payload, done))

    def flush(self, timeout: float = 15.0) -> None:
        """Wait (bounded) until queued alerts are delivered; used at shutdown and in tests."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.02)

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                payload, done = item
                self._record(done, self.deliver(payload))
            finally:
                self._queue.task_done()

    def _record(self, done: Callable[[dict[str, Any]], None], result: dict[str, Any]) -> None:
        """Record a delivery; while the database is unavailable (an alert about the pool being
        exhausted is sent exactly then) retry with backoff for about 12 s before logging it lost."""
        for attempt in range(RECORD_ATTEMPTS):
            try:
                done(result)
                return
            except DatabaseUnavailable as exc:
                if attempt == RECORD_ATTEMPTS - 1:
                    self.log.warning("alert_delivery_not_recorded", error=str(exc), attempts=RECORD_ATTEMPTS)
                    return
                time.sleep(min(0.1 * 2**attempt, 3.2))
            except Exception as exc:  # recording the delivery must not kill the thread
                self.log.warning("alert_delivery_not_recorded", error=str(exc))
                return

    def deliver(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Send now; returns {'webhook': 'ok'|error, 'email': 'ok'|error}."""
        result: dict[str, Any] = {}
        if self.webhook_url:
            result["webhook"] = self._retry(lambda: self._post(payload))
        if self.smtp_url and self.email_to:
            result["email"] = self._retry(lambda: self._mail(payload))
        for channel, status in result.items():
            if status != "ok":
                self.log.error(
                    "alert_delivery_failed",
                    channel=channel,
                    error=status,
                    incident_key=payload.get("incident_key"),
                )
        return result

    def _retry(self, send: Callable[[], None]) -> str:
        error = "not sent"
        for attempt in range(self.attempts):
            try:
                send()
                return "ok"
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
                time.sleep(min(0.5 * 2**attempt, 4))
        return error

    def _post(self, payload: dict[str, Any]) -> None:
        import urllib.request  # here, not at module level: a worker without a webhook never loads it

        body = json.dumps(payload, ensure_ascii=False).encode()
        request = urllib.request.Request(
            str(self.webhook_url),
            data=body,
            method="POST",
            headers={"Content-Type": "application/json", "User-Agent": "ledgerflow-alerts"},
        )
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
            if response.status >= 300:
                raise OSError(f"webhook answered HTTP {response.status}")

    def _mail(self, payload: dict[str, Any]) -> None:
        import smtplib  # here, not at module level: a worker without SMTP never loads mail
        import ssl
        from email.message import EmailMessage

        url = urlparse(str(self.smtp_url))
        options = {k: v[-1] for k, v in parse_qs(url.query).items()}
        message = EmailMessage()
        state = "RESOLVED" if payload.get("resolved") else payload["severity"].upper()
        message["Subject"] = f"[ledgerflow {state}] {payload['title']}"
        message["From"] = options.get("from", f"ledgerflow@{socket.gethostname()}")
        message["To"] = str(self.email_to)
        message.set_content(
            f"{payload['message']}\n\nincident: {payload['incident_key']}\nat: {payload['at']}\n\n"
            + json.dumps(payload.get("context", {}), ensure_ascii=False, indent=2, default=str)
        )
        port = url.port or (465 if url.scheme == "smtps" else 25)
        smtp_class = smtplib.SMTP_SSL if url.scheme == "smtps" else smtplib.SMTP
        with smtp_class(url.hostname or "localhost", port, timeout=self.timeout) as smtp:
            if options.get("starttls", "").lower() in ("1", "true", "yes"):
                smtp.starttls(context=ssl.create_default_context())
            if url.username:
                smtp.login(unquote(url.username), unquote(url.password or ""))
            smtp.send_message(message)


class Alerts:
    """Raise and resolve incidents; history lives in the `alerts` table."""

    def __init__(self, db: Database, notifier: Notifier) -> None:
        self.db = db
        self.notifier = notifier
        self.log = get_logger("alerts")
        self._sending: set[int] = set()  # ids queued in this process's notifier, not yet recorded

    def raise_alert(self, key: str, severity: str, title: str, message: str, **context: Any) -> bool:
        """Open incident `key` (log + notify). Returns False if it was already open."""
        payload = _payload(key, severity, title, message, context)
        self._log(payload)
        alert_id = None
        try:
            with self.db.begin() as conn:
                alert_id = _insert(self.db, conn, payload)
            if alert_id is None:
                return False  # the incident is already open: one alert per incident
        except Exception as exc:  # the database may be what is failing: still notify
            self.log.warning("alert_not_recorded", error=str(exc).splitlines()[0])
        self._submit(alert_id, payload, lambda result: self._record_delivery(alert_id, result))
        return True

    def open_in(
        self, conn: Connection, key: str, severity: str, title: str, message: str, **context: Any
    ) -> Opened | None:
        """Record incident `key` in the caller's transaction, so that it commits (or rolls back)
        with the change it reports. None if it was already open; else `send` the result once
        the transaction has committed."""
        payload = _payload(key, severity, title, message, context)
        alert_id = _insert(self.db, conn, payload)
        return None if alert_id is None else Opened(alert_id, payload)

    def send(self, opened: Opened) -> None:
        """Log and deliver an incident recorded by `open_in`, after its transaction committed."""
        self._log(opened.payload)
        self._submit(
            opened.alert_id, opened.payload, lambda result: self._record_delivery(opened.alert_id, result)
        )

    def _submit(
        self, alert_id: int | None, payload: dict[str, Any], done: Callable[[dict[str, Any]], None]
    ) -> None:
        """Queue a delivery; until it is recorded, this process's `redeliver` does not take it."""
        if alert_id is not None and self.notifier.enabled:
            self._sending.add(alert_id)
        self.notifier.submit(payload, done)

    def _log(self, payload: dict[str, Any]) -> None:
        severity = payload["severity"]
        log = getattr(
            self.log, {"critical": "critical", "error": "error", "warning": "warning"}.get(severity, "info")
        )
        log(
            "alert",
            incident_key=payload["incident_key"],
            severity=severity,
            title=payload["title"],
            alert_message=payload["message"],
            **payload["context"],
        )

    def resolve(self, key: str, message: str = "resolved") -> bool:
        """Close incident `key` and send one resolution message. False if it was not open."""
        now = datetime.now(UTC)
        with self.db.begin() as conn:
            row = conn.execute(
                update(alerts_table)
                .where(alerts_table.c.incident_key == key, alerts_table.c.resolved_at.is_(None))
                .values(resolved_at=now)
                .returning(alerts_table.c.id, alerts_table.c.title, alerts_table.c.severity)
            ).first()
        if row is None:
            return False
        self.log.info("alert_resolved", incident_key=key, alert_message=message)
        payload = {
            "incident_key": key,
            "severity": row.severity,
            "title": row.title,
            "message": message,
            "context": {},
            "at": now.isoformat(),
            "resolved": True,
        }
        self.notifier.submit(payload, lambda _result: None)
        return True

    def redeliver(self, after: float, limit: int = REDELIVER_BATCH) -> int:
        """Send again the incidents recorded more than `after` seconds (and less than a day) ago
        whose delivery was never recorded (their sender died first); returns how many were
        taken. Each is taken by one guarded UPDATE (delivery `{}` -> `{"redelivery": ...}`), so
        one process sends it; a taken one still unrecorded `RETAKE_AFTER` × `after` later is
        taken again. Only a process with a channel configured takes any; not one resolved
        meanwhile (its opening would arrive after its resolution), nor one still queued here."""
        if not self.notifier.enabled:
            return 0
        now = datetime.now(UTC)
        raw = cast(alerts_table.c.delivery, SqlText)  # the stored document, compared as stored
        with self.db.read() as conn:
            rows = conn.execute(
                select(alerts_table, raw.label("raw"))
                .where(
                    alerts_table.c.opened_at < now - timedelta(seconds=after),
                    alerts_table.c.opened_at > now - REDELIVER_WITHIN,
                    alerts_table.c.resolved_at.is_(None),
                    or_(raw == "{}", raw.like('%"redelivery"%')),
                )
                .order_by(case((raw == "{}", 0), else_=1), alerts_table.c.id)  # taken ones last
                .limit(limit)
            ).all()
        taken = 0
        for row in rows:
            if row.id in self._sending or (
                row.delivery and not _abandoned(row.delivery, now, after * RETAKE_AFTER)
            ):
                continue
            mark = {"at": now.isoformat(), "by": f"{socket.gethostname()}:{os.getpid()}"}
            with self.db.begin() as conn:
                won = conn.execute(
                    update(alerts_table)
                    .where(alerts_table.c.id == row.id, raw == row.raw, alerts_table.c.resolved_at.is_(None))
                    .values(delivery={"redelivery": mark})
                ).rowcount
            if won != 1:
                continue  # another process took it
            taken += 1
            recorded = _payload(row.incident_key, row.severity, row.title, row.message, row.context)
            payload = recorded | {"at": row.opened_at.isoformat(), "redelivery": True}
            self.log.warning("alert_redelivered", incident_key=row.incident_key, alert_id=row.id)
            self._submit(row.id, payload, partial(self._record_redelivery, row.id, mark))
        return taken

    def is_open(self, key: str) -> bool:
        with self.db.read() as conn:
            return (
                conn.execute(
                    select(alerts_table.c.id).where(
                        alerts_table.c.incident_key == key, alerts_table.c.resolved_at.is_(None)
                    )
                ).first()
                is not None
            )

    def open_keys(self, *kinds: str) -> set[str]:
        """Keys of the open incidents of these kinds (a kind is a key, or its part before a `:`)."""
        with self.db.read() as conn:
            return set(
                conn.execute(
                    select(alerts_table.c.incident_key).where(
                        or_(*(_of_kind(k) for k in kinds)), alerts_table.c.resolved_at.is_(None)
                    )
                ).scalars()
            )

    def history(
        self,
        limit: int = 100,
        open_only: bool = False,
        *,
        state: Literal["open", "resolved"] | None = None,
        severity: str | None = None,
        kind: str | None = None,
        since: datetime | None = None,
        before_id: int | None = None,
    ) -> list[Alert]:
        """Alerts newest first; filtered by state (`open_only` is `state="open"`), severity,
        kind (the incident key up to its first `:`, or the whole key), opened since, page by id."""
        if severity is not None and severity not in SEVERITIES:
            raise BadInput(f"unknown severity {severity!r} (use {', '.join(SEVERITIES)})")
        query = select(alerts_table).order_by(alerts_table.c.id.desc()).limit(limit)
        if open_only or state == "open":
            query = query.where(alerts_table.c.resolved_at.is_(None))
        elif state == "resolved":
            query = query.where(alerts_table.c.resolved_at.is_not(None))
        if severity:
            query = query.where(alerts_table.c.severity == severity)
        if kind:
            query = query.where(_of_kind(kind))
        if since:
            query = query.where(alerts_table.c.opened_at >= since)
        if before_id:
            query = query.where(alerts_table.c.id < before_id)
        with self.db.read() as conn:
            return [Alert(**r._mapping) for r in conn.execute(query)]

    def job_dead(self, job: Job, error: dict[str, Any]) -> None:
        """A job reached the dead-letter queue: one incident per task until its DLQ is retried."""
        self.raise_alert(
            f"job_dead:{job.task}",
            "error",
            f"Job {job.task} is dead",
            f"job {job.id} ({job.task}) exhausted {job.attempt} attempt(s): "
            f"{error.get('type')}: {error.get('message')}",
            job_id=job.id,
            task=job.task,
            attempt=job.attempt,
        )

    def _record_redelivery(self, alert_id: int, mark: dict[str, str], result: dict[str, Any]) -> None:
        self._record_delivery(alert_id, {**result, "redelivered": mark})

    def _record_delivery(self, alert_id: int | None, result: dict[str, Any]) -> None:
        if alert_id is None:
            return
        with self.db.begin() as conn:
            conn.execute(update(alerts_table).where(alerts_table.c.id == alert_id).values(delivery=result))
        self._sending.discard(alert_id)


def _payload(key: str, severity: str, title: str, message: str, context: dict[str, Any]) -> dict[str, Any]:
    """What is delivered for a new incident (and what `_insert` records)."""
    if severity not in SEVERITIES:
        raise ValueError(f"unknown severity {severity!r}")
    return {
        "incident_key": key,
        "severity": severity,
        "title": title,
        "message": message,
        "context": _jsonable(context),
        "at": datetime.now(UTC).isoformat(),
        "resolved": False,
    }


def _insert(db: Database, conn: Connection, payload: dict[str, Any]) -> int | None:
    """Record a new incident; None (nothing written) if one with its key is already open."""
    from ledgerflow.engine.store import dialect_insert

    return conn.execute(
        dialect_insert(db, alerts_table)
        .values(
            incident_key=payload["incident_key"],
            severity=payload["severity"],
            title=payload["title"],
            message=payload["message"],
            context=payload["context"],
            opened_at=datetime.fromisoformat(payload["at"]),
            delivery={},
        )
        .on_conflict_do_nothing(
            index_elements=["incident_key"], index_where=alerts_table.c.resolved_at.is_(None)
        )
        .returning(alerts_table.c.id)
    ).scalar()


def _abandoned(delivery: dict[str, Any], now: datetime, after: float) -> bool:
    """Whether `delivery` is a redelivery taken more than `after` seconds ago, never recorded."""
    if set(delivery) != {"redelivery"}:
        return False
    at = datetime.fromisoformat(str(delivery["redelivery"].get("at")))
    return (now - at).total_seconds() > after


def _of_kind(kind: str) -> ColumnElement[bool]:
    """Incident keys equal to `kind` or starting with `kind:` (LIKE wildcards in `kind` are literal)."""
    pattern = kind.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + ":%"
    key = alerts_table.c.incident_key
    return (key == kind) | key.like(pattern, escape="\\")


def _jsonable(value: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(value, default=str, ensure_ascii=False))  # type: ignore[no-any-return]
