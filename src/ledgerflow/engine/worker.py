"""The worker: claims jobs in batches, runs them, and writes their outcomes in batches.

Threads of one worker process:

* the event loop: claims, runs async tasks, supervises timeouts, batches outcomes;
* one database thread: each cycle writes finished outcomes and claims new jobs in a
  single transaction;
* a heartbeat thread: renews the leases of running jobs, independently of the tasks'
  own threads or event loop, and fences jobs whose lease was lost;
* a progress thread: writes what running tasks reported (`JobContext.progress`), at most
  once per `progress_seconds` per job, fenced by the lease;
* a maintenance thread: rescues jobs whose worker died (after confirming their lease
  stayed expired while the database was writable), stages due jobs, runs hooks;
* a waker (LISTEN/NOTIFY or SQLite `data_version`) and a pool of daemon threads for
  sync tasks. While the loop waits idle it arms its next claim: the waker's thread starts
  it on the database thread at once on a notification, and the loop, woken when it is
  back, takes its result as that of its own cycle.

A database error never ends the worker: the cycle is retried with backoff, outcomes
stay buffered, and leases that could not be renewed are rescued by whoever is alive.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import heapq
import itertools
import logging
import math
import os
import secrets
import signal
import socket
import threading
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import Connection, insert, update

from ledgerflow.alert_checks import AlertChecks
from ledgerflow.db.backends import Election, Waker
from ledgerflow.db.database import is_transient
from ledgerflow.db.tables import workers
from ledgerflow.engine import leases
from ledgerflow.engine.autostop import AutoStop, cpu_gate, memory_gate
from ledgerflow.engine.isolation import ChildProcess, ChildTaskError
from ledgerflow.engine.jobs import JobContext, reset_current_job, set_current_job
from ledgerflow.engine.leases import Claim, LeaseSQL, Outcome, error_record
from ledgerflow.engine.limits import LimitStore
from ledgerflow.engine.liveness import local_owner_running
from ledgerflow.engine.pool import DaemonThreadPool, _Call
from ledgerflow.engine.progress import PROGRESS_SECONDS, ProgressReport, write_progress
from ledgerflow.engine.search import index_pending
from ledgerflow.engine.states import JobState
from ledgerflow.engine.tasks import Task
from ledgerflow.errors import JobTimeout, Snooze
from ledgerflow.logs import get_logger
from ledgerflow.payload import result_problem, storable_result
from ledgerflow.tracing import Attempt

if TYPE_CHECKING:
    from ledgerflow.app import App

T = TypeVar("T")
S = JobState
Key = tuple[int, int]
#: What a cycle returns: (claims, outcomes refused because the lease was lost, outcomes still to write).
CycleResult = tuple[list[Claim], list[Outcome], list[Outcome]]


class WorkerExit(StrEnum):
    DONE = "done"  # burst mode: nothing left to run
    STOPPED = "stopped"  # SIGTERM/SIGINT or stop(): drained and released
    RESTART = "restart"  # too many abandoned threads: the process should restart itself


@dataclass
class WorkerOptions:
    """How one worker process runs; defaults come from settings."""

    queues: dict[str, int | None] = field(default_factory=lambda: {"default": None})
    concurrency: int = 8
    burst: bool = False
    lease_seconds: float = 6.0
    heartbeat_seconds: float = 1.5
    rescue_interval: float = 0.5
    grace_seconds: float = 25.0
    max_abandoned_threads: int = 5
    prefetch: int | None = None  # None: adaptive (deep for fast jobs, none for slow ones)
    poll_interval: float = 1.0
    wake_poll_seconds: float = 0.005
    memory_limit_percent: float = 95.0
    progress_seconds: float = PROGRESS_SECONDS


@dataclass
class _Running:
    claim: Claim
    started: float
    task: asyncio.Task[None] | None = None  # an async task's (or child process's) asyncio task
    item: _Call | None = None  # its call in the thread pool (a sync task's, or a child process's)
    definition: Task | None = None  # a sync task run in the pool (no asyncio task)
    report: ProgressReport | None = None
    attempt: Attempt | None = None
    child: ChildProcess | None = None
    fenced: bool = False
    released: bool = False
    timed_out: bool = False  # an async task cancelled at its deadline (`_timed_out`)
    left: bool = False  # an async task that ignored its release, left running (`_leave_async`)


@dataclass
class _Armed:
    """A claim the waker's thread may start while the loop waits idle (`Worker._notified`): the
    loop's budget when it began to wait, and once started, the wake-ups it covers and its cycle."""

    slots: dict[str, int]
    db_thread: ThreadPoolExecutor
    wakes: int = 0
    cycle: Future[CycleResult] | None = None


def parse_queues(spec: str | Sequence[str] | None) -> dict[str, int | None]:
    """`"default,exports=1"` → {"default": None, "exports": 1} (None: shares the pool)."""
    if not spec:
        return {"default": None}
    parts = spec.split(",") if isinstance(spec, str) else list(spec)
    out: dict[str, int | None] = {}
    for part in (p.strip() for p in parts):
        if not part:
            continue
        name, _, limit = part.partition("=")
        if limit and (not limit.isdigit() or int(limit) < 1):
            from ledgerflow.errors import BadInput

            raise BadInput(f"bad queue limit in {part!r} (expected NAME or NAME=N with N >= 1)")
        out[name.strip()] = int(limit) if limit else None
    return out or {"default": None}


class Worker:
    """Runs the app's tasks from the given queues until stopped (or, in burst mode, drained)."""

    def __init__(self, app: App, options: WorkerOptions) -> None:
        self.app = app
        self.db = app.db
        self.opts = options
        self.id = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self.log = get_logger("worker").bind(worker_id=self.id)
        #: Whether the per-job INFO and DEBUG lines are written at this log level: when not, their
        #: fields are not even gathered (a dict and a call per job, ~1 us, for nothing).
        self._info_on = _enabled(self.log, logging.INFO)
        self._debug_on = _enabled(self.log, logging.DEBUG)
        self._inflight: dict[Key, _Running] = {}
        self._reports: dict[Key, ProgressReport] = {}
        self._outcomes: list[Outcome] = []
        #: The timeouts of running sync and async tasks, one loop timer for the earliest
        #: (`_watch_timeout`): (deadline by the loop's clock, sequence, key, attempt).
        self._deadlines: list[tuple[float, int, Key, _Running]] = []
        self._deadline_seq = itertools.count()
        self._deadline_timer: asyncio.TimerHandle | None = None
        self._deadline_at = math.inf
        #: Sync tasks whose thread returned, not yet taken by the event loop (`_collect_finished`).
        self._finished: deque[Key] = deque()
        self._handoff_pending = False
        self._buffer: deque[Claim] = deque()
        #: When each buffered claim's lease was last known to start (claim or renewal), monotonic.
        self._leased_at: dict[Key, float] = {}
        #: After a cycle whose outcome is unknown (its COMMIT's answer lost) and whose re-read
        #: failed too: the claim tokens to look up and the outcomes to check before writing again.
        self._unsettled_tokens: dict[int, float] = {}  # token → when its cycle began
        self._unsettled_keys: set[Key] = set()
        #: Jobs the heartbeat failed for running past timeout + one lease (no longer renewed).
        self._failed_overdue: set[Key] = set()
        self._avg_duration: float | None = None
        self._sql = LeaseSQL(app.db, options.lease_seconds)
        self._stopping = False
        self._force = False
        self._restart = False
        self._abandoned = 0
        self._last_heartbeat_ok = time.monotonic()
        self._loop: asyncio.AbstractEventLoop | None = None
        #: The context the loop's callbacks from other threads run in (the main loop's, as when
        #: it starts jobs itself), not the calling thread's (`_sync_finished`).
        self._context = contextvars.copy_context()
        self._wake: asyncio.Event | None = None
        self._waker: Waker | None = None
        #: Claim only when there may be work: after a wake-up (counted, by the waking thread), a
        #: full claim, a timeout, or an outcome that schedules work again (retry, snooze, release).
        self._wakes = 0
        self._wake_lock = threading.Lock()  # guards `_wakes` and `_armed`
        #: While the loop waits idle: the claim a notification starts at once (`_notified`).
        self._armed: _Armed | None = None
        self._wakes_claimed = -1
        self._claim_due = True
        self._due_at: float | None = None  # monotonic time the next scheduled job falls due
        self._threads_stop = threading.Event()
        self._pool = DaemonThreadPool(options.concurrency)
        self._tasks = [n for n in app.registry.names()]
        gates = [memory_gate(app, options.memory_limit_percent)]
        if app.settings.autostop_cpu_enabled:
            gates.append(cpu_gate(app, app.settings.autostop_cpu_percent, app.settings.autostop_cpu_seconds))
        self._gates: list[Callable[[], bool]] = [g.is_open for g in gates]
        self._limit_store = LimitStore(app.db)
        self._limited = False  # whether a global limit names one of our queues or tasks
        #: The queues whose notifications may mean a place under a limit is free (all of ours
        #: when a task limit applies: its jobs may be in any of them).
        self._limited_queues: set[str] = set()
        self._limited_retry_at = 0.0  # no limited claim before this (monotonic), unless notified
        self._limited_wake_at: float | None = None  # when the next full rate window opens
        self.hooks: list[Callable[[], None]] = [  # periodic maintenance
            self._refresh_limits,
            AutoStop(app).maybe_check,
            AlertChecks(app).maybe_check,
            *(g.sample for g in gates),
            self._index_search,  # the job search index, filled off the hot path (engine/search.py)
        ]

    # ------------------------------------------------------------ lifecycle
    def run(self) -> WorkerExit:
        """Run until stopped; returns why it stopped."""
        self._register()
        waker = self._waker = self.db.backend.waker(self.db.engine, self.opts.wake_poll_seconds)
        threads = [
            threading.Thread(target=self._heartbeat_loop, name="ledgerflow-heartbeat", daemon=True),
            threading.Thread(target=self._maintenance_loop, name="ledgerflow-maintenance", daemon=True),
            threading.Thread(target=self._progress_loop, name="ledgerflow-progress", daemon=True),
        ]
        restore = self._install_signals()
        try:
            for t in threads:
                t.start()
            election = Election(frozenset(self.opts.queues), frozenset(self._tasks))
            waker.start(self._notified, election)
            self.app._local_wakers.add(self.wake)
            exit_reason = _run_loop(self._main(), self.EXIT_TASKS_WAIT)
        finally:
            self.app._local_wakers.discard(self.wake)
            self._threads_stop.set()
            waker.stop()
            for t in threads:
                t.join(timeout=5)
            self._pool.shutdown()
            restore()
            self._unregister()
        self.log.info("worker_stopped", reason=str(exit_reason), abandoned_threads=self._abandoned)
        return exit_reason

    def stop(self, force: bool = False) -> None:
        """Stop claiming, let running jobs finish within the grace period, then exit."""
        self._stopping = True
        self._force = self._force or force
        self.wake()

    def _notified(self, payload: str | None) -> None:
        """The waker's callback: new work, or (naming a limited queue) a place freed under a
        limit; SQLite's waker names no queue."""
        if payload is None or payload in self._limited_queues:
            self._limited_retry_at = 0.0
        self._signal(start_claim=True)

    def wake(self) -> None:
        """There may be new work: claim at the next turn of the loop."""
        self._signal(start_claim=False)

    def _signal(self, start_claim: bool) -> None:
        """Count a wake-up and wake the loop. With `start_claim` (a notification), the claim the
        idle loop armed is started on the database thread from this thread instead, and the
        loop is woken when it is back (`_notified_cycle`): two thread hops fewer before the
        statement, and the loop does not compete with the claim for the CPU meanwhile. The
        wake-up is counted before the claim starts, so a later one, which the claim may have
        missed, makes the loop claim again."""
        with self._wake_lock:
            self._wakes += 1
            armed = self._armed
            if start_claim and armed is not None and not self._stopping and self._may_claim_here():
                self._armed = None
                armed.wakes = self._wakes
                armed.cycle = armed.db_thread.submit(self._notified_cycle, armed.slots)
                return
        self._wake_loop()

    def _may_claim_here(self) -> bool:
        """`_may_claim` on the waker's thread: a gate that raises leaves the claim to the loop
        (which raises it where it always did) instead of ending the waker's thread."""
        try:
            return self._may_claim()
        except Exception:
            return False

    def _notified_cycle(self, slots: dict[str, int]) -> CycleResult:
        """The armed claim a notification started (database thread); wakes the loop once back."""
        try:
            return self._cycle([], slots)
        finally:
            self._wake_loop()

    async def _taken(self, cycle: Future[CycleResult]) -> CycleResult:
        """The notified claim's result: at once when it is back (it woke the loop), else awaited."""
        return cycle.result() if cycle.done() else await asyncio.wrap_future(cycle)

    def _wake_loop(self) -> None:
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # loop already closed
                loop.call_soon_threadsafe(self._woken)

    def _woken(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def _install_signals(self) -> Callable[[], None]:
        if threading.current_thread() is not threading.main_thread():
            return lambda: None

        def handler(signum: int, _frame: Any) -> None:
            self.log.info("worker_signal", signal=signal.Signals(signum).name)
            self.stop(force=self._stopping)  # a second signal skips the grace period

        previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
        return lambda: [signal.signal(s, h) for s, h in previous.items()] and None

    def _register(self) -> None:
        now = datetime.now(UTC)
        row = {
            "id": self.id,
            "kind": "worker",
            "hostname": socket.gethostname(),
            "pid": os.getpid(),
            "queues": list(self.opts.queues),
            "concurrency": self.opts.concurrency,
            "started_at": now,
            "heartbeat_at": now,
        }
        self._retry_db(lambda: self.db.run(lambda c: c.execute(insert(workers).values(row))), "register")
        self._retry_db(self._sync_limits, "register")
        self.log.info(
            "worker_started",
            queues=list(self.opts.queues),
            concurrency=self.opts.concurrency,
            pid=os.getpid(),
            tasks=len(self._tasks),
        )

    def _unregister(self) -> None:
        with contextlib.suppress(Exception):
            self.db.run(
                lambda c: c.execute(
                    update(workers).where(workers.c.id == self.id).values(stopped_at=datetime.now(UTC))
                )
            )

    def _retry_db(self, fn: Callable[[], T], what: str, give_up_after: float = 1e9) -> T:
        """Call `fn`, retrying transient database errors with capped exponential backoff."""
        delay, deadline = 0.1, time.monotonic() + give_up_after
        while True:
            try:
                return fn()
            except Exception as exc:
                if not is_transient(exc) or time.monotonic() > deadline:
                    raise
                self.log.warning(
                    "database_unavailable",
                    during=what,
                    error=str(exc).splitlines()[0],
                    retry_in=round(delay, 2),
                )
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    # ------------------------------------------------------------ main loop
    async def _main(self) -> WorkerExit:
        self._loop = asyncio.get_running_loop()
        self._context = contextvars.copy_context()
        self._wake = asyncio.Event()
        db_thread = ThreadPoolExecutor(1, thread_name_prefix="ledgerflow-db")
        backoff = 0.05
        grace_deadline: float | None = None
        launched: _Armed | None = None  # the armed claim a notification started during the wait
        try:
            while True:
                if self._stopping:
                    if grace_deadline is None:
                        grace_deadline = time.monotonic() + (0 if self._force else self.opts.grace_seconds)
                        self.log.info("worker_draining", running=len(self._inflight))
                    self._return_buffer()  # also what a cycle begun before the stop claimed
                    if self._force and grace_deadline > time.monotonic():
                        grace_deadline = time.monotonic()
                    if self._inflight and time.monotonic() >= grace_deadline:
                        self._release_all()
                        await asyncio.sleep(0)
                        if time.monotonic() >= grace_deadline + self.ASYNC_RELEASE_WAIT:
                            self._leave_async()
                    if not self._inflight and not self._outcomes and launched is None:
                        break
                self._start_buffered()
                slots = self._claim_budget()
                if self._waker is not None:
                    self._waker.ready(bool(slots))
                if not (self._claim_due or self._limited or self._wakes != self._wakes_claimed):
                    slots = {}  # nothing new since a claim came back short: only write outcomes
                claims: list[Claim] = []
                if launched is not None or slots or self._should_flush():
                    cycle: Awaitable[CycleResult]
                    if launched is not None and launched.cycle is not None:
                        batch, slots, wakes = [], launched.slots, launched.wakes
                        cycle = self._taken(launched.cycle)
                        launched = None
                    else:
                        batch, self._outcomes = self._outcomes, []
                        wakes = self._wakes
                        cycle = self._loop.run_in_executor(db_thread, self._cycle, batch, slots)
                    try:
                        claims, refused, unwritten = await cycle
                    except Exception as exc:
                        self._outcomes[:0] = batch
                        if not is_transient(exc):
                            self.log.exception("worker_cycle_failed")
                        else:
                            self.log.warning(
                                "database_unavailable",
                                during="cycle",
                                error=str(exc).splitlines()[0],
                                retry_in=round(backoff, 2),
                            )
                        if self._stopping and grace_deadline and time.monotonic() > grace_deadline + 30:
                            self.log.error("worker_exit_without_writing", pending=len(self._outcomes))
                            break  # leases expire and the jobs are rescued: nothing is lost
                        await asyncio.sleep(backoff)
                        backoff = min(backoff * 2, 5.0)
                        continue
                    backoff = 0.05
                    self._outcomes[:0] = unwritten
                    if slots:
                        self._wakes_claimed = wakes
                        self._claim_due = len(claims) >= sum(slots.values())
                    if any(o.kind != "completed" for o in batch):
                        self._claim_due = True  # a retry or a release may fall due: look again
                        if not slots:
                            continue
                    for outcome in refused:
                        self.log.warning(
                            "outcome_refused_lease_lost",
                            job_id=outcome.claim.job.id,
                            task=outcome.claim.job.task,
                            attempt=outcome.claim.job.attempt,
                            outcome=outcome.kind,
                        )
                    self._buffer.extend(claims)
                    self._start_buffered()
                    if claims and len(claims) >= sum(slots.values()):
                        continue  # there may be more to claim right away
                idle = not claims and not self._inflight and not self._outcomes and not self._buffer
                if self.opts.burst and idle and not await self._read(db_thread, self._work_remaining, True):
                    return WorkerExit.DONE
                timeout = self.opts.poll_interval
                if not self._stopping and slots and not claims:
                    due = await self._read(db_thread, self._seconds_until_due, None)
                    self._due_at = None if due is None else time.monotonic() + due
                if self._due_at is not None:
                    timeout = max(0.001, min(timeout, self._due_at - time.monotonic()))
                if self._limited_wake_at is not None and not self._stopping:  # a rate window opens
                    timeout = max(0.001, min(timeout, self._limited_wake_at - time.monotonic()))
                polling = not self._outcomes
                if self._outcomes:
                    timeout = min(timeout, self.FLUSH_AFTER)
                armed = self._arm(db_thread) if polling else None
                try:
                    async with asyncio.timeout(timeout):  # no task of its own, as `wait_for` has
                        await self._wake.wait()
                except TimeoutError:
                    if polling:  # the poll interval or a due time: claim whatever is there
                        self._claim_due = True
                        self._due_at = None
                finally:
                    if armed is not None:
                        with self._wake_lock:
                            self._armed = None
                        launched = armed if armed.cycle is not None else None
                self._wake.clear()
                if launched is not None and self._wakes != launched.wakes:
                    # a wake-up after the notified claim started (a stop, a notification it may
                    # have missed) that reached the loop with that claim's own: not cleared
                    self._wake.set()
        finally:
            db_thread.shutdown(wait=True)
        return WorkerExit.RESTART if self._restart else WorkerExit.STOPPED

    #: An async task released at shutdown that ignores its cancellation this long is left
    #: running (`_leave_async`): the worker exits without it (the default grace period plus
    #: this stays under Kubernetes' default 30 s before SIGKILL).
    ASYNC_RELEASE_WAIT = 3.0
    #: When the main loop is over, the asyncio tasks still pending (the async tasks left
    #: running) are cancelled and waited for this long at most (`_run_loop`).
    EXIT_TASKS_WAIT = 1.0
    #: Finished outcomes wait at most this long (or for a claim) before being written.
    FLUSH_AFTER = 0.02
    #: Keep about this much work buffered locally (adaptive prefetch for short jobs).
    PREFETCH_SECONDS = 0.05
    #: At most this many prefetched jobs per slot of concurrency (very short jobs): a cycle
    #: then carries about this many jobs per slot, and its fixed cost (transaction, statements)
    #: is shared by more jobs.
    PREFETCH_PER_SLOT = 32

    def _arm(self, db_thread: ThreadPoolExecutor) -> _Armed | None:
        """Before an idle wait: the claim a notification may start at once (`_signal`), for the
        budget of now (what frees a slot meanwhile wakes the loop, which disarms it)."""
        slots = self._claim_budget()
        if not slots:
            return None
        with self._wake_lock:
            armed = self._armed = _Armed(slots, db_thread)
        return armed

    def _should_flush(self) -> bool:
        if not self._outcomes:
            return False
        # a full batch goes at once; a smaller one waits for the next claim (or FLUSH_AFTER)
        full = max(64, self.opts.concurrency + self._prefetch())
        if self._stopping or not self._inflight or len(self._outcomes) >= full:
            return True
        return time.monotonic() - self._outcomes[0].finished >= self.FLUSH_AFTER

    def _prefetch(self) -> int:
        """How many claimed-but-not-started jobs to keep: many for fast jobs, none for slow ones,
        and never more than the pool can start within a quarter of a lease."""
        per_job = max(self._avg_duration if self._avg_duration is not None else 0.01, 1e-4)
        within_lease = int(self.opts.lease_seconds / 4 / per_job) * self.opts.concurrency
        if self.opts.prefetch is not None:
            return min(self.opts.prefetch, within_lease)
        adaptive = int(self.PREFETCH_SECONDS / per_job) * self.opts.concurrency // 4
        return max(0, min(self.PREFETCH_PER_SLOT * self.opts.concurrency, adaptive, within_lease))

    async def _read(self, executor: ThreadPoolExecutor, fn: Callable[[], T], default: T) -> T:
        """Run a read on the database thread; on any error log it and return `default`."""
        assert self._loop is not None
        try:
            return await self._loop.run_in_executor(executor, fn)
        except Exception as exc:
            self.log.warning("database_unavailable", during=fn.__name__, error=str(exc).splitlines()[0])
            await asyncio.sleep(0.5)
            return default

    def _claim_budget(self) -> dict[str, int]:
        """How many jobs to claim now, per queue ('*' = the queues sharing the pool)."""
        if self._stopping or not self._may_claim():
            return {}
        limited = {q: n for q, n in self.opts.queues.items() if n is not None}
        if not limited:
            capacity = self.opts.concurrency + self._prefetch()
            held = len(self._inflight) + len(self._buffer)
            # refill when the buffer runs low, so each cycle carries a batch
            if held >= self.opts.concurrency and held > capacity // 2:
                return {}
            return {"*": capacity - held} if capacity > held else {}
        free = self.opts.concurrency - len(self._inflight) - len(self._buffer)
        if free <= 0:
            return {}
        running: dict[str, int] = {}
        for r in self._inflight.values():
            running[r.claim.job.queue] = running.get(r.claim.job.queue, 0) + 1
        slots: dict[str, int] = {}
        if any(n is None for n in self.opts.queues.values()):
            slots["*"] = free
        for q, n in limited.items():
            slots[q] = min(free, n - running.get(q, 0))
        return {q: n for q, n in slots.items() if n > 0}

    def _cycle(self, outcomes: list[Outcome], slots: dict[str, int]) -> CycleResult:
        """One transaction (or one statement, `_one_statement`): write finished outcomes, then
        claim up to the budget.

        Returns (claims, outcomes refused because the lease was lost, outcomes still to write).
        When the transaction fails, its COMMIT may still have happened (an ambiguous commit):
        what it did is read back by lease token before anything is written again. When the
        database refuses the batch for another reason than being unreachable, the outcomes are
        written one by one instead, so one it cannot store never holds the others back.
        """
        token = leases.new_token()
        started = time.monotonic()
        written = outcomes
        unwritten: list[Outcome] = []
        try:
            if self._one_statement(outcomes, slots):
                with self.db.autocommit() as conn:
                    claims, refused = self._one_statement_cycle(conn, outcomes, slots, token)
            else:
                with self.db.begin() as conn:
                    claims = self._settle(conn) if self._unsettled_tokens else []
                    if self._unsettled_keys:  # written by an earlier ambiguous cycle? then not again
                        doubtful = [o.key for o in outcomes if o.key in self._unsettled_keys]
                        held = self._sql.still_held(conn, doubtful)
                        written = [o for o in outcomes if o.key not in self._unsettled_keys or o.key in held]
                    refused = self._sql.apply_outcomes(conn, written) if written else []
                    if any(o.claim.limited for o in written):  # a place is free: claim it now
                        self._limited_retry_at = 0.0
                    for queue, n in slots.items():
                        names = self._shared_queues() if queue == "*" else [queue]
                        claims += self._sql.claim(
                            conn, worker_id=self.id, queues=names, tasks=self._tasks, limit=n, token=token
                        )
                    if self._limited and slots:
                        claims += self._claim_limited(conn, slots, claims, token)
            self._unsettled_tokens.clear()
            self._unsettled_keys.clear()
            # those not written now were written by an earlier ambiguous cycle
            written = [o for o in outcomes if o not in refused]
        except Exception as exc:
            if is_transient(exc):
                return self._after_ambiguous_cycle(outcomes, token, started, exc)
            if not outcomes:
                raise
            self.log.warning("outcome_batch_refused", outcomes=len(outcomes), error=_first_line(exc))
            claims = []
            written, refused, unwritten = self._write_one_by_one(outcomes)
            self._unsettled_keys.update(o.key for o in unwritten)
        for o in written:
            self._log_outcome(o)
        self._leased_at.update((c.key, started) for c in claims if c.key not in self._leased_at)
        return claims, refused, unwritten

    def _one_statement(self, outcomes: list[Outcome], slots: dict[str, int]) -> bool:
        """Whether this cycle is one PostgreSQL statement, run in autocommit (one round trip
        instead of BEGIN, statement, COMMIT): a claim of one queue set, or the completion of
        plain successes, with nothing to settle from an ambiguous cycle and no global limit. An
        ambiguous end is read back by token and lease as for a COMMIT (`_after_ambiguous_cycle`).

        A cycle that completes and claims stays one transaction: folding both into one statement
        (data-modifying CTEs) halved the processing rate on a quiet machine (bench.fair, 2 x 4:
        4,148 vs 7,220-8,810 jobs/s; docs/benchmarks.md)."""
        return (
            not self.db.is_sqlite
            and len(slots) <= 1
            and bool(outcomes) != bool(slots)
            and not (self._unsettled_tokens or self._unsettled_keys or self._limited)
            and all(leases.is_plain(o) and not o.claim.limited for o in outcomes)
        )

    def _one_statement_cycle(
        self, conn: Connection, outcomes: list[Outcome], slots: dict[str, int], token: int
    ) -> tuple[list[Claim], list[Outcome]]:
        """The one-statement cycle: (claims, outcomes refused because the lease was lost)."""
        if not slots:
            return [], self._sql.apply_outcomes(conn, outcomes)
        ((queue, n),) = slots.items()
        names = self._shared_queues() if queue == "*" else [queue]
        claims = self._sql.claim(
            conn, worker_id=self.id, queues=names, tasks=self._tasks, limit=n, token=token
        )
        return claims, []

    def _shared_queues(self) -> list[str]:
        return [q for q, limit in self.opts.queues.items() if limit is None]

    def _settle(self, conn: Any) -> list[Claim]:
        """The claims of earlier unsettled cycles that did commit (and are still ours)."""
        claims: list[Claim] = []
        for token, began in self._unsettled_tokens.items():
            found = self._sql.reclaim(conn, worker_id=self.id, token=token)
            self._leased_at.update((c.key, began) for c in found)
            claims += found
        if claims:
            self.log.warning("claims_recovered_after_ambiguous_commit", jobs=len(claims))
        return claims

    def _after_ambiguous_cycle(
        self, outcomes: list[Outcome], token: int, started: float, error: Exception
    ) -> CycleResult:
        """Read back what a failed cycle did: its claims (by token) are kept and run, and the
        outcomes whose lease is no longer held were written (or fenced) and are not written again.
        If the database does not answer this either, the next cycle does it first."""
        self._unsettled_tokens[token] = started
        self._unsettled_keys.update(o.key for o in outcomes)
        try:
            with self.db.read() as conn:
                claims = self._settle(conn)
                held = self._sql.still_held(conn, [o.key for o in outcomes])
        except Exception:
            raise error from None
        self._unsettled_tokens.clear()
        self._unsettled_keys.clear()
        for o in outcomes:
            if o.key not in held:
                self._log_outcome(o)
        self.log.warning(
            "database_unavailable",
            during="cycle",
            error=str(error).splitlines()[0],
            claims_recovered=len(claims),
            outcomes_written=len(outcomes) - len(held),
        )
        return claims, [], [o for o in outcomes if o.key in held]

    def _write(self, outcomes: list[Outcome]) -> list[Outcome]:
        """Write outcomes in one transaction; returns those refused because the lease was lost."""
        with self.db.begin() as conn:
            return self._sql.apply_outcomes(conn, outcomes)

    def _write_one_by_one(
        self, outcomes: list[Outcome]
    ) -> tuple[list[Outcome], list[Outcome], list[Outcome]]:
        """Write each outcome in its own transaction: (written, refused, left for the next cycle).

        An outcome the database refuses is replaced by a failure saying why (the job goes to
        the dead-letter queue: its attempt ran, so it is not run again on its own). If even
        that is refused, the outcome is dropped: the job's lease is no longer renewed, it
        expires and the rescue decides, rather than the worker holding the job for ever.
        """
        written: list[Outcome] = []
        refused: list[Outcome] = []
        for i, outcome in enumerate(outcomes):
            try:
                lost = self._write([outcome])
            except Exception as exc:
                if is_transient(exc):
                    return written, refused, outcomes[i:]
                outcome = unstorable(outcome, exc)
                try:
                    lost = self._write([outcome])
                except Exception as again:
                    if is_transient(again):
                        return written, refused, outcomes[i:]
                    job = outcome.claim.job
                    self.log.error(
                        "outcome_not_written", job_id=job.id, task=job.task, error=_first_line(again)
                    )
                    continue
            (refused if lost else written).append(outcome)
        return written, refused, []

    def _claim_limited(
        self, conn: Connection, slots: dict[str, int], taken: list[Claim], token: int
    ) -> list[Claim]:
        """Claim jobs under global limits: only what can start now (no prefetch), as the limits allow."""
        free = self.opts.concurrency - len(self._inflight) - len(self._buffer) - len(taken)
        want = min(free, sum(slots.values()) - len(taken))
        if want <= 0 or time.monotonic() < self._limited_retry_at:
            return []
        per_queue = Counter(c.job.queue for c in taken)
        local_caps = {q: slots.get(q, 0) - per_queue[q] for q, n in self.opts.queues.items() if n is not None}
        self._limited_wake_at = None
        claimed, opens_in = self._sql.claim_limited(
            conn,
            worker_id=self.id,
            queues=list(self.opts.queues),
            tasks=self._tasks,
            limit=want,
            local_caps=local_caps,
            token=token,
        )
        # Each try locks the limit rows: until a notification says a place is free (or the
        # next rate window opens, or a poll interval passes) the cycles of other queues skip it.
        if opens_in is not None:
            self._limited_wake_at = time.monotonic() + opens_in + self.WINDOW_MARGIN
            self._limited_retry_at = self._limited_wake_at
        elif not claimed:
            self._limited_retry_at = time.monotonic() + self.opts.poll_interval
        return claimed

    #: Wake this long after a rate window's opening, so the database clock has passed it too.
    WINDOW_MARGIN = 0.002

    def _sync_limits(self) -> None:
        """Store the limits our tasks declare, then learn whether any limit concerns us."""
        self._limit_store.sync_code(
            {name: self.app.registry.get(name).declared_limits for name in self._tasks}
        )
        self._refresh_limits()

    def _refresh_limits(self) -> None:
        keys = self._limit_store.applies_to(self.opts.queues, self._tasks)
        self._limited = bool(keys)
        if any(kind == "task" for kind, _ in keys):
            self._limited_queues = set(self.opts.queues)
        else:
            self._limited_queues = {name for _, name in keys}

    def _start_buffered(self) -> None:
        """Start buffered claims while slots are free; a claim whose lease may have run out
        (not renewed for three quarters of a lease) is given back instead of started."""
        self._trim_buffer()
        while self._buffer and len(self._inflight) < self.opts.concurrency and not self._stopping:
            claim = self._buffer.popleft()
            leased_at = self._leased_at.pop(claim.key, None)
            if leased_at is None or time.monotonic() - leased_at > 0.75 * self.opts.lease_seconds:
                self.log.warning("buffered_job_lease_stale", job_id=claim.job.id, task=claim.job.task)
                self._outcomes.append(Outcome(claim, "returned", 0.0))
                continue
            self._start(claim)

    #: Prefetched claims that would wait longer than this to start are given back.
    TRIM_AFTER_SECONDS = 0.5

    def _trim_buffer(self) -> None:
        """Give back the prefetched claims (the last ones) that the pool would not start within
        `TRIM_AFTER_SECONDS` at the jobs' recent duration (and beyond twice what the prefetch now
        wants, plus one per slot): the buffer was sized for very short jobs (up to
        `PREFETCH_PER_SLOT` per slot), and a burst of longer ones would otherwise be held here
        while another worker idles. The time bound keeps a few milliseconds' jitter in a short
        job's average from giving back claims only to claim them again (which halved the rate
        of no-op jobs)."""
        if self._stopping or len(self._buffer) <= self.opts.concurrency:
            return
        per_job = max(self._avg_duration if self._avg_duration is not None else 0.01, 1e-4)
        startable = int(self.TRIM_AFTER_SECONDS / per_job) * self.opts.concurrency
        keep = self.opts.concurrency + max(2 * self._prefetch(), startable)
        while len(self._buffer) > keep:
            claim = self._buffer.pop()
            self._leased_at.pop(claim.key, None)
            self._outcomes.append(Outcome(claim, "returned", 0.0))

    def _return_buffer(self) -> None:
        """Shutdown: give back prefetched jobs that never started."""
        while self._buffer:
            claim = self._buffer.popleft()
            self._leased_at.pop(claim.key, None)
            self._outcomes.append(Outcome(claim, "returned", 0.0))

    def _work_remaining(self) -> bool:
        """Burst mode goes on while a job of its queues is runnable now or within BURST_HORIZON."""
        query = leases.runnable_soon(self.db, self.opts.queues, self._tasks, self.BURST_HORIZON)
        with self.db.read() as conn:
            return conn.execute(query).first() is not None

    #: Burst mode waits for retries due within this many seconds, not for later ones.
    BURST_HORIZON = 5.0

    def _seconds_until_due(self) -> float | None:
        with self.db.read() as conn:
            due = leases.next_due(self.db, conn, list(self.opts.queues))
        if due is None:
            return None
        return (due - datetime.now(UTC)).total_seconds()

    def _may_claim(self) -> bool:
        """No claiming while a host gate (memory, CPU) or an app's own gate is closed."""
        return all(gate() for gate in [*self._gates, *self.app._claim_gates])

    # ------------------------------------------------------------ running
    def _start(self, claim: Claim) -> None:
        key = (claim.job.id, claim.token)
        running = _Running(claim, time.monotonic())
        self._inflight[key] = running
        task = self.app.registry.get(claim.job.task)
        if task.isolation == "process":
            running.task = asyncio.ensure_future(self._supervise(key, running, task))
        elif task.is_async:
            self._start_async(key, running, task)
        else:
            self._start_sync(key, running, task)

    def _begin(self, key: Key, running: _Running) -> JobContext:
        """The attempt's progress report, context and tracing span; returns the context."""
        job = running.claim.job
        report = running.report = ProgressReport(job.id, job.attempt, running.claim.token)
        self._reports[key] = report
        running.attempt = Attempt(job, self.id)
        if self._debug_on:
            self.log.debug("job_running", job_id=job.id, task=job.task, attempt=job.attempt)
        return JobContext(
            job.id,
            job.task,
            job.queue,
            job.attempt,
            job.max_attempts + job.snoozes,  # snoozed attempts do not count
            job.schedule_id,
            job.fire_time,
            self.id,
            report,
        )

    def _end(
        self, key: Key, running: _Running, outcome: Outcome | None, caught: BaseException | None
    ) -> None:
        """The attempt is over: close its report and span, and queue its outcome for writing."""
        assert running.report is not None and running.attempt is not None
        self._inflight.pop(key, None)
        self._reports.pop(key, None)
        running.report.close()
        if outcome is not None and outcome.kind == "snoozed":
            caught = None  # a snooze is the task's request, not an error of the attempt's span
        running.attempt.end(
            outcome.kind if outcome else "cancelled", outcome.error if outcome else None, caught
        )
        if outcome is not None:
            outcome.metadata = running.report.snapshot() or {}
            self._outcomes.append(outcome)
        if self._wake is not None:
            self._wake.set()

    def _returned(self, running: _Running, result: Any) -> Outcome:
        """The outcome of an attempt whose task returned `result`."""
        elapsed = self._elapsed(running)
        avg = self._avg_duration
        self._avg_duration = elapsed if avg is None else 0.8 * avg + 0.2 * elapsed
        why = result_problem(result, self.app.settings.result_max_bytes)
        if why is None:
            return Outcome(running.claim, "completed", elapsed, result=result)
        return self._result_not_stored(running.claim, elapsed, why)

    def _raised(self, running: _Running, task: Task, exc: BaseException) -> Outcome:
        """The outcome of an attempt whose task raised `exc`."""
        if isinstance(exc, Snooze):
            return self._snoozed(running, exc)
        if isinstance(exc, TimeoutError | JobTimeout):
            error = JobTimeout(f"attempt ran past its timeout of {running.claim.job.timeout:g}s")
            return self._failure(running, task, error, "timeout")
        return self._failure(running, task, exc)

    def _cancelled(self, running: _Running) -> Outcome | None:
        """The outcome of an attempt stopped by shutdown (released) or by a lost lease (none)."""
        job = running.claim.job
        if running.released and self._thread_still_runs(running):
            # handed back only once this process (and so the thread) is gone: the lease
            # lapses and a rescue makes it available; the attempt is given back now
            self.log.warning("job_left_until_exit", job_id=job.id, task=job.task, attempt=job.attempt)
            return Outcome(running.claim, "left_running", self._elapsed(running))
        if running.released:
            return Outcome(running.claim, "released", self._elapsed(running))
        return None

    async def _supervise(self, key: Key, running: _Running, task: Task) -> None:
        """Run a task in a child process, awaited by an asyncio task of its own."""
        ctx = self._begin(key, running)
        assert running.attempt is not None
        outcome: Outcome | None = None
        caught: BaseException | None = None
        try:
            result = await self._run_process(task, ctx, running, running.attempt)
            outcome = self._returned(running, result)
        except asyncio.CancelledError:
            if not (running.released or running.fenced):
                raise
            outcome = self._cancelled(running)
        except Exception as exc:
            outcome, caught = self._raised(running, task, exc), exc
        finally:
            self._end(key, running, outcome, caught)

    def _start_async(self, key: Key, running: _Running, task: Task) -> None:
        """Run an async task as one asyncio task (`_run_async`), in a copy of the worker's
        context (not that of the task whose end started it, whose variables would leak). Its
        timeout is watched by the loop's deadline heap, as a sync task's (`_watch_timeout`):
        `asyncio.wait_for` cost a second asyncio task, a future and a loop timer per job."""
        assert self._loop is not None
        run = self._run_async(key, running, task, self._begin(key, running))
        running.task = self._loop.create_task(run, context=self._context.copy())
        self._watch_timeout(key, running, running.claim.job.timeout)

    async def _run_async(self, key: Key, running: _Running, task: Task, ctx: JobContext) -> None:
        """An async task's attempt, from its call to its outcome. Any BaseException but a
        cancellation (SystemExit, KeyboardInterrupt, GeneratorExit, one of the task's own) fails
        the attempt like an exception, as in a sync task: SystemExit and KeyboardInterrupt out of
        its asyncio task would end the event loop, and the worker, with the outcomes not yet
        written; any other would leave the attempt without an outcome. Its end starts the
        next prefetched jobs at once, also while the main loop waits for a cycle."""
        assert running.attempt is not None
        job = running.claim.job
        outcome: Outcome | None = None
        caught: BaseException | None = None
        set_current_job(ctx)  # this asyncio task's own context
        try:
            with running.attempt.current():
                result = await task.func(*job.args, **job.kwargs)
            outcome = self._returned(running, result)
        except asyncio.CancelledError:
            if running.released or running.fenced:
                outcome = self._cancelled(running)
            elif running.timed_out:
                caught = TimeoutError()
                outcome = self._raised(running, task, caught)
            else:
                raise
        except BaseException as exc:  # the task's failure, as in a sync task
            outcome, caught = self._raised(running, task, exc), exc
        finally:
            if not running.left:  # else `_leave_async` ended it
                self._end(key, running, outcome, caught)
        self._context.run(self._start_buffered)  # as `_collect_finished`: in the worker's context

    def _start_sync(self, key: Key, running: _Running, task: Task) -> None:
        """Run a sync task in the thread pool without an asyncio task of its own: its end is
        handed to the event loop with the others that end meanwhile (`_collect_finished`, one
        loop wake-up per batch), and its timeout is watched by the loop (`_watch_timeout`)."""
        assert self._loop is not None
        job = running.claim.job
        ctx = self._begin(key, running)
        running.item = self._pool.call(
            _call_in_thread, (task.func, job.args, job.kwargs, ctx, running.attempt), self._sync_finished, key
        )
        running.definition = task
        self._watch_timeout(key, running, job.timeout)

    def _sync_finished(self, key: Key) -> None:
        """A sync task's thread returned (called in that thread): hand it to the loop, once per batch."""
        self._finished.append(key)
        if self._handoff_pending:
            return
        self._handoff_pending = True
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # loop already closed
                # in the worker's context, not this thread's: the jobs started there (the slots
                # freed take the next prefetched ones) would inherit what its tasks left set
                loop.call_soon_threadsafe(self._collect_finished, context=self._context)

    def _collect_finished(self) -> None:
        """The event loop takes the outcomes of the sync tasks that ended since the last hand-off,
        and the slots they free take the next prefetched jobs at once: also while the main loop
        waits for a cycle on the database thread (the slots idled until its answer before)."""
        self._handoff_pending = False  # before draining: a later end schedules another hand-off
        while self._finished:
            key = self._finished.popleft()
            running = self._inflight.get(key)
            if running is not None and running.item is not None and running.definition is not None:
                self._end_sync(key, running)
        self._start_buffered()

    def _end_sync(self, key: Key, running: _Running) -> None:
        """A sync task's thread is done: its result or exception becomes the outcome.

        SystemExit or KeyboardInterrupt raised in the task's thread (`sys.exit()` in a library)
        fails the attempt like any exception: a real Ctrl-C or SIGTERM reaches the worker as a
        signal, never through a task's thread, and ending the process here would lose the
        outcomes not yet written (their jobs would run again after the rescue)."""
        assert running.item is not None and running.definition is not None
        exc = running.item.error
        if exc is None:
            self._end(key, running, self._returned(running, running.item.value), None)
        else:
            self._end(key, running, self._raised(running, running.definition, exc), exc)

    def _watch_timeout(self, key: Key, running: _Running, timeout: float) -> None:
        """Time this attempt out if it still runs `timeout` s from now: one loop timer is armed
        for the earliest deadline of all (a timer per job, created and cancelled, cost 3 us).
        Ended attempts leave the heap when their deadline comes, or when it is compacted."""
        assert self._loop is not None
        at = self._loop.time() + timeout
        heapq.heappush(self._deadlines, (at, next(self._deadline_seq), key, running))
        if at < self._deadline_at:
            self._arm_deadline(at)
        if len(self._deadlines) > 2 * len(self._inflight) + 256:
            self._deadlines = [d for d in self._deadlines if self._inflight.get(d[2]) is d[3]]
            heapq.heapify(self._deadlines)

    def _arm_deadline(self, at: float) -> None:
        assert self._loop is not None
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
        self._deadline_at = at
        self._deadline_timer = self._loop.call_at(at, self._deadlines_due)

    def _deadlines_due(self) -> None:
        """The loop timer of the earliest deadline: the attempts past theirs time out."""
        assert self._loop is not None
        self._deadline_timer, self._deadline_at = None, math.inf
        now = self._loop.time()
        try:
            while self._deadlines and self._deadlines[0][0] <= now:
                _, _, key, running = heapq.heappop(self._deadlines)
                if self._inflight.get(key) is running:
                    self._timed_out(key)
        finally:  # one attempt's failing end (it raised) leaves the others' deadlines watched
            if self._deadlines:
                self._arm_deadline(self._deadlines[0][0])

    def _timed_out(self, key: Key) -> None:
        """A task ran past its timeout: an async task is cancelled (it ends as a timeout, after
        its own cleanup: `_run_async`); a sync task's thread is abandoned and the attempt fails."""
        running = self._inflight.get(key)
        if running is None:
            return
        if running.task is not None:
            running.timed_out = True
            running.task.cancel()
            return
        if running.item is None or running.definition is None:
            return
        self._stop_thread(running.item)
        error = JobTimeout(f"attempt ran past its timeout of {running.claim.job.timeout:g}s")
        self._end(key, running, self._failure(running, running.definition, error, "timeout"), TimeoutError())

    def _cancel(self, key: Key, running: _Running) -> None:
        """Stop an attempt for shutdown (`released`) or a lost lease (`fenced`)."""
        if running.task is not None:
            running.task.cancel()
            return
        if running.item is None or running.definition is None:
            return
        if running.item.done() and not running.fenced:
            self._end_sync(key, running)  # it ended before the loop took its result: keep it
            return
        self._stop_thread(running.item)
        self._end(key, running, self._cancelled(running), None)

    def _stop_thread(self, item: _Call) -> None:
        """A sync task that has not started is cancelled; one that runs has its thread abandoned."""
        if not item.cancel():
            self._abandon(item)

    async def _run_process(self, task: Task, ctx: JobContext, running: _Running, attempt: Attempt) -> Any:
        job = running.claim.job
        child = ChildProcess(
            task.func.__module__, task.func.__qualname__, job.args, job.kwargs, ctx, attempt.carrier()
        )
        running.child = child
        future, item = self._pool.submit(child.run, job.timeout)
        running.item = item
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            child.kill()
            raise

    @staticmethod
    def _thread_still_runs(running: _Running) -> bool:
        """A sync task's thread that cannot be stopped is still running it."""
        return running.child is None and running.item is not None and not running.item.done()

    def _abandon(self, item: _Call) -> None:
        if item.done():
            return
        self._pool.abandon(item)
        self._abandoned += 1
        self.log.warning("thread_abandoned", abandoned=self._abandoned, limit=self.opts.max_abandoned_threads)
        if self._abandoned >= self.opts.max_abandoned_threads and not self._restart:
            self.log.error("worker_restart_requested", abandoned=self._abandoned)
            self._restart = True
            self.stop()

    def _failure(self, running: _Running, task: Task, exc: BaseException, kind: str | None = None) -> Outcome:
        job = running.claim.job
        error = error_record(job.attempt, exc, kind)
        if isinstance(exc, ChildTaskError):
            error.update(type=exc.type_name, traceback=exc.child_traceback[-8000:])
        retry_in = None if job.out_of_attempts else task.backoff(job.attempts_counted)
        return Outcome(running.claim, "failed", self._elapsed(running), error=error, retry_in=retry_in)

    def _snoozed(self, running: _Running, snooze: Snooze) -> Outcome:
        """Run again later without spending an attempt, up to `max_snoozes` times; then the job fails."""
        job, limit = running.claim.job, self.app.settings.max_snoozes
        if job.snoozes < limit:
            error = {"type": "snoozed", "message": str(snooze)}
            return Outcome(
                running.claim, "snoozed", self._elapsed(running), retry_in=snooze.seconds, error=error
            )
        record = error_record(job.attempt, None, "snooze_limit")
        record["message"] = f"snoozed {job.snoozes} times, the limit (LEDGERFLOW_MAX_SNOOZES={limit})"
        return Outcome(running.claim, "failed", self._elapsed(running), error=record, retry_in=None)

    def _log_outcome(self, o: Outcome) -> None:
        if o.kind in _INFO_OUTCOMES and not self._info_on:
            return
        job = o.claim.job
        fields = {
            "job_id": job.id,
            "task": job.task,
            "queue": job.queue,
            "attempt": job.attempt,
            "duration": round(o.duration, 4),
        }
        if o.kind == "completed":
            self.log.info("job_completed", **fields)
        elif o.kind in ("released", "snoozed"):
            self.log.info(f"job_{o.kind}", retry_in=o.retry_in, **fields)
        elif o.kind in ("returned", "left_running"):  # given back unstarted, or at exit: not dead
            self.log.info(f"job_{o.kind}", **fields)
        elif o.retry_in is not None:
            self.log.warning(
                "job_retryable",
                error_type=(o.error or {}).get("type"),
                error=(o.error or {}).get("message"),
                retry_in=round(o.retry_in, 2),
                **fields,
            )
        else:
            self.log.error(
                "job_dead",
                error_type=(o.error or {}).get("type"),
                error=(o.error or {}).get("message"),
                **fields,
            )
            self.app.alerts.job_dead(job, o.error or {})

    def _result_not_stored(self, claim: Claim, elapsed: float, why: str) -> Outcome:
        """A return value that cannot be stored is a clear failure of the attempt; the job goes
        dead at once (its work is done: running it again would repeat its side effects)."""
        job = claim.job
        self.log.warning("result_not_stored", job_id=job.id, task=job.task, reason=why)
        record = error_record(job.attempt, None, "result_not_stored")
        record["message"] = f"the task's return value was not stored: {why}"
        return Outcome(claim, "failed", elapsed, error=record, retry_in=None)

    @staticmethod
    def _elapsed(running: _Running) -> float:
        return time.monotonic() - running.started

    def _release_all(self) -> None:
        for key, running in list(self._inflight.items()):
            if running.released or (running.task is not None and running.task.done()):
                continue
            running.released = True
            if running.child:
                running.child.kill()
            self._cancel(key, running)

    def _leave_async(self) -> None:
        """Shutdown: the async tasks still running `ASYNC_RELEASE_WAIT` s after their release
        ignore their cancellation. Each is left running as an unstoppable sync task's thread is
        (`left_running`: its attempt given back, its lease lapses once this process is gone and
        a rescue makes it available), so that the worker exits without waiting for it."""
        for key, running in list(self._inflight.items()):
            if not running.released or running.child is not None or running.task is None:
                continue
            job = running.claim.job
            self.log.warning("async_task_left_running", job_id=job.id, task=job.task, attempt=job.attempt)
            running.left = True
            self._end(key, running, Outcome(running.claim, "left_running", self._elapsed(running)), None)

    def _renewed(self, keys: set[Key], began: float) -> None:
        """A heartbeat that began at `began` renewed these buffered leases."""
        for key in keys:
            if key in self._leased_at:
                self._leased_at[key] = max(self._leased_at[key], began)

    def _fence(self, keys: set[Key]) -> None:
        """The database says we lost these leases: stop their work and drop their outcome."""
        if any(c.key in keys for c in self._buffer):
            self._buffer = deque(c for c in self._buffer if c.key not in keys)
            for key in keys:
                self._leased_at.pop(key, None)
        for key in keys:
            running = self._inflight.get(key)
            if running is None or running.fenced:
                continue
            running.fenced = True
            job = running.claim.job
            self.log.warning("lease_lost_fenced", job_id=job.id, task=job.task, attempt=job.attempt)
            if running.child:
                running.child.kill()
            self._cancel(key, running)

    # ------------------------------------------------------------ background threads
    def _heartbeat_loop(self) -> None:
        """Renew the leases this worker holds, on a thread of its own: a task that blocks the
        event loop (or a thread that cannot be stopped) cannot stop it. A job running past its
        timeout by more than a lease is not renewed but failed here, as a timeout, whatever the
        event loop believes (`_overdue`)."""
        while not self._threads_stop.wait(self.opts.heartbeat_seconds):
            began = time.monotonic()
            overdue = self._overdue(began)
            held = (
                [k for k in list(self._inflight) if k not in self._failed_overdue]
                + [c.key for c in list(self._buffer)]
                + [o.key for o in list(self._outcomes)]
            )
            try:
                with self.db.begin() as conn:
                    still = self._sql.heartbeat(conn, worker_id=self.id, held=held)
                    refused = self._sql.apply_outcomes(conn, overdue) if overdue else []
            except Exception as exc:
                self.log.warning("heartbeat_failed", error=str(exc).splitlines()[0])
                continue
            self._last_heartbeat_ok = time.monotonic()
            for outcome in overdue:
                self._failed_overdue.add(outcome.key)
                if outcome not in refused:
                    self.log.error(
                        "job_overdue_failed",
                        job_id=outcome.claim.job.id,
                        task=outcome.claim.job.task,
                        timeout=outcome.claim.job.timeout,
                        running_for=round(outcome.duration, 2),
                    )
                    self._log_outcome(outcome)
            stop = {o.key for o in overdue} - {o.key for o in refused}
            if stop and self._loop is not None:  # stop it if the loop ever runs again
                with contextlib.suppress(RuntimeError):
                    self._loop.call_soon_threadsafe(self._fence, stop)
            buffered = {c.key for c in list(self._buffer)}
            if buffered & still and self._loop is not None:
                with contextlib.suppress(RuntimeError):
                    self._loop.call_soon_threadsafe(self._renewed, buffered & still, began)
            lost = {k for k in held if k not in still and (k in self._inflight or k in buffered)}
            if lost and self._loop is not None:
                with contextlib.suppress(RuntimeError):
                    self._loop.call_soon_threadsafe(self._fence, lost)

    def _progress_loop(self) -> None:
        """Write the progress reported since the last pass, for every running job at once."""
        while not self._threads_stop.wait(self.opts.progress_seconds):
            pending = [(r, v) for r in list(self._reports.values()) if (v := r.take_pending()) is not None]
            if not pending:
                continue
            try:
                with self.db.begin() as conn:
                    refused = write_progress(conn, pending)
            except Exception as exc:
                self.log.warning("progress_write_failed", error=str(exc).splitlines()[0])
                for report, _ in pending:
                    report.write_again()
                continue
            for report in refused:  # the lease is gone (or the attempt just ended): stop listening
                report.close()

    def _overdue(self, now: float) -> list[Outcome]:
        """Timeout failures for the jobs running past their timeout plus one lease (their own
        timeout should have ended them: the event loop is blocked or the task ignores it)."""
        self._failed_overdue &= set(self._inflight)
        overdue: list[Outcome] = []
        for key, running in list(self._inflight.items()):
            job = running.claim.job
            if key in self._failed_overdue or now - running.started <= job.timeout + self.opts.lease_seconds:
                continue
            task = self.app.registry.get(job.task)
            error = JobTimeout(
                f"attempt ran past its timeout of {job.timeout:g}s and did not stop; failed by the heartbeat"
            )
            overdue.append(self._failure(running, task, error, "timeout"))
        return overdue

    def _index_search(self) -> None:
        index_pending(self.db, budget=0.2)

    def _maintenance_loop(self) -> None:
        suspects: dict[Key, float] = {}
        confirm = self.opts.heartbeat_seconds * 1.5
        while not self._threads_stop.wait(self.opts.rescue_interval):
            try:
                suspects = self._rescue(suspects, confirm)
                self._stage()
                for hook in self.hooks + self.app._maintenance_hooks:
                    hook()
            except Exception as exc:
                level = self.log.warning if is_transient(exc) else self.log.exception
                level("maintenance_failed", error=str(exc).splitlines()[0])

    def _rescue(self, suspects: dict[Key, float], confirm: float) -> dict[Key, float]:
        """Rescue jobs whose lease stayed expired for `confirm` s while heartbeats could be written.

        A holder that runs on this host and whose process is running is left alone (its
        heartbeat is late, not absent) for up to ten leases.
        """
        with self.db.read() as conn:
            expired = leases.expired_leases(self.db, conn)
        now = time.monotonic()
        patience = 10 * self.opts.lease_seconds
        ready: list[Key] = []
        for job_id, token, owner in expired:
            first = suspects.get((job_id, token), now)
            if now - first < confirm or self._last_heartbeat_ok <= first:
                continue
            if now - first < patience and local_owner_running(owner):
                continue
            ready.append((job_id, token))
        suspects = {(j, t): suspects.get((j, t), now) for j, t, _ in expired}
        if ready:
            with self.db.begin() as conn:
                rescued = leases.rescue(self.db, conn, ready)
                self.app.store.notify(conn, [j.queue for j in rescued])
            for job in rescued:
                dead = job.out_of_attempts
                self.log.warning(
                    "job_rescued",
                    job_id=job.id,
                    task=job.task,
                    attempt=job.attempt,
                    lost_worker=job.worker_id,
                    new_state="dead" if dead else "available",
                )
                if dead:
                    self.app.alerts.job_dead(job, {"type": "lease_expired", "message": "worker vanished"})
            if rescued:
                self.wake()
        return suspects

    def _stage(self) -> None:
        with self.db.read() as conn:
            if not leases.has_stageable(self.db, conn):
                return
        with self.db.begin() as conn:
            queues = leases.stage(self.db, conn)
            self.app.store.notify(conn, queues)
        if queues:
            self.wake()


def unstorable(outcome: Outcome, error: BaseException) -> Outcome:
    """The failure recorded instead of an outcome the database refused to store."""
    job = outcome.claim.job
    _, why = storable_result(outcome.result)
    record = error_record(job.attempt, None, "unstorable_outcome")
    record["message"] = (
        f"the database could not store the outcome of this attempt ({outcome.kind}): "
        f"{why or _first_line(error)}"
    )
    return Outcome(outcome.claim, "failed", outcome.duration, error=record, retry_in=None)


#: Outcomes logged at INFO (the others at WARNING or ERROR, and a dead job also raises an alert).
_INFO_OUTCOMES = frozenset(("completed", "released", "snoozed", "returned", "left_running"))


def _enabled(log: Any, level: int) -> bool:
    """Whether `log` writes lines of `level` (a logger that cannot tell: yes)."""
    is_enabled_for = getattr(log, "is_enabled_for", None)
    return True if is_enabled_for is None else bool(is_enabled_for(level))


def _first_line(error: BaseException) -> str:
    lines = str(error).splitlines()
    return lines[0] if lines else type(error).__name__


def _run_loop(main: Coroutine[Any, Any, T], wait: float) -> T:
    """`asyncio.run(main)`, except that the tasks still pending when `main` returns are cancelled
    and waited for `wait` s at most (`asyncio.run` waits for them without end: an async task
    that ignores its cancellation would keep the worker from exiting)."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        return loop.run_until_complete(main)
    finally:
        try:
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.wait(pending, timeout=wait))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            asyncio.set_event_loop(None)
            loop.close()


def _call_in_thread(
    func: Callable[..., Any], args: list[Any], kwargs: dict[str, Any], ctx: JobContext, attempt: Attempt
) -> Any:
    token = set_current_job(ctx)
    try:
        with attempt.current():
            return func(*args, **kwargs)
    finally:
        reset_current_job(token)
