"""`App`: the entry point of the Python API (tasks, enqueue, workers, jobs)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from functools import cached_property
from typing import Any, overload

from sqlalchemy import Connection

from ledgerflow import payload
from ledgerflow.alerts import Alerts, Notifier
from ledgerflow.clock import Clock
from ledgerflow.config import Settings, load_settings
from ledgerflow.db.backends import SessionLimits
from ledgerflow.db.database import Database
from ledgerflow.engine.jobs import Job, JobSpec
from ledgerflow.engine.limits import LimitStore
from ledgerflow.engine.retry import Backoff
from ledgerflow.engine.search import BulkResult, JobFilter
from ledgerflow.engine.store import JobStore, is_plain
from ledgerflow.engine.tasks import (
    Isolation,
    Task,
    TaskOptions,
    TaskRegistry,
    default_task_name,
    make_backoff,
)
from ledgerflow.engine.worker import Worker, WorkerExit, WorkerOptions, parse_queues
from ledgerflow.export.profiles import Profile, check_entry
from ledgerflow.ledger.entries import Entry
from ledgerflow.ledger.store import LedgerStore
from ledgerflow.logs import configure_logging
from ledgerflow.names import check_name
from ledgerflow.payload import PayloadLimits
from ledgerflow.scheduler.schedules import Schedule
from ledgerflow.scheduler.store import ScheduleStore


class Transaction:
    """Enqueue inside one database transaction: the jobs exist only if it commits."""

    def __init__(self, app: App, connection: Connection) -> None:
        self.app = app
        self.connection = connection

    def enqueue(self, spec: JobSpec) -> Job:
        return self.app.enqueue(spec, connection=self.connection)

    def enqueue_many(self, specs: Sequence[JobSpec]) -> list[int]:
        return self.app.enqueue_many(specs, connection=self.connection)


class App:
    """A ledgerflow application: a database plus the tasks registered on it.

    >>> app = App(database_url="sqlite:///./ledgerflow.db")
    >>> @app.task(queue="default")
    ... def send_receipt(receipt_id: int) -> None: ...
    """

    def __init__(
        self, database_url: str | None = None, *, settings: Settings | None = None, **overrides: Any
    ) -> None:
        if settings is None:
            settings = load_settings(database_url=database_url, **overrides)
        elif database_url is not None or overrides:
            settings = settings.model_copy(
                update={"database_url": database_url or settings.database_url, **overrides}
            )
            settings = load_settings(**settings.model_dump())
        self.settings = settings
        configure_logging(settings.log_level, settings.log_json)
        payload.configure(PayloadLimits(settings.payload_max_depth, settings.payload_max_bytes))
        self.registry = TaskRegistry()
        self._local_wakers: set[Callable[[], None]] = set()
        self._claim_gates: list[Callable[[], bool]] = []
        self._maintenance_hooks: list[Callable[[], None]] = []
        self._schedules: dict[str, Schedule] = {}

    # ---------------------------------------------------------------- parts
    @cached_property
    def db(self) -> Database:
        s = self.settings
        return Database(
            s.database_url,
            sqlite_synchronous=s.sqlite_synchronous,
            busy_timeout=s.sqlite_busy_timeout,
            connect_timeout=s.connect_timeout,
            limits=SessionLimits(s.db_statement_timeout, s.db_lock_timeout, s.db_idle_in_transaction_timeout),
            pool_size=s.db_pool_size,
            pool_timeout=s.db_pool_timeout,
        )

    @cached_property
    def store(self) -> JobStore:
        return JobStore(self.db)

    @cached_property
    def limits(self) -> LimitStore:
        """Global concurrency and rate limits per queue or task type.

        `app.limits.set("queue", "mail", concurrency=3, rate="60/minute")`, `app.limits.clear(...)`.
        """
        return LimitStore(self.db)

    @cached_property
    def alerts(self) -> Alerts:
        s = self.settings
        return Alerts(self.db, Notifier(s.alert_webhook_url, s.alert_email, s.smtp_url))

    @cached_property
    def schedules(self) -> ScheduleStore:
        return ScheduleStore(self)

    @cached_property
    def ledger(self) -> LedgerStore:
        """Record journal entries: `app.ledger.record({...})`, checked against the export profile."""
        profile = self.export_profile

        def exportable(entry: Entry) -> None:
            check_entry(entry, profile)

        return LedgerStore(
            self.db,
            timezone=self.settings.timezone,
            checks=[exportable],
            on_immediate=self._enqueue_immediate_exports,
            wake=self._wake_local,
        )

    @cached_property
    def export_profile(self) -> Profile:
        """`LEDGERFLOW_EXPORT_PROFILE` with its overrides (checked when the settings load)."""
        return self.settings.profile()

    def _enqueue_immediate_exports(self, connection: Connection, entry_ids: list[int]) -> None:
        """One export job per `immediate` entry, in the transaction that records the entries."""
        from ledgerflow.export.tasks import IMMEDIATE_TASK

        self.store.enqueue(
            connection,
            [
                JobSpec(
                    task=IMMEDIATE_TASK,
                    args=(entry_id,),
                    queue="exports",
                    priority=1,
                    max_attempts=4,
                    unique_key=f"export:immediate:{entry_id}",
                )
                for entry_id in entry_ids
            ],
        )

    def migrate(self) -> None:
        """Create or upgrade the schema (idempotent)."""
        from ledgerflow.db.migrate import migrate

        migrate(self.db)

    def close(self) -> None:
        """Deliver the alerts still queued (bounded wait), then close the database pool."""
        if "alerts" in self.__dict__:
            self.alerts.notifier.flush()
        if "db" in self.__dict__:
            self.db.dispose()

    # ---------------------------------------------------------------- tasks
    @overload
    def task(self, func: Callable[..., Any], /) -> Task: ...
    @overload
    def task(self, func: None = None, /, **options: Any) -> Callable[[Callable[..., Any]], Task]: ...

    def task(
        self,
        func: Callable[..., Any] | None = None,
        /,
        *,
        name: str | None = None,
        queue: str = "default",
        priority: int = 5,
        max_attempts: int = 5,
        timeout: float = 1800.0,
        isolation: Isolation = "thread",
        retry_backoff: float | Sequence[float] | Backoff | None = None,
        global_limit: int | None = None,
        rate_limit: str | tuple[int, float] | None = None,
    ) -> Task | Callable[[Callable[..., Any]], Task]:
        """Register a sync or async function as a task (usable bare or with options).

        `global_limit=2`: at most two of its jobs run at once across all workers;
        `rate_limit="60/minute"`: at most 60 of its jobs start in any minute.
        """

        def register(f: Callable[..., Any]) -> Task:
            options = TaskOptions(queue=queue, priority=priority, max_attempts=max_attempts, timeout=timeout)
            JobSpec(
                task=name or default_task_name(f),
                queue=queue,
                priority=priority,
                max_attempts=max_attempts,
                timeout=timeout,
            )  # validates the defaults now
            t = Task(
                self,
                f,
                name=name or default_task_name(f),
                options=options,
                isolation=isolation,
                backoff=make_backoff(retry_backoff),
                global_limit=global_limit,
                rate_limit=rate_limit,
            )
            self.registry.add(t)
            return t

        return register(func) if func is not None else register

    # ---------------------------------------------------------------- enqueue
    def enqueue(self, spec: JobSpec, *, connection: Connection | None = None) -> Job:
        """Insert one job; with `connection`, inside the caller's transaction."""
        if connection is not None:
            return self.store.enqueue_job(connection, spec)
        if is_plain(spec):
            with self.db.single() as conn:  # one statement that commits alone: one round trip
                job = self.store.insert_plain(conn, spec)
        else:
            job = self.db.run(lambda c: self.store.enqueue_job(c, spec))
        self._wake_local()
        return job

    def enqueue_many(self, specs: Sequence[JobSpec], *, connection: Connection | None = None) -> list[int]:
        """Insert many jobs in one transaction; returns their ids in order."""
        if connection is not None:
            return self.store.enqueue(connection, list(specs))
        ids = self.db.run(lambda c: self.store.enqueue(c, list(specs)))
        self._wake_local()
        return ids

    @contextlib.contextmanager
    def transaction(self, connection: Connection | None = None) -> Iterator[Transaction]:
        """`with app.transaction() as tx: tx.enqueue(...)` — or join an existing connection."""
        if connection is not None:
            yield Transaction(self, connection)
            return
        with self.db.begin() as conn:
            yield Transaction(self, conn)
        self._wake_local()

    def _wake_local(self) -> None:
        for wake in list(self._local_wakers):
            wake()

    # ---------------------------------------------------------------- jobs
    def get_job(self, job_id: int) -> Job:
        return self.store.get(job_id)

    def find_jobs(
        self, where: JobFilter | None = None, *, limit: int = 50, before_id: int | None = None
    ) -> list[Job]:
        """Jobs matching `where` (state, queue, task, args/kwargs text, error text, time
        ranges), newest first; page with `before_id` = the last id of the previous page."""
        return self.store.find(where, limit=limit, before_id=before_id)

    def cancel_jobs(
        self, where: JobFilter, *, dry_run: bool = False, reason: str | None = None
    ) -> BulkResult:
        """Cancel every unfinished job `where` matches (dependents too)."""
        return self.store.bulk("cancel", where, dry_run=dry_run, reason=reason)

    def retry_jobs(self, where: JobFilter, *, dry_run: bool = False) -> BulkResult:
        """Make every dead, cancelled, retryable or scheduled job `where` matches run now."""
        return self.store.bulk("retry", where, dry_run=dry_run)

    def delete_jobs(self, where: JobFilter, *, dry_run: bool = False) -> BulkResult:
        """Delete every completed, dead or cancelled job `where` matches, with its history."""
        return self.store.bulk("delete", where, dry_run=dry_run)

    # ---------------------------------------------------------------- schedules
    def schedule(
        self,
        name: str,
        cron: str,
        task: str | Task,
        *,
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
        timezone: str | None = None,
        queue: str | None = None,
        priority: int | None = None,
        **options: Any,
    ) -> Schedule:
        """Declare a schedule in code; it is stored (created or updated) by `sync_schedules()`,
        which `ledgerflow init`, the scheduler and `serve` call. Options: misfire_policy,
        misfire_max, allow_overlap, holiday_calendar, extra_holidays, business_day, enabled."""
        task_obj = (
            task if isinstance(task, Task) else (self.registry.get(task) if task in self.registry else None)
        )
        task_name = task.name if isinstance(task, Task) else task
        if task_obj is None:
            from ledgerflow.errors import UnknownTask

            raise UnknownTask(f"schedule {name!r}: unknown task {task_name!r}")
        definition = Schedule(
            name=name,
            cron_expression=cron,
            job_type=task_name,
            timezone=timezone or self.settings.timezone,
            args=list(args),
            kwargs=dict(kwargs or {}),
            queue=queue or task_obj.options.queue,
            priority=task_obj.options.priority if priority is None else priority,
            **options,
        )
        self._schedules[name] = definition
        return definition

    def periodic(
        self, cron: str, *, name: str | None = None, timezone: str | None = None, **task_options: Any
    ) -> Callable[[Callable[..., Any]], Task]:
        """Decorator: register the function as a task and run it on `cron` (schedule name:
        `name`, else the function's name)."""

        def register(func: Callable[..., Any]) -> Task:
            t = self.task(func, **task_options) if task_options else self.task(func)
            self.schedule(name or func.__name__, cron, t, timezone=timezone)
            return t

        return register

    def sync_schedules(self) -> list[Schedule]:
        """Store the schedules declared in code and seed the standard ones."""
        from ledgerflow.scheduler.standard import seed_standard_schedules

        stored = [self.schedules.upsert(s) for s in self._schedules.values()]
        return stored + seed_standard_schedules(self)

    def seed_standard_schedules(self) -> list[Schedule]:
        return self.sync_schedules()

    def run_scheduler(self, clock: Clock | None = None, tick_seconds: float = 1.0) -> None:
        """Run a scheduler in this thread until SIGTERM/SIGINT."""
        from ledgerflow.scheduler.loop import run_scheduler

        run_scheduler(self, clock, tick_seconds)

    def task_summary(self) -> list[dict[str, Any]]:
        """Registered (and paused) task types with their queue and pause or auto-stop state."""
        paused = {p.name: p for p in self.store.pauses() if p.kind == "task"}
        out = []
        for name in sorted(set(self.registry.names()) | set(paused)):
            task = self.registry.get(name) if name in self.registry else None
            p = paused.get(name)
            out.append(
                {
                    "task": name,
                    "queue": task.options.queue if task else None,
                    "registered": task is not None,
                    "paused": p is not None,
                    "paused_by": p.paused_by if p else None,
                    "reason": p.reason if p else None,
                    "paused_at": p.paused_at.isoformat() if p else None,
                }
            )
        return out

    def queues(self) -> list[str]:
        """Every queue a registered task uses, plus `default`."""
        return sorted({self.registry.get(n).options.queue for n in self.registry.names()} | {"default"})

    # ---------------------------------------------------------------- worker
    def worker(
        self,
        queues: str | Sequence[str] | None = None,
        concurrency: int = 8,
        burst: bool = False,
        **options: Any,
    ) -> Worker:
        s = self.settings
        opts = WorkerOptions(
            queues=parse_queues(queues),
            concurrency=concurrency,
            burst=burst,
            lease_seconds=s.lease_seconds,
            heartbeat_seconds=s.heartbeat_seconds,
            rescue_interval=s.rescue_interval,
            grace_seconds=s.grace_seconds,
            max_abandoned_threads=s.max_abandoned_threads,
            memory_limit_percent=s.autostop_memory_percent,
        )
        for queue in opts.queues:
            check_name(queue, "queue")
        for key, value in options.items():
            if not hasattr(opts, key):
                raise TypeError(f"unknown worker option {key!r}")
            setattr(opts, key, value)
        if opts.concurrency < 1:
            from ledgerflow.errors import BadInput

            raise BadInput(f"concurrency must be >= 1, got {opts.concurrency}")
        return Worker(self, opts)

    def run_worker(
        self,
        queues: str | Sequence[str] | None = None,
        concurrency: int = 8,
        burst: bool = False,
        **options: Any,
    ) -> WorkerExit:
        """Run a worker in this thread until stopped (or drained, with `burst=True`)."""
        return self.worker(queues, concurrency, burst, **options).run()
