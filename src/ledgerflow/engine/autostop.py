"""Auto-stop: protect the books from a task that keeps failing, and the host from overload.

A task type is paused (with a critical alert) after N consecutive failed attempts, when its
failure rate over the last hour exceeds a threshold (with a minimum number of attempts), or
when it has too many dead jobs. `ledgerflow tasks resume TASK` undoes it. A worker also stops
claiming while the host's CPU stays above a threshold for a while (when enabled).
"""

from __future__ import annotations

import socket
import time
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import case, func, select

from ledgerflow.db.tables import job_executions, jobs
from ledgerflow.engine.states import JobState
from ledgerflow.logs import get_logger

if TYPE_CHECKING:
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
        with db.read() as conn:
            paused = {p.name for p in self.app.store.pauses() if p.kind == "task"}
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
            reasons: dict[str, str] = {}
            for task in (suspects | set(dead)) - paused:
                if dead.get(task, 0) > self.dead_limit:
                    reasons[task] = f"{dead[task]} dead jobs (limit {self.dead_limit})"
                    continue
                recent = (
                    conn.execute(
                        select(job_executions.c.status)
                        .where(job_executions.c.task == task, *counted)
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
                    ).where(job_executions.c.task == task, job_executions.c.completed_at > hour_ago, *counted)
                ).one()
                if total >= self.min_attempts and (failed or 0) / total > self.rate:
                    reasons[task] = (
                        f"{failed} of {total} attempts failed in the last hour (over {self.rate:.0%})"
                    )
        for task, reason in reasons.items():
            if self.app.store.pause("task", task, f"auto-stop: {reason}", by="autostop"):
                self.log.error("task_autostopped", task=task, reason=reason)
                self.app.alerts.raise_alert(
                    f"autostop:{task}",
                    "critical",
                    f"Task {task} was stopped automatically",
                    f"{task} is paused: {reason}. Fix the cause, then run `ledgerflow tasks resume {task}`.",
                    task=task,
                    reason=reason,
                )
        return list(reasons)


class CpuGate:
    """Closed (no claiming) while host CPU stays above `percent` for `seconds`; off by default."""

    def __init__(self, app: App, percent: float, seconds: float) -> None:
        import psutil

        self.app, self.percent, self.seconds = app, percent, seconds
        self._psutil = psutil
        psutil.cpu_percent(None)  # prime: the first reading is meaningless
        self._busy_since: float | None = None
        self._open = True
        self._last = 0.0

    def sample(self) -> None:
        if time.monotonic() - self._last < 5:
            return
        self._last = time.monotonic()
        usage = self._psutil.cpu_percent(None)
        now = time.monotonic()
        if usage <= self.percent:
            self._busy_since = None
            if not self._open:
                self._open = True
                self.app.alerts.resolve(f"autostop:cpu:{socket.gethostname()}", f"CPU back to {usage:.0f}%")
            return
        self._busy_since = self._busy_since or now
        if self._open and now - self._busy_since >= self.seconds:
            self._open = False
            self.app.alerts.raise_alert(
                f"autostop:cpu:{socket.gethostname()}",
                "critical",
                "Worker stopped claiming: CPU overloaded",
                f"host CPU above {self.percent:.0f}% for {self.seconds:.0f}s",
                cpu_percent=usage,
            )

    def is_open(self) -> bool:
        return self._open
