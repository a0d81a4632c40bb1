"""A circuit breaker per destination, shared by every process through `circuit_breakers`.

    closed ──3 failures──▶ open ──15 min──▶ half_open (one trial) ──success──▶ closed
                            ▲                      │ destination error
                            └──────────────────────┘

* Opening raises a critical alert (one incident per destination); closing resolves it.
* The half-open trial is a lease (`db/lease.py`): one process holds it, renewed while its
  run lasts. Every outcome ends it: success closes the breaker, a destination error re-opens
  it, any other end (generation timeout, conflict, lost lock) gives the trial back at once,
  and a crashed holder's trial expires, so the next run gets a trial of its own.
* A run refused by an open breaker is deferred and uses no attempt.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, select, update

from ledgerflow.clock import Clock, system_clock
from ledgerflow.db.database import Database
from ledgerflow.db.lease import Held, Lease
from ledgerflow.db.tables import circuit_breakers
from ledgerflow.engine.store import dialect_insert
from ledgerflow.logs import best_effort, get_logger

if TYPE_CHECKING:
    from ledgerflow.alerts import Alerts

FAILURE_THRESHOLD = 3
OPEN_FOR = timedelta(minutes=15)
TRIAL_SECONDS = 60.0
cb = circuit_breakers
TRIAL = Lease(cb.c.destination, cb.c.trial_token, cb.c.trial_expires_at)


@dataclass(frozen=True)
class Permit:
    allowed: bool
    trial: Held | None = None  # the half-open trial this caller now holds
    retry_at: datetime | None = None  # when a refused caller may try again


class CircuitBreaker:
    def __init__(
        self,
        db: Database,
        destination: str,
        alerts: Alerts,
        clock: Clock | None = None,
        *,
        threshold: int = FAILURE_THRESHOLD,
        open_for: timedelta = OPEN_FOR,
        trial_seconds: float = TRIAL_SECONDS,
    ) -> None:
        self.db, self.destination, self.clock = db, destination, clock or system_clock
        self.threshold, self.open_for = threshold, open_for
        self.alerts, self.trial_seconds = alerts, trial_seconds
        self.log = get_logger("export")

    @property
    def incident(self) -> str:
        return f"export_breaker_open:{self.destination}"

    def state(self) -> dict[str, Any]:
        """The breaker's row (created closed on first use)."""
        query = select(cb).where(cb.c.destination == self.destination)
        with self.db.read() as conn:
            row = conn.execute(query).first()
        if row is None:
            with self.db.begin() as conn:
                self._ensure(conn)
                row = conn.execute(query).one()
        return dict(row._mapping)

    def permit(self) -> Permit:
        """May we call the destination now? A caller given a trial must end it (`success`,
        `failure` or `end_trial`); if it dies, the trial expires on its own."""
        row = self.state()
        now = self.clock()
        if row["state"] == "closed":
            return Permit(True)
        open_until = row["open_until"]
        if open_until is None or now >= open_until:
            with self.db.begin() as conn:
                trial = TRIAL.acquire(
                    conn,
                    self.db,
                    self.destination,
                    self.trial_seconds,
                    cb.c.state.in_(("open", "half_open")),
                    state="half_open",
                    updated_at=now,
                )
            if trial is not None:
                self.log.info("breaker_trial", destination=self.destination)
                return Permit(True, trial=trial)
            return Permit(False, retry_at=now + timedelta(minutes=1))  # another process's trial
        return Permit(False, retry_at=open_until)

    def success(self) -> None:
        """The destination answered: close the breaker (no write when it already is)."""
        with self.db.begin() as conn:
            row = conn.execute(
                select(cb.c.state, cb.c.failures).where(cb.c.destination == self.destination)
            ).first()
            if row is None or (row.state == "closed" and row.failures == 0):
                return
            conn.execute(
                update(cb)
                .where(cb.c.destination == self.destination)
                .values(
                    state="closed",
                    failures=0,
                    opened_at=None,
                    open_until=None,
                    trial_token=None,
                    trial_expires_at=None,
                    last_error=None,
                    updated_at=self.clock(),
                )
            )
        if row.state != "closed":
            best_effort(self.log, "breaker_alert_failed", self._resolve)

    def failure(self, error: str) -> bool:
        """Record a failed call; returns True if the breaker is (now) open."""
        now = self.clock()
        with self.db.begin() as conn:
            self._ensure(conn)
            counted = conn.execute(
                update(cb)
                .where(cb.c.destination == self.destination)
                .values(
                    failures=cb.c.failures + 1,
                    last_error=error[:2000],
                    updated_at=now,
                    trial_token=None,
                    trial_expires_at=None,
                )
                .returning(cb.c.failures, cb.c.state)  # the state is not changed by this UPDATE
            ).one()
            opens = bool(counted.state == "half_open" or counted.failures >= self.threshold)
            if opens:
                conn.execute(
                    update(cb)
                    .where(cb.c.destination == self.destination)
                    .values(state="open", opened_at=now, open_until=now + self.open_for)
                )
        if opens and counted.state != "open":
            until = now + self.open_for
            best_effort(self.log, "breaker_alert_failed", lambda: self._raise(counted.failures, error, until))
        return opens

    def end_trial(self, trial: Held) -> None:
        """Give back a trial that reached no verdict: the next caller may take a trial at once."""
        with self.db.begin() as conn:
            trial.release(conn, cb.c.state == "half_open", state="open", updated_at=self.clock())

    def _ensure(self, conn: Connection) -> None:
        conn.execute(
            dialect_insert(self.db, cb)
            .values(destination=self.destination, state="closed", failures=0, updated_at=self.clock())
            .on_conflict_do_nothing(index_elements=["destination"])
        )

    def _raise(self, failures: int, error: str, until: datetime) -> None:
        self.alerts.raise_alert(
            self.incident,
            "critical",
            f"Export destination {self.destination} is failing: circuit breaker open",
            f"{failures} consecutive failure(s), last: {error[:500]}; exports to {self.destination} "
            f"are deferred until {until.isoformat(timespec='seconds')}, then one trial run",
            destination=self.destination,
        )

    def _resolve(self) -> None:
        self.alerts.resolve(self.incident, f"{self.destination} answered again: circuit breaker closed")
