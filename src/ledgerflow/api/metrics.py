"""Prometheus metrics derived from the database at scrape time.

Every process and host reads the same tables, so every `/metrics` endpoint reports the same
numbers however many workers run (no per-process counters to aggregate).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from sqlalchemy import case, func, select

from ledgerflow.db.tables import circuit_breakers, export_batches, export_logs, job_executions, jobs, workers
from ledgerflow.engine.states import CLAIMABLE, JobState

if TYPE_CHECKING:
    from ledgerflow.app import App

EXPORT_BUCKETS = (1.0, 5.0, 10.0, 30.0, 60.0)
JOB_BUCKETS = (0.005, 0.05, 0.5, 1.0, 5.0, 30.0, 120.0, 600.0, 1800.0)
ERROR_TYPES = ("timeout", "google_drive", "s3", "unknown")
BREAKER_STATES = {"closed": 0, "half_open": 1, "open": 2}


def _histogram(
    conn: Any, column: Any, where: list[Any], buckets: tuple[float, ...]
) -> tuple[list[int], int, float]:
    """Cumulative bucket counts, count and sum in one scan."""
    cols = [func.sum(case((column <= b, 1), else_=0)) for b in buckets]
    row = conn.execute(
        select(*cols, func.count(column), func.coalesce(func.sum(column), 0.0)).where(*where)
    ).one()
    return [int(v or 0) for v in row[: len(buckets)]], int(row[-2] or 0), float(row[-1] or 0.0)


class DatabaseCollector:
    def __init__(self, app: App) -> None:
        self.app = app

    def collect(self) -> Iterator[Metric]:
        db = self.app.db
        with db.read() as conn:
            yield from self._export(conn)
            yield from self._jobs(conn)
            yield from self._health(conn)
            yield from self._search(conn)

    def _export(self, conn: Any) -> Iterator[Metric]:
        daily_done = [export_batches.c.kind == "daily", export_batches.c.state == "completed"]
        counts, total, seconds = _histogram(
            conn, export_batches.c.duration_seconds, daily_done, EXPORT_BUCKETS
        )
        hist = HistogramMetricFamily(
            "daily_batch_export_duration_seconds", "Duration of completed daily batch exports (seconds)"
        )
        hist.add_metric(
            [],
            [(str(b), c) for b, c in zip(EXPORT_BUCKETS, counts, strict=True)] + [("+Inf", total)],
            seconds,
        )
        yield hist
        exported = conn.execute(
            select(func.coalesce(func.sum(export_batches.c.entry_count), 0)).where(*daily_done)
        ).scalar_one()
        yield CounterMetricFamily(
            "daily_batch_export_entries", "Journal entries exported by daily batches", value=int(exported)
        )
        errors = CounterMetricFamily(
            "daily_batch_export_errors", "Failed export attempts by error type", labels=["error_type"]
        )
        by_type = dict.fromkeys(ERROR_TYPES, 0)
        rows = conn.execute(select(export_logs.c.metadata).where(export_logs.c.action == "attempt_failed"))
        for (meta,) in rows:
            kind = (meta or {}).get("error_type", "unknown")
            by_type[kind if kind in by_type else "unknown"] += 1
        abandoned = conn.execute(select(export_logs.c.metadata).where(export_logs.c.action == "abandoned"))
        for (meta,) in abandoned:  # the last attempt's failure is logged with the abandonment
            kind = (meta or {}).get("error_type", "unknown")
            by_type[kind if kind in by_type else "unknown"] += 1
        for kind, n in by_type.items():
            errors.add_metric([kind], n)
        yield errors
        breakers = GaugeMetricFamily(
            "ledgerflow_circuit_breaker_state",
            "Circuit breaker per destination: 0 closed, 1 half-open, 2 open",
            labels=["destination"],
        )
        for dest, state in conn.execute(select(circuit_breakers.c.destination, circuit_breakers.c.state)):
            breakers.add_metric([dest], BREAKER_STATES.get(state, 2))
        yield breakers
        yield from self._recent_batches(conn, daily_done)
        last = conn.execute(select(func.max(export_batches.c.completed_at)).where(*daily_done)).scalar()
        age = GaugeMetricFamily(
            "ledgerflow_daily_export_age_seconds",
            "Seconds since the last successful daily export (absent before the first)",
        )
        if last is not None:
            age.add_metric([], (datetime.now(UTC) - _aware(last)).total_seconds())
        yield age

    def _recent_batches(self, conn: Any, daily_done: list[Any]) -> Iterator[Metric]:
        """Duration and size of the latest completed daily batch and of the day before it (when that
        day has one), for rules such as "slow on two consecutive days" or "a batch too large"."""
        rows = conn.execute(
            select(
                export_batches.c.batch_date, export_batches.c.duration_seconds, export_batches.c.entry_count
            )
            .where(*daily_done)
            .order_by(export_batches.c.batch_date.desc())
            .limit(2)
        ).all()
        if len(rows) == 2 and rows[0].batch_date - rows[1].batch_date != timedelta(days=1):
            rows = rows[:1]  # not consecutive days
        duration = GaugeMetricFamily(
            "ledgerflow_daily_export_batch_duration_seconds",
            "Duration of the latest completed daily batch, and of the previous day's",
            labels=["batch"],
        )
        entries = GaugeMetricFamily(
            "ledgerflow_daily_export_batch_entries",
            "Entries in the latest completed daily batch, and in the previous day's",
            labels=["batch"],
        )
        for label, row in zip(("latest", "previous"), rows, strict=False):
            duration.add_metric([label], float(row.duration_seconds or 0.0))
            entries.add_metric([label], int(row.entry_count))
        yield duration
        yield entries

    def _jobs(self, conn: Any) -> Iterator[Metric]:
        by_state = GaugeMetricFamily(
            "ledgerflow_jobs", "Jobs by queue, task and state", labels=["queue", "task", "state"]
        )
        depth: dict[str, int] = {}
        dead: dict[str, int] = {}
        for (queue, task, state), n in self.app.store.counts(conn=conn).items():
            by_state.add_metric([queue, task, state], int(n))
            if state in CLAIMABLE:
                depth[queue] = depth.get(queue, 0) + int(n)
            if state == JobState.DEAD:
                dead[task] = dead.get(task, 0) + int(n)
        yield by_state
        queue_depth = GaugeMetricFamily(
            "ledgerflow_queue_depth", "Jobs waiting to run, per queue", labels=["queue"]
        )
        for queue, n in sorted(depth.items()):
            queue_depth.add_metric([queue], n)
        yield queue_depth
        dlq = GaugeMetricFamily("ledgerflow_dead_jobs", "Dead-letter queue size, per task", labels=["task"])
        for task, n in sorted(dead.items()):
            dlq.add_metric([task], n)
        yield dlq
        durations = HistogramMetricFamily(
            "ledgerflow_job_duration_seconds", "Run time of finished attempts, per task", labels=["task"]
        )
        for (task,) in conn.execute(select(job_executions.c.task).distinct()):
            counts, total, seconds = _histogram(
                conn,
                job_executions.c.duration_seconds,
                [job_executions.c.task == task, job_executions.c.duration_seconds.is_not(None)],
                JOB_BUCKETS,
            )
            durations.add_metric(
                [task],
                [(str(b), c) for b, c in zip(JOB_BUCKETS, counts, strict=True)] + [("+Inf", total)],
                seconds,
            )
        yield durations

    def _health(self, conn: Any) -> Iterator[Metric]:
        beats = GaugeMetricFamily(
            "ledgerflow_heartbeat_age_seconds",
            "Seconds since each running worker or scheduler last wrote its heartbeat",
            labels=["kind", "id"],
        )
        now = datetime.now(UTC)
        for kind, ident, beat in conn.execute(
            select(workers.c.kind, workers.c.id, workers.c.heartbeat_at).where(workers.c.stopped_at.is_(None))
        ):
            beats.add_metric([kind, ident], (now - _aware(beat)).total_seconds())
        yield beats

    def _search(self, conn: Any) -> Iterator[Metric]:
        lag = GaugeMetricFamily(
            "ledgerflow_search_unindexed_ids",
            "Job ids above the search index mark (searches scan those jobs); growing while workers "
            "run: the mark is held (PostgreSQL: a transaction left open, or an id sequence CACHE > 1)",
        )
        newest = conn.execute(select(func.max(jobs.c.id))).scalar() or 0
        mark = conn.exec_driver_sql("SELECT indexed_to FROM job_search_mark").scalar_one()
        lag.add_metric([], max(0, newest - mark))
        yield lag


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def render(app: App) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DatabaseCollector(app))  # type: ignore[arg-type]
    return generate_latest(registry)
