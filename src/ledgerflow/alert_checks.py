"""The periodic alert checks: conditions no single job or fire reports by itself.

Every worker runs them from its maintenance thread (every `LEDGERFLOW_ALERT_CHECK_SECONDS`);
the alerts table's one-open-incident rule keeps several workers from alerting twice. Each
check raises its incident when the condition starts and resolves it when it clears:

* `queue_overflow:QUEUE` — more jobs waiting in a queue than its threshold;
* `dlq_size` — more dead jobs than `LEDGERFLOW_ALERT_DLQ_SIZE`, all tasks together;
* `scheduler_down` — enabled schedules, but no scheduler heartbeat for
  `LEDGERFLOW_ALERT_SCHEDULER_SILENCE_SECONDS`;
* `db_pool_exhausted:HOST:PID` — a checkout in this process gave up waiting for a pooled
  connection since the last check.

They also end `job_dead:TASK` (raised by the worker when a job dies) once that task has no
dead jobs left — retried or purged — so its next death is a new incident that reaches a person.

A count clears below 90 % of its threshold, so a value hovering at the limit does not flap.

Each pass also sends again the alerts recorded but never delivered (`Alerts.redeliver`).
"""

from __future__ import annotations

import os
import socket
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from sqlalchemy import func, select

from ledgerflow.clock import Clock, system_clock
from ledgerflow.db.tables import job_schedules, workers
from ledgerflow.engine.liveness import process_running
from ledgerflow.engine.states import CLAIMABLE, JobState
from ledgerflow.logs import get_logger

if TYPE_CHECKING:
    from ledgerflow.app import App

KINDS = ("queue_overflow", "dlq_size", "scheduler_down", "db_pool_exhausted", "job_dead")
#: A count alert clears once the count is at or below this share of its threshold.
CLEARS_AT = 0.9


class AlertChecks:
    """Raise and resolve the incidents above; `check()` does one pass."""

    def __init__(self, app: App, clock: Clock = system_clock) -> None:
        s = app.settings
        self.app, self.clock = app, clock
        self.interval = s.alert_check_seconds
        self.log = get_logger("alerts")
        self._watching_since = clock()  # a scheduler that never ran counts from here
        self._pool_timeouts = app.db.pool_timeouts
        self._last = -float("inf")
        self.pool_key = f"db_pool_exhausted:{socket.gethostname()}:{os.getpid()}"

    def maybe_check(self) -> None:
        if time.monotonic() - self._last >= self.interval:
            self._last = time.monotonic()
            self.check()

    def check(self) -> None:
        app, s = self.app, self.app.settings
        # first those whose sender died, so that an opening is not sent after its resolution
        app.alerts.redeliver(s.alert_redeliver_after_seconds)
        # read before the counts: an incident raised after them (a job that just died) is not
        # taken for one whose condition has cleared
        open_now = app.alerts.open_keys(*KINDS)
        with app.db.read() as conn:
            counts = app.store.counts([*CLAIMABLE, JobState.DEAD], conn)
            schedules = conn.execute(
                select(func.count()).where(job_schedules.c.enabled.is_(True))
            ).scalar_one()
            last_beat = conn.execute(
                select(func.max(workers.c.heartbeat_at)).where(workers.c.kind == "scheduler")
            ).scalar()
        depth: dict[str, int] = {}
        dead_by_task: dict[str, int] = {}
        for (queue, task, state), n in counts.items():
            if state == JobState.DEAD:
                dead_by_task[task] = dead_by_task.get(task, 0) + n
            else:
                depth[queue] = depth.get(queue, 0) + n
        dead = sum(dead_by_task.values())
        for key in sorted(k for k in open_now if k.startswith("job_dead:")):
            task = key.removeprefix("job_dead:")
            if not dead_by_task.get(task):
                self.app.alerts.resolve(key, f"no dead {task} jobs left (retried or purged)")
        self._queues(depth, open_now)
        self._count(
            "dlq_size",
            dead,
            s.alert_dlq_size,
            open_now,
            "Dead-letter queue over its limit",
            f"{dead} dead jobs across all tasks (limit {s.alert_dlq_size}): "
            "see `ledgerflow dlq list`, fix the cause, then retry or purge them",
        )
        self._scheduler(int(schedules), last_beat, open_now)
        self._pool(open_now)

    def _queues(self, depth: dict[str, int], open_now: set[str]) -> None:
        s = self.app.settings
        waiting = {k.removeprefix("queue_overflow:") for k in open_now if k.startswith("queue_overflow:")}
        for queue in sorted(set(depth) | waiting):
            limit = s.alert_queue_depths.get(queue, s.alert_queue_depth)
            n = depth.get(queue, 0)
            self._count(
                f"queue_overflow:{queue}",
                n,
                limit,
                open_now,
                f"Queue {queue} is overflowing",
                f"{n} jobs are waiting in queue {queue} (limit {limit}): add workers or "
                f"concurrency for it, or find what enqueues so much",
                queue=queue,
            )

    def _count(
        self, key: str, n: int, limit: int, open_now: set[str], title: str, message: str, **context: object
    ) -> None:
        if n > limit and key not in open_now:
            self.app.alerts.raise_alert(key, "error", title, message, count=n, limit=limit, **context)
        elif n <= limit * CLEARS_AT and key in open_now:
            self.app.alerts.resolve(key, f"{n} now (limit {limit})")

    def _scheduler(self, schedules: int, last_beat: datetime | None, open_now: set[str]) -> None:
        s = self.app.settings
        now = self.clock()
        beat = _aware(last_beat) if last_beat is not None else None
        silent = (now - max(beat or self._watching_since, self._watching_since)).total_seconds()
        down = schedules > 0 and silent > s.alert_scheduler_silence_seconds
        if down and "scheduler_down" not in open_now:
            last = f"last heartbeat {beat.isoformat(timespec='seconds')}" if beat else "none seen"
            self.app.alerts.raise_alert(
                "scheduler_down",
                "critical",
                "No scheduler is running",
                f"no scheduler heartbeat for {silent:.0f}s ({last}): {schedules} enabled schedule(s), "
                "the daily export among them, will not fire; start `ledgerflow scheduler` or `serve`",
                last_heartbeat=beat,
                schedules=schedules,
            )
        elif not down and "scheduler_down" in open_now:
            self.app.alerts.resolve("scheduler_down", "a scheduler is running again")

    def _pool(self, open_now: set[str]) -> None:
        db = self.app.db
        timeouts, self._pool_timeouts = db.pool_timeouts - self._pool_timeouts, db.pool_timeouts
        if timeouts and self.pool_key not in open_now:
            size = self.app.settings.db_pool_size
            self.app.alerts.raise_alert(
                self.pool_key,
                "critical",
                "Database connection pool exhausted",
                f"{timeouts} request(s) in process {os.getpid()} on {socket.gethostname()} waited "
                f"{self.app.settings.db_pool_timeout:g}s for a database connection and gave up: all "
                f"{size} pooled (+10 overflow) were in use. Raise LEDGERFLOW_DB_POOL_SIZE, or "
                "lower the load (worker concurrency, API clients); on PostgreSQL mind max_connections",
                timeouts=timeouts,
                pool_size=size,
            )
        for key in open_now:
            if not key.startswith("db_pool_exhausted:"):
                continue
            host, _, pid = key.removeprefix("db_pool_exhausted:").rpartition(":")
            if key == self.pool_key and not timeouts:
                self.app.alerts.resolve(key, "no request waited for a connection since the last check")
            elif key != self.pool_key and host == socket.gethostname() and not _running(pid):
                self.app.alerts.resolve(key, f"process {pid} has ended")


def _running(pid: str) -> bool:
    return pid.isdigit() and process_running(int(pid))


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)
