"""Dashboard sign-in: sessions kept in the database, and a throttle on wrong passwords.

The cookie is `id.signature`: a random id, and an HMAC of it keyed by the API token (so a new
token signs everyone out without touching the table). The table keeps only the SHA-256 of the id
and its expiry; logging out deletes the row, so a copied cookie stops working on every instance.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, select

from ledgerflow.db.database import Database
from ledgerflow.db.tables import dashboard_sessions

SESSION_SECONDS = 12 * 3600


def _sign(secret: str, message: str) -> str:
    return hmac.new(secret.encode(), message.encode(), hashlib.sha256).hexdigest()


def _id_hash(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


class Sessions:
    """Create, check and revoke dashboard sessions for one API token."""

    def __init__(self, db: Database, secret: str, clock: Callable[[], datetime] | None = None) -> None:
        self.db, self.secret = db, secret
        self.clock = clock or (lambda: datetime.now(UTC))

    def create(self) -> str:
        """A new session cookie value (expired sessions are swept at the same time)."""
        session_id = secrets.token_urlsafe(32)
        now = self.clock()
        with self.db.begin() as conn:
            conn.execute(delete(dashboard_sessions).where(dashboard_sessions.c.expires_at < now))
            conn.execute(
                dashboard_sessions.insert().values(
                    id_hash=_id_hash(session_id),
                    created_at=now,
                    expires_at=now + timedelta(seconds=SESSION_SECONDS),
                )
            )
        return f"{session_id}.{_sign(self.secret, 'session:' + session_id)}"

    def _session_id(self, cookie: str | None) -> str | None:
        """The id of a cookie signed with the current token (no database access)."""
        if not cookie or cookie.count(".") != 1 or len(cookie) > 200:
            return None
        session_id, signature = cookie.split(".")
        if not hmac.compare_digest(signature, _sign(self.secret, "session:" + session_id)):
            return None
        return session_id

    def valid(self, cookie: str | None) -> bool:
        session_id = self._session_id(cookie)
        if session_id is None:
            return False
        with self.db.read() as conn:
            expires = conn.execute(
                select(dashboard_sessions.c.expires_at).where(
                    dashboard_sessions.c.id_hash == _id_hash(session_id)
                )
            ).scalar()
        return expires is not None and expires > self.clock()

    def revoke(self, cookie: str | None) -> None:
        session_id = self._session_id(cookie)
        if session_id is not None:
            with self.db.begin() as conn:
                conn.execute(
                    delete(dashboard_sessions).where(dashboard_sessions.c.id_hash == _id_hash(session_id))
                )

    def csrf_token(self, cookie: str) -> str:
        """The token every form of this session carries."""
        return _sign(self.secret, "csrf:" + cookie)


class LoginThrottle:
    """At most `attempts` wrong passwords per client, and ten times that from all clients
    together, in `window` seconds; after that every attempt waits.

    One instance counts both the sign-in form's wrong passwords and the API's wrong bearer
    tokens (the same secret). Kept in memory per process (a restart forgets it): it slows
    guessing down, while the token's length (at least 16 characters, 43 when generated) is
    what makes guessing hopeless.
    """

    EVERYONE = "*"
    MAX_CLIENTS = 10_000

    def __init__(
        self, attempts: int = 5, window: float = 60.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.attempts, self.window, self.clock = attempts, window, clock
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def retry_after(self, client: str, everyone: bool = True) -> int:
        """Seconds `client` must wait before trying again (0: it may try now); with `everyone`,
        also while all clients together are over their limit."""
        with self._lock:
            mine = self._wait(client, self.attempts)
            return max(mine, self._wait(self.EVERYONE, 10 * self.attempts)) if everyone else mine

    def failed(self, client: str) -> None:
        with self._lock:
            now = self.clock()
            for key in (client, self.EVERYONE):
                self._recent(key).append(now)
            if len(self._failures) > self.MAX_CLIENTS:  # bounded memory; the global limit still holds
                everyone = self._failures[self.EVERYONE]
                self._failures = {self.EVERYONE: everyone}

    def succeeded(self, client: str) -> None:
        with self._lock:
            self._failures.pop(client, None)

    def _wait(self, key: str, limit: int) -> int:
        if key not in self._failures:
            return 0
        failures = self._recent(key)
        if len(failures) < limit:
            return 0
        return max(1, math.ceil(failures[-limit] + self.window - self.clock()))

    def _recent(self, key: str) -> deque[float]:
        failures = self._failures.setdefault(key, deque())
        horizon = self.clock() - self.window
        while failures and failures[0] <= horizon:
            failures.popleft()
        return failures
