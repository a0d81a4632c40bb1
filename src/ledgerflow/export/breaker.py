"""A circuit breaker per destination, shared by every process through `circuit_breakers`.

3 consecutive failures open it for 15 minutes; then one process gets a half-open trial
(claimed with a guarded UPDATE, so only one); success closes it, failure re-opens it.
A run refused by an open breaker is deferred and uses no attempt.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update

from ledgerflow.clock import Clock, system_clock
from ledgerflow.db.database import Database
from ledgerflow.db.tables import circuit_breakers
from ledgerflow.engine.store import dialect_insert

FAILURE_THRESHOLD = 3
OPEN_FOR = timedelta(minutes=15)


@dataclass(frozen=True)
class Permit:
    allowed: bool
    trial: bool = False
    retry_at: datetime | None = None  # when a refused caller may try again


class CircuitBreaker:
    def __init__(
        self,
        db: Database,
        destination: str,
        clock: Clock | None = None,
        threshold: int = FAILURE_THRESHOLD,
        open_for: timedelta = OPEN_FOR,
    ) -> None:
        self.db, self.destination, self.clock = db, destination, clock or system_clock
        self.threshold, self.open_for = threshold, open_for

    def _ensure(self) -> None:
        with self.db.begin() as conn:
            conn.execute(
                dialect_insert(self.db, circuit_breakers)
                .values(destination=self.destination, state="closed", failures=0, updated_at=self.clock())
                .on_conflict_do_nothing(index_elements=["destination"])
            )

    def state(self) -> dict[str, object]:
        self._ensure()
        with self.db.read() as conn:
            row = conn.execute(
                select(circuit_breakers).where(circuit_breakers.c.destination == self.destination)
            ).one()
        return dict(row._mapping)

    def permit(self) -> Permit:
        """May we call the destination now?"""
        row = self.state()
        now = self.clock()
        if row["state"] == "closed":
            return Permit(True)
        open_until = row["open_until"]
        if row["state"] == "open" and open_until is not None and now >= open_until:
            with self.db.begin() as conn:
                won = conn.execute(
                    update(circuit_breakers)
                    .where(
                        circuit_breakers.c.destination == self.destination, circuit_breakers.c.state == "open"
                    )
                    .values(state="half_open", trial_token=secrets.randbits(62), updated_at=now)
                ).rowcount
            if won:
                return Permit(True, trial=True)
        retry_at = open_until if row["state"] == "open" and open_until else now + timedelta(minutes=1)
        return Permit(False, retry_at=retry_at)

    def success(self) -> None:
        with self.db.begin() as conn:
            conn.execute(
                update(circuit_breakers)
                .where(circuit_breakers.c.destination == self.destination)
                .values(
                    state="closed",
                    failures=0,
                    opened_at=None,
                    open_until=None,
                    trial_token=None,
                    last_error=None,
                    updated_at=self.clock(),
                )
            )

    def failure(self, error: str) -> bool:
        """Record a failed call; returns True if the breaker is (now) open."""
        self._ensure()
        now = self.clock()
        with self.db.begin() as conn:
            row = conn.execute(
                select(circuit_breakers).where(circuit_breakers.c.destination == self.destination)
            ).one()
            failures = int(row.failures) + 1
            opens = row.state == "half_open" or failures >= self.threshold
            values = {
                "failures": failures,
                "last_error": error[:2000],
                "updated_at": now,
                "trial_token": None,
            }
            if opens:
                values.update(state="open", opened_at=now, open_until=now + self.open_for)
            conn.execute(
                update(circuit_breakers)
                .where(circuit_breakers.c.destination == self.destination)
                .values(values)
            )
        return opens
