"""One lease primitive: a row held by one holder at a time, fenced by a token.

A lease is a random token plus an expiry judged by the database clock, kept in two columns
of the leased row. Taking it is one guarded UPDATE (the row is free, or its lease expired);
every later write by the holder is an UPDATE that names the token and extends the expiry, so
a holder that lost the lease (it stalled past the expiry and someone else took over) has its
writes refused: that is the fence. A `Renewer` thread keeps leases alive while work runs.
"""

from __future__ import annotations

import secrets
import threading
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Column, ColumnElement, Connection, Table, and_, or_, update

from ledgerflow.db.backends import StoppableThread
from ledgerflow.db.database import Database
from ledgerflow.logs import get_logger


def new_token() -> int:
    return secrets.randbits(62)


@dataclass(frozen=True)
class Lease:
    """Where a table keeps its leases: the row's key column, the token and the expiry columns."""

    key: Column[Any]
    token: Column[Any]
    expires: Column[Any]

    @property
    def table(self) -> Table:
        return self.key.table

    def acquire(
        self,
        conn: Connection,
        db: Database,
        key: Any,
        seconds: float,
        *where: ColumnElement[bool],
        **values: Any,
    ) -> Held | None:
        """Take the lease on row `key` if it is free or expired (and `where` holds); None if not.

        `values` are written by the same UPDATE (e.g. a state change that goes with the lease).
        """
        token = new_token()
        won = conn.execute(
            update(self.table)
            .where(self.key == key, or_(self.token.is_(None), self.expires < db.now()), *where)
            .values({self.token.name: token, self.expires.name: db.after(seconds), **values})
        ).rowcount
        return Held(self, db, key, token, seconds) if won else None


@dataclass(frozen=True)
class Held:
    """A lease this process holds; `move` is the only way it writes to the leased row."""

    lease: Lease
    db: Database
    key: Any
    token: int
    seconds: float

    def holds(self) -> ColumnElement[bool]:
        """The fence: this row, still under our token."""
        return and_(self.lease.key == self.key, self.lease.token == self.token)

    def move(self, conn: Connection, *where: ColumnElement[bool], **values: Any) -> bool:
        """Guarded UPDATE of the leased row (and `where`), extending the lease. False: fenced off."""
        lease = self.lease
        return bool(
            conn.execute(
                update(lease.table)
                .where(self.holds(), *where)
                .values({lease.expires.name: self.db.after(self.seconds), **values})
            ).rowcount
        )

    def renew(self) -> bool:
        """Extend the lease in a transaction of its own; False if it was lost."""
        with self.db.begin() as conn:
            return self.move(conn)

    def release(self, conn: Connection, *where: ColumnElement[bool], **values: Any) -> bool:
        """Give the lease up (guarded: only while we hold it), writing `values` in the same UPDATE."""
        lease = self.lease
        return bool(
            conn.execute(
                update(lease.table)
                .where(self.holds(), *where)
                .values({lease.token.name: None, lease.expires.name: None, **values})
            ).rowcount
        )


class Renewer:
    """Renews leases every third of their duration, on a daemon thread, until stopped.

    A lease found lost is dropped (the holder's next guarded write is refused); a failed
    renewal (database unreachable) is logged and tried again at the next interval.
    """

    def __init__(self, name: str = "ledgerflow-lease-renewer") -> None:
        self._held: list[Held] = []
        self._lock = threading.Lock()
        self._thread = StoppableThread(name, self._loop)
        self.log = get_logger("lease")

    def add(self, held: Held) -> Renewer:
        with self._lock:
            self._held.append(held)
        return self

    @property
    def holding(self) -> list[Held]:
        """The leases it still renews."""
        with self._lock:
            return list(self._held)

    def remove(self, held: Held) -> None:
        """Stop renewing `held` (it was released, or ended by a verdict)."""
        with self._lock:
            if held in self._held:
                self._held.remove(held)

    def start(self) -> Renewer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._thread.stop()

    def _loop(self, stop: threading.Event) -> None:
        while True:
            interval = min((h.seconds for h in self.holding), default=3.0) / 3
            if stop.wait(interval):
                return
            for h in self.holding:
                try:
                    if not h.renew():
                        self.log.warning("lease_lost", table=h.lease.table.name, key=str(h.key))
                        self.remove(h)
                except Exception as exc:
                    self.log.warning("lease_renew_failed", table=h.lease.table.name, error=_first_line(exc))


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
