"""Auto-stop: protect the books from a task that keeps failing, and the host from overload.

A task type is paused (with a critical alert) after N consecutive failed attempts, when its
failure rate over the last hour exceeds a threshold (with a minimum number of attempts), or
when it has too many dead jobs. `ledgerflow tasks resume TASK` undoes it (resolving the
alert; from then on only attempts and deaths after that resolution count). A worker also stops
claiming while the host's memory use is over a threshold, and (when enabled) while its CPU
stays above a threshold for a while; each raises an alert, resolved when claiming resumes.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import case, func, select

from ledgerflow.db.tables import alerts, job_executions, jobs
from ledgerflow.engine.states import JobState
from ledgerflow.logs import get_logger

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

    from ledgerflow.app import App

#: Attempts that ended without it being the task's fault are not counted.
NOT_FAILURES = ("snoozed", "shutdown")


class AutoStop:
    """Checked from every worker's maintenance thread (every `interval` seconds)."""

    def __init__(self, app: App, interval: float = 10.0) -> None:
        s = app.settings
        self.app = app
        self.interval = interval
        self.consecutive = s.autostop_consecutive_failures
        self.rate = s.autostop_failure_rate
        self.min_attempts = s.autostop_min_attempts
        self.dead_limit = s.autostop_dead_jobs
        self.log = get_logger("autostop")
        self._last = 0.0

    def maybe_check(self) -> None:
        if time.monotonic() - self._last >= self.interval:
            self._last = time.monotonic()
            self.check()

    def check(self) -> list[str]:
        """Pause every task that trips a rule; returns the tasks paused now."""
        db = self.app.db
        hour_ago = datetime.now(UTC) - timedelta(hours=1)
        counted = [
            job_executions.c.status.in_(["completed", "failed"]),
            job_executions.c.error_type.is_(None) | job_executions.c.error_type.not_in(NOT_FAILURES),
        ]
        paused = {p.name for p in self.app.store.pauses() if p.kind == "task"}  # its own connection
        with db.read() as conn:
            suspects = set(
                conn.execute(
                    select(job_executions.c.task)
                    .where(job_executions.c.status == "failed", job_executions.c.completed_at > hour_ago)
                    .distinct()
                ).scalars()
            )
            dead = dict(
                conn.execute(
                    select(jobs.c.task, func.count())
                    .where(jobs.c.state == JobState.DEAD)
                    .group_by(jobs.c.task)
                ).all()
            )
            candidates = (suspects | set(dead)) - paused
            resumed = self._resumed(conn, candidates)
            reasons: dict[str, str] = {}
            for task in candidates:
                since = resumed.get(task)
                if since is not None:  # only what happened after the resume counts
                    dead[task] = conn.execute(
                        select(func.count()).where(
                            jobs.c.task == task, jobs.c.state == JobState.DEAD, jobs.c.finished_at > since
                        )
                    ).scalar_one()
                    since_resume = [*counted, job_executions.c.completed_at > since]
                else:
                    since_resume = counted
                if dead.get(task, 0) > self.dead_limit:
                    reasons[task] = f"{dead[task]} dead jobs (limit {self.dead_limit})"
                    continue
                recent = (
                    conn.execute(
                        select(job_executions.c.status)
                        .where(job_executions.c.task == task, *since_resume)
                        .order_by(job_executions.c.completed_at.desc())
                        .limit(self.consecutive)
                    )
                    .scalars()
                    .all()
                )
                if len(recent) >= self.consecutive and all(s == "failed" for s in recent):
                    reasons[task] = f"{self.consecutive} consecutive failed attempts"
                    continue
                total, failed = conn.execute(
                    select(
                        func.count(), func.sum(case((job_executions.c.status == "failed", 1), else_=0))
                    ).where(
                        job_executions.c.task == task, job_executions.c.completed_at > hour_ago, *since_resume
                    )
                ).one()
                if total >= self.min_attempts and (failed or 0) / total > self.rate:
                    reasons[task] = (
                        f"{failed} of {total} attempts failed in the last hour (over {self.rate:.0%})"
                    )
        for task, reason in reasons.items():
            with db.begin() as conn:  # the pause and its alert commit together, or neither does
                if not self.app.store.pause("task", task, f"auto-stop: {reason}", by="autostop", conn=conn):
                    continue
                opened = self.app.alerts.open_in(
                    conn,
                    f"autostop:{task}",
                    "critical",
                    f"Task {task} was stopped automatically",
                    f"{task} is paused: {reason}. Fix the cause, then run `ledgerflow tasks resume {task}`.",
                    task=task,
                    reason=reason,
                )
            self.log.error("task_autostopped", task=task, reason=reason)
            if opened is not None:  # None: the incident was still open (paused again before resolved)
                self.app.alerts.send(opened)
        return list(reasons)

    @staticmethod
    def _resumed(conn: Connection, tasks: set[str]) -> dict[str, datetime]:
        """When each task's last auto-stop was resolved (it was resumed: resume, then resolve)."""
        if not tasks:
            return {}
        rows = conn.execute(
            select(alerts.c.incident_key, func.max(alerts.c.resolved_at))
            .where(
                alerts.c.incident_key.in_([f"autostop:{t}" for t in tasks]),
                alerts.c.resolved_at.is_not(None),
            )
            .group_by(alerts.c.incident_key)
        )
        return {key.removeprefix("autostop:"): at for key, at in rows}


class HostGate:
    """Closed (this worker claims nothing) while a host reading stays above `percent` for
    `seconds`, with a critical alert per host (`autostop:RESOURCE:HOST`) resolved on reopening.

    Sampled from the maintenance thread every `every` seconds; `is_open` only reads a flag, so
    the claim loop never waits for a reading or for the database. A gate that needs no duration
    takes its first reading at once, so a worker started over the limit never claims.
    """

    def __init__(
        self,
        app: App,
        resource: str,
        percent: float,
        seconds: float,
        read: Callable[[], float],
        every: float,
    ) -> None:
        self.app, self.resource, self.percent, self.seconds = app, resource, percent, seconds
        self.read, self.every = read, every
        self.key = f"autostop:{resource}:{socket.gethostname()}"
        self.log = get_logger("autostop")
        self._over_since: float | None = None
        self._open = seconds > 0 or read() <= percent
        self._announced: bool | None = None  # the state last told the alerts (None: not yet)
        self._logged: bool | None = None  # ... and the log
        self._last = -float("inf")

    def sample(self) -> None:
        now = time.monotonic()
        if now - self._last < self.every:
            return
        self._last = now
        usage = self.read()
        if usage <= self.percent:
            self._over_since = None
            self._open = True
        else:
            self._over_since = self._over_since if self._over_since is not None else now
            self._open = self._open and now - self._over_since < self.seconds
        if self._open != self._logged:
            if not self._open:
                self.log.error(f"claiming_paused_{self.resource}", percent=usage, limit=self.percent)
            elif self._logged is False:
                self.log.info("claiming_resumed", resource=self.resource, percent=usage)
            self._logged = self._open
        if self._open != self._announced:  # also at the first reading: an earlier worker's incident
            self._announce(usage)
            self._announced = self._open

    def _announce(self, usage: float) -> None:
        host = socket.gethostname()
        if self._open:
            self.app.alerts.resolve(self.key, f"{self.resource} use on {host} back to {usage:.0f}%")
            return
        held = f" for {self.seconds:g}s" if self.seconds else ""
        self.app.alerts.raise_alert(
            self.key,
            "critical",
            f"Worker stopped claiming: {self.resource} over {self.percent:g}%",
            f"{self.resource} use on {host} is {usage:.0f}% (limit {self.percent:g}%{held}): "
            "its workers claim no new jobs until it falls back",
            host=host,
            percent=usage,
            limit=self.percent,
        )

    def is_open(self) -> bool:
        return self._open


def memory_gate(app: App, percent: float) -> HostGate:
    """No claiming while the host's memory use is over `percent` (checked every second)."""
    import psutil

    return HostGate(app, "memory", percent, 0.0, lambda: float(psutil.virtual_memory().percent), 1.0)


def cpu_gate(app: App, percent: float, seconds: float) -> HostGate:
    """No claiming while host CPU stays over `percent` for `seconds` (sampled every 5 s); off by default."""
    import psutil

    psutil.cpu_percent(None)  # prime: the first reading is meaningless
    return HostGate(app, "cpu", percent, seconds, lambda: float(psutil.cpu_percent(None)), 5.0)
