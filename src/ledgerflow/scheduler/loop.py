"""The scheduler loop: turns due fire times into jobs, exactly once per (schedule, fire time).

Any number of scheduler processes may run, on any number of hosts. Each computes the same
due fires; the `schedule_fires` row, unique on (schedule, fire time) and inserted in the
same transaction as the job, lets exactly one of them enqueue it. No leader is elected,
so none can split-brain. A scheduler fires a schedule under its row lock and skips a
schedule another one holds rather than wait: one cut off mid-transaction delays only the
schedule it held, until the server ends its idle transaction.
"""

from __future__ import annotations

import os
import secrets
import socket
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, or_, select, update

from ledgerflow.clock import Clock
from ledgerflow.db.database import is_transient
from ledgerflow.db.tables import job_schedules, workers
from ledgerflow.engine.store import dialect_insert
from ledgerflow.export.tasks import DAILY_TASK
from ledgerflow.logs import get_logger
from ledgerflow.scheduler.schedules import Fire, Schedule
from ledgerflow.scheduler.store import ScheduleStore

if TYPE_CHECKING:
    from ledgerflow.app import App


@dataclass(frozen=True)
class Decision:
    schedule: str
    fire_time: datetime
    status: str  # enqueued | skipped | missed
    reason: str | None = None
    job_id: int | None = None
    overlapped: int | None = None  # skipped because this job, its previous run, still ran


def decide(schedule: Schedule, fires: list[Fire]) -> list[tuple[Fire, str, str | None]]:
    """What to do with each due fire: the misfire policy and business-day merging, pure.

    Fires moved onto the same run (two non-business days moved to one business day) share
    the fate of the first of them: `skipped` ("runs with the fire of X") when X runs, and
    `missed`, like X, when the misfire policy does not run it.
    """
    runnable: list[Fire] = []
    merged: dict[int, Fire] = {}
    seen: dict[datetime, Fire] = {}  # keyed by UTC (see Schedule.next_times)
    for i, fire in enumerate(fires):
        if fire.adjusted is None:
            continue
        key = fire.adjusted.astimezone(UTC)
        if key in seen:
            merged[i] = seen[key]
            continue
        seen[key] = fire
        runnable.append(fire)
    keep = 1 if schedule.misfire_policy == "skip" else schedule.misfire_max
    chosen = {id(f) for f in runnable[-keep:]}
    if schedule.misfire_policy == "skip":
        missed = "not run in time; misfire policy 'skip' runs only the latest missed fire"
    else:
        missed = f"more than {keep} missed fires; catch-up is capped at {keep}"
    out: list[tuple[Fire, str, str | None]] = []
    for i, fire in enumerate(fires):
        runs_with = merged.get(i, fire)
        if fire.adjusted is None:
            out.append((fire, "skipped", "not a business day"))
        elif id(runs_with) not in chosen:
            out.append((fire, "missed", missed))
        elif runs_with is not fire:
            out.append((fire, "skipped", f"runs with the fire of {runs_with.nominal.isoformat()}"))
        else:
            out.append((fire, "enqueued", None))
    return out


class Scheduler:
    """Fires enabled schedules. `tick()` does one pass; `run()` loops until stopped."""

    def __init__(self, app: App, clock: Clock | None = None, tick_seconds: float = 1.0) -> None:
        self.app = app
        self.db = app.db
        self.store = ScheduleStore(app)
        self.clock = clock
        self.tick_seconds = tick_seconds
        self.id = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self.log = get_logger("scheduler").bind(scheduler_id=self.id)
        self._stop = threading.Event()
        self._registered = False

    def now(self) -> datetime:
        """The injected clock, else the database clock (one clock for every host)."""
        if self.clock is not None:
            return self.clock()
        with self.db.read() as conn:
            value = conn.execute(select(self.db.now())).scalar_one()
        return value if value.tzinfo else value.replace(tzinfo=UTC)  # type: ignore[no-any-return]

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        """Loop until `stop()`; database errors are logged and retried with backoff."""
        self.log.info("scheduler_started")
        backoff = 0.5
        while not self._stop.is_set():
            try:
                self.tick()
                backoff = 0.5
                wait = self.tick_seconds
            except Exception as exc:
                if not is_transient(exc):
                    self.log.exception("scheduler_tick_failed")
                else:
                    self.log.warning("database_unavailable", during="tick", error=str(exc).splitlines()[0])
                wait, backoff = backoff, min(backoff * 2, 10.0)
            self._stop.wait(wait)
        self._unregister()
        self.log.info("scheduler_stopped")

    def tick(self) -> list[Decision]:
        """Fire everything due now, once."""
        now = self.now()
        decisions: list[Decision] = []
        for schedule in self.store.list(enabled_only=True):
            try:
                decisions += self.fire_due(schedule, now)
            except Exception as exc:
                if is_transient(exc):
                    raise
                self.log.exception("schedule_fire_failed", schedule=schedule.name)
        self._heartbeat()
        return decisions

    def fire_due(self, schedule: Schedule, now: datetime) -> list[Decision]:
        """Record and enqueue the schedule's due fires, unless another scheduler holds it now."""
        if not _due(schedule, now) and not _stale(schedule, now):
            return []
        decisions: list[Decision] = []
        with self.db.begin() as conn:
            locked = self.store.lock(conn, schedule.id or 0)
            if locked is None:
                return []  # another scheduler is firing it (or was cut off doing so): never wait
            schedule = locked  # as committed by the last scheduler that fired it
            fires = _due(schedule, now)
            if not fires:
                if _stale(schedule, now):
                    self._advance(schedule, None, now, conn)
                return []
            plan = decide(schedule, fires)
            busy = None if schedule.allow_overlap else self.store.running_job(conn, schedule.id or 0)
            for fire, status, reason in plan:
                overlapped = None
                if status == "enqueued" and busy is not None:
                    status, reason = "skipped", f"previous run (job {busy}) is still running"
                    overlapped = busy
                fire_id = self.store.record_fire(
                    conn, schedule, fire.nominal, status=status, reason=reason, run_at=fire.adjusted
                )
                if fire_id is None:
                    continue  # another scheduler recorded this fire first
                job_id = None
                if status == "enqueued":
                    assert fire.adjusted is not None
                    job_id = self.store.enqueue_fire(conn, schedule, fire_id, fire.nominal, fire.adjusted)
                decisions.append(Decision(schedule.name, fire.nominal, status, reason, job_id, overlapped))
            self._advance(schedule, fires[-1].nominal, now, conn)
        for d in decisions:
            level = self.log.info if d.status == "enqueued" else self.log.warning
            level(
                "schedule_fire",
                schedule=d.schedule,
                fire_time=d.fire_time.isoformat(),
                status=d.status,
                reason=d.reason,
                job_id=d.job_id,
            )
        self._alert(schedule, decisions)
        if any(d.status == "enqueued" for d in decisions):
            self.app._wake_local()
        return decisions

    def _advance(self, schedule: Schedule, last: datetime | None, now: datetime, conn: Connection) -> None:
        """Move the schedule's cursor forward (never backward) and refresh its next fire time."""
        upcoming = schedule.next_times(now, 1)
        values: dict[str, Any] = {"next_fire_time": upcoming[0] if upcoming else None}
        stmt = update(job_schedules).where(job_schedules.c.id == schedule.id)
        if last is not None:
            values["last_fire_time"] = last
            stmt = stmt.where(
                or_(job_schedules.c.last_fire_time.is_(None), job_schedules.c.last_fire_time < last)
            )
        conn.execute(stmt.values(values))

    def _alert(self, schedule: Schedule, decisions: list[Decision]) -> None:
        missed = [d for d in decisions if d.status == "missed"]
        key = f"schedule_missed:{schedule.name}"
        if missed:
            self.app.alerts.raise_alert(
                key,
                "warning",
                f"Schedule {schedule.name} missed {len(missed)} fire(s)",
                f"{len(missed)} fire(s) of {schedule.name} were not run in time, e.g. "
                f"{missed[0].fire_time.isoformat()}: {missed[0].reason}",
                schedule=schedule.name,
                missed=[d.fire_time.isoformat() for d in missed[:20]],
            )
        elif any(d.status == "enqueued" for d in decisions):
            self.app.alerts.resolve(key, f"schedule {schedule.name} fired on time again")
        if schedule.job_type == DAILY_TASK:
            self._alert_export_overlap(schedule, decisions)

    def _alert_export_overlap(self, schedule: Schedule, decisions: list[Decision]) -> None:
        """A daily export fire skipped because the previous export still runs is an incident:
        that day's entries wait for a later export. Resolved when a later fire runs."""
        key = f"export_fire_skipped:{schedule.name}"
        skipped = [d for d in decisions if d.overlapped is not None]
        if skipped:
            first = skipped[0]
            self.app.alerts.raise_alert(
                key,
                "error",
                f"Daily export fire skipped ({schedule.name})",
                f"the fire of {first.fire_time.isoformat()} did not run: the previous export "
                f"(job {first.overlapped}) is still running; its entries wait for the next export",
                schedule=schedule.name,
                fire_time=first.fire_time.isoformat(),
                running_job=first.overlapped,
            )
        elif any(d.status == "enqueued" for d in decisions):
            self.app.alerts.resolve(key, f"schedule {schedule.name} fired and ran again")

    def _heartbeat(self) -> None:
        """Register this scheduler, then mark it alive: one statement, one round trip.

        Registering twice is harmless: a first INSERT whose commit went unanswered (a partition)
        may have happened."""
        now = datetime.now(UTC)
        if self._registered:
            stmt: Any = update(workers).where(workers.c.id == self.id).values(heartbeat_at=now)
        else:
            stmt = (
                dialect_insert(self.db, workers)
                .values(
                    id=self.id,
                    kind="scheduler",
                    hostname=socket.gethostname(),
                    pid=os.getpid(),
                    queues=[],
                    concurrency=0,
                    started_at=now,
                    heartbeat_at=now,
                )
                .on_conflict_do_nothing(index_elements=["id"])
            )
        self.db.run_single(lambda conn: conn.execute(stmt))
        self._registered = True

    def _unregister(self) -> None:
        if self._registered:
            try:
                with self.db.begin() as conn:
                    conn.execute(
                        update(workers).where(workers.c.id == self.id).values(stopped_at=datetime.now(UTC))
                    )
            except Exception as exc:
                self.log.warning("scheduler_unregister_failed", error=str(exc).splitlines()[0])


def _due(schedule: Schedule, now: datetime) -> list[Fire]:
    """Fire times of `schedule` due by `now` since its last recorded fire."""
    return schedule.due(schedule.last_fire_time or schedule.created_at or now, now)


def _stale(schedule: Schedule, now: datetime) -> bool:
    """True when the stored next fire time needs refreshing."""
    return schedule.next_fire_time is None or schedule.next_fire_time <= now


def run_scheduler(app: App, clock: Clock | None = None, tick_seconds: float = 1.0) -> Scheduler:
    """Run a scheduler in this thread until SIGTERM/SIGINT (when called from the main thread)."""
    import signal

    scheduler = Scheduler(app, clock, tick_seconds)
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: scheduler.stop())
    backoff = 0.5
    while not scheduler._stop.is_set():  # never exit on a database error, even at start-up
        try:
            app.sync_schedules()
            break
        except Exception as exc:
            if not is_transient(exc):
                raise
            scheduler.log.warning(
                "database_unavailable", during="sync_schedules", error=str(exc).splitlines()[0]
            )
            scheduler._stop.wait(backoff)
            backoff = min(backoff * 2, 10.0)
    started = time.monotonic()
    scheduler.run()
    scheduler.log.debug("scheduler_ran", seconds=round(time.monotonic() - started, 1))
    return scheduler
