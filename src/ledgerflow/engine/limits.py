"""Limits shared by every worker: global concurrency and rate limits per queue or task type.

A limit is a row of `job_limits`. The ordinary claim skips every job whose queue or task has
a row (`NOT_LIMITED`), so unlimited queues keep their one-statement claim; jobs under a limit
are claimed by `claim_limited`, which in one transaction

1. locks the limit rows of the worker's queues and tasks (`FOR UPDATE`, in key order: two
   workers never deadlock; on SQLite `BEGIN IMMEDIATE` already serialises every claim),
2. counts the running jobs of each limited queue and task and prunes each rate window,
3. claims at most what every limit still allows, and records the starts in the windows.

So across all processes no more than `concurrency` jobs of a queue (or task) are running,
and no more than `rate_limit` are started in any `rate_period` seconds. A job over a limit
stays available: it spends no attempt and runs when the limit allows.

A claim handed back before its task started (`forget_starts`) gives its place in the rate
window back. Waiting workers are woken rather than left to poll: the end of a limited
attempt notifies its queue, and a claim reports when the next rate window opens
(`LimitedPick.opens_in`), so a worker sleeps exactly until then.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, and_, delete, func, literal, or_, select, text, tuple_, update

from ledgerflow.db.database import Database
from ledgerflow.db.tables import job_limits, jobs
from ledgerflow.engine.claim_order import ORDER, first_in_claim_order
from ledgerflow.engine.states import JobState
from ledgerflow.engine.store import dialect_insert
from ledgerflow.errors import BadInput
from ledgerflow.names import check_name

S = JobState
KINDS = ("queue", "task")

#: Jobs of a queue or task without any limit (the ordinary claim takes only these). `NOT IN`
#: (names are a primary key: never NULL), not `NOT EXISTS`: PostgreSQL made the latter an anti
#: join that, once ANALYZE had seen the table empty, it estimated to keep one row of all the
#: waiting jobs, and so sorted every one of them for a claim of 20 (0.16-0.47 s at a 100,000-job
#: backlog) instead of reading the claim index in order. See also `leases.NOT_PAUSED`.
NOT_LIMITED = and_(
    jobs.c.queue.not_in(select(job_limits.c.name).where(job_limits.c.kind == "queue")),
    jobs.c.task.not_in(select(job_limits.c.name).where(job_limits.c.kind == "task")),
)

_UNITS = {"s": 1.0, "second": 1.0, "m": 60.0, "minute": 60.0, "h": 3600.0, "hour": 3600.0, "d": 86400.0}
_UNITS["day"] = 86400.0
_RATE = re.compile(r"\s*(\d+)\s*/\s*(\d*(?:\.\d+)?)\s*([a-z]+)\s*")


def parse_rate(value: str | tuple[int, float]) -> tuple[int, float]:
    """`"60/minute"`, `"10/30s"`, `"1000/hour"` or `(60, 60.0)` → (starts, period in seconds)."""
    if isinstance(value, tuple):
        starts, period = value
    else:
        match = _RATE.fullmatch(value.lower()) if isinstance(value, str) else None
        if match is None or match.group(3) not in _UNITS:
            raise BadInput(
                f"rate limit {value!r} is not N/period: use e.g. 60/minute, 10/30s, 1000/hour, 5/second"
            )
        starts = int(match.group(1))
        period = float(match.group(2) or 1) * _UNITS[match.group(3)]
    if isinstance(starts, bool) or not isinstance(starts, int) or not 1 <= starts <= 100_000:
        raise BadInput(f"rate limit must allow 1..100000 starts per period, got {starts!r}")
    if not (isinstance(period, int | float) and math.isfinite(period) and 0.001 <= period <= 86400 * 7):
        raise BadInput(f"rate limit period must be 0.001 s .. 7 days, got {period!r}")
    return starts, float(period)


def format_rate(starts: int | None, period: float | None) -> str | None:
    """(60, 60.0) → "60/minute"; None without a rate limit."""
    if starts is None or period is None:
        return None
    for unit, seconds in (("day", 86400.0), ("hour", 3600.0), ("minute", 60.0), ("second", 1.0)):
        if period == seconds:
            return f"{starts}/{unit}"
    return f"{starts}/{period:g}s"


def check_concurrency(value: int | None) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 100_000:
        raise BadInput(f"concurrency limit must be an integer 1..100000, got {value!r}")
    return value


@dataclass(frozen=True)
class Limit:
    """The limits of one queue or task type, as stored."""

    kind: str  # 'queue' | 'task'
    name: str
    concurrency: int | None
    rate_limit: int | None
    rate_period: float | None
    set_by: str  # 'user' | 'code'
    updated_at: datetime

    @property
    def rate(self) -> str | None:
        return format_rate(self.rate_limit, self.rate_period)

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "concurrency": self.concurrency,
            "rate": self.rate,
            "rate_limit": self.rate_limit,
            "rate_period_seconds": self.rate_period,
            "set_by": self.set_by,
            "updated_at": self.updated_at.isoformat(),
        }


class LimitStore:
    """Set, clear and list limits (operators); sync the limits tasks declare in code (workers)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def set(
        self,
        kind: str,
        name: str,
        *,
        concurrency: int | None = None,
        rate: str | tuple[int, float] | None = None,
        by: str = "user",
    ) -> Limit:
        """Give a queue or task these limits (replacing its previous ones); at least one is required."""
        _check_kind(kind)
        check_name(name, kind)
        concurrency = check_concurrency(concurrency)
        starts, period = parse_rate(rate) if rate is not None else (None, None)
        if concurrency is None and starts is None:
            raise BadInput(f"give {kind} {name} a concurrency limit, a rate limit or both (or clear it)")
        values = {
            "concurrency": concurrency,
            "rate_limit": starts,
            "rate_period": period,
            "set_by": by,
            "updated_at": datetime.now(UTC),
        }
        with self.db.begin() as conn:
            conn.execute(
                dialect_insert(self.db, job_limits)
                .values(kind=kind, name=name, recent_starts=[], **values)
                .on_conflict_do_update(index_elements=["kind", "name"], set_=values)
            )
            return self._get(conn, kind, name)  # type: ignore[return-value]

    def clear(self, kind: str, name: str) -> bool:
        """Remove every limit of a queue or task; returns False if it had none."""
        _check_kind(kind)
        check_name(name, kind)
        with self.db.begin() as conn:
            deleted = conn.execute(
                delete(job_limits).where(job_limits.c.kind == kind, job_limits.c.name == name)
            ).rowcount
            if deleted and not self.db.is_sqlite:  # wake workers: the queue's jobs are ordinary again
                column = jobs.c.queue if kind == "queue" else jobs.c.task
                queues = conn.execute(
                    select(jobs.c.queue).where(column == name, jobs.c.state.in_([S.AVAILABLE])).distinct()
                ).scalars()
                for queue in sorted(set(queues)):
                    conn.execute(select(func.pg_notify("ledgerflow_jobs", queue)))
            return bool(deleted)

    def list(self, conn: Connection | None = None) -> list[Limit]:
        if conn is None:
            with self.db.read() as fresh:
                return self.list(fresh)
        rows = conn.execute(select(job_limits).order_by(job_limits.c.kind, job_limits.c.name))
        return [_limit(r) for r in rows]

    def get(self, kind: str, name: str) -> Limit | None:
        with self.db.read() as conn:
            return self._get(conn, kind, name)

    @staticmethod
    def _get(conn: Connection, kind: str, name: str) -> Limit | None:
        row = conn.execute(
            select(job_limits).where(job_limits.c.kind == kind, job_limits.c.name == name)
        ).first()
        return _limit(row) if row is not None else None

    def sync_code(self, declared: Mapping[str, tuple[int | None, tuple[int, float] | None]]) -> None:
        """Store the limits tasks declare in code (`@app.task(global_limit=..., rate_limit=...)`).

        `declared` maps every registered task to its (concurrency, rate). A limit an operator
        set (`set_by='user'`) is left alone; a code limit a task no longer declares is removed.
        """
        if not declared:
            return
        with self.db.begin() as conn:
            stored = {
                r.name: r
                for r in conn.execute(
                    select(job_limits).where(
                        job_limits.c.kind == "task", job_limits.c.name.in_(list(declared))
                    )
                )
            }
            for name, (concurrency, rate) in sorted(declared.items()):
                row = stored.get(name)
                if row is not None and row.set_by != "code":
                    continue
                if concurrency is None and rate is None:
                    if row is not None:
                        conn.execute(
                            delete(job_limits).where(
                                job_limits.c.kind == "task",
                                job_limits.c.name == name,
                                job_limits.c.set_by == "code",
                            )
                        )
                    continue
                starts, period = rate if rate is not None else (None, None)
                if row is not None and (row.concurrency, row.rate_limit, row.rate_period) == (
                    concurrency,
                    starts,
                    period,
                ):
                    continue
                values = {
                    "concurrency": concurrency,
                    "rate_limit": starts,
                    "rate_period": period,
                    "set_by": "code",
                    "updated_at": datetime.now(UTC),
                }
                conn.execute(
                    dialect_insert(self.db, job_limits)
                    .values(kind="task", name=name, recent_starts=[], **values)
                    .on_conflict_do_update(
                        index_elements=["kind", "name"],
                        set_=values,
                        where=job_limits.c.set_by == "code",
                    )
                )

    def applies_to(self, queues: Iterable[str], tasks: Iterable[str]) -> list[Key]:
        """The limits (kind, name) naming one of these queues or tasks (a worker asks, off the
        claim path); empty when none does."""
        with self.db.read() as conn:
            rows = conn.execute(
                select(job_limits.c.kind, job_limits.c.name).where(_relevant(list(queues), list(tasks)))
            )
            return sorted((r.kind, r.name) for r in rows)


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise BadInput(f"kind must be 'queue' or 'task', got {kind!r}")


def _limit(row: Any) -> Limit:
    m = row._mapping
    return Limit(
        kind=m["kind"],
        name=m["name"],
        concurrency=m["concurrency"],
        rate_limit=m["rate_limit"],
        rate_period=m["rate_period"],
        set_by=m["set_by"],
        updated_at=m["updated_at"],
    )


def _relevant(queues: Sequence[str], tasks: Sequence[str]) -> Any:
    return or_(
        and_(job_limits.c.kind == "queue", job_limits.c.name.in_(queues)),
        and_(job_limits.c.kind == "task", job_limits.c.name.in_(tasks)),
    )


Key = tuple[str, str]  # (kind, name)


@dataclass(frozen=True)
class LimitedPick:
    """What a limited claim may take now: job ids, their start (database clock), and in how
    many seconds the first exhausted rate window has room again (None: no window is full)."""

    ids: list[int]
    started: datetime
    opens_in: float | None


#: The running jobs, the state written out: as a parameter, PostgreSQL's generic plan of the
#: count of the limited queues' running jobs (a prepared statement) read 280,000-325,000 rows
#: of a 1,000,000-job table instead of the few running.
_RUNNING = text("jobs.state = 'running'")

#: A rate window's start and a job's stored start match within this (the stored clock's rounding).
_SAME_START = 1e-3


def limited_candidates(
    db: Database,
    conn: Connection,
    *,
    queues: Sequence[str],
    tasks: Sequence[str],
    want: int,
    local_caps: Mapping[str, int],
    not_blocked: Any,
) -> LimitedPick:
    """Lock the limits of these queues and tasks and pick the ids of the jobs they allow now.

    `local_caps` are this worker's own per-queue limits (`--queues mail=2`), left to fill;
    `not_blocked` is the claim's other conditions (due, dependencies met, not paused).
    Returns the ids, the database time of their start (as recorded in the rate windows) and
    when the next full rate window opens.
    """
    if db.is_sqlite:
        now_epoch: Any = literal(time.time())
    else:
        now_epoch = func.extract("epoch", func.now())
    rows = conn.execute(
        select(job_limits, now_epoch.label("now_epoch"))
        .where(_relevant(queues, tasks))
        .order_by(job_limits.c.kind, job_limits.c.name)
        .with_for_update()
    ).all()
    now = float(rows[0].now_epoch) if rows else time.time()
    started = datetime.fromtimestamp(now, UTC)
    if not rows:
        return LimitedPick([], started, None)
    limited = {(r.kind, r.name): r for r in rows}
    budget: dict[Key, float] = {}
    windows: dict[Key, list[float]] = {}
    for key, r in limited.items():
        room = math.inf
        if r.rate_limit is not None and r.rate_period is not None:
            window = [t for t in r.recent_starts if t > now - r.rate_period]
            windows[key] = window
            room = r.rate_limit - len(window)
        budget[key] = room
    limited_queues = [n for k, n in limited if k == "queue"]
    limited_tasks = [n for k, n in limited if k == "task"]
    counted = {key: r.concurrency for key, r in limited.items() if r.concurrency is not None}
    if counted:
        running = conn.execute(
            select(jobs.c.queue, jobs.c.task, func.count())
            .where(_RUNNING, or_(jobs.c.queue.in_(limited_queues), jobs.c.task.in_(limited_tasks)))
            .group_by(jobs.c.queue, jobs.c.task)
        ).all()
        for queue, task, n in running:
            for key in (("queue", queue), ("task", task)):
                if key in counted:
                    counted[key] -= n
        for key, room in counted.items():
            budget[key] = min(budget[key], room)
    for queue, cap in local_caps.items():  # this worker's own cap, limited globally or not
        budget[("queue", queue)] = min(budget.get(("queue", queue), math.inf), cap)
    picked: list[int] = []
    read_on: list[Any] = []  # after the first round: the jobs not read yet
    while len(picked) < want:  # each round claims at least its first candidate
        open_tasks = [t for t in tasks if budget.get(("task", t), 1) > 0]
        walks = []
        for queue in dict.fromkeys(queues):
            if budget.get(("queue", queue), 1) <= 0:
                continue
            # the queue's jobs under a limit: all of a limited queue, those of limited tasks else
            held = ("queue", queue) in limited
            mine = [t for t in open_tasks if held or ("task", t) in limited]
            if mine:
                walks.append(and_(jobs.c.queue == queue, jobs.c.task.in_(mine), not_blocked, *read_on))
        if not walks:
            break
        n = want - len(picked)
        query = first_in_claim_order(db, walks, n, (jobs.c.queue, jobs.c.task, *ORDER))
        candidates = conn.execute(query).all()
        for queue, task, _, _, job_id in candidates:
            keys = [k for k in (("queue", queue), ("task", task)) if k in budget]
            if all(budget[k] > 0 for k in keys):
                for k in keys:
                    budget[k] -= 1
                    if k in windows:
                        windows[k].append(now)
                picked.append(int(job_id))
        if len(candidates) < n:
            break  # every job the limits left open was read
        # Some were passed over (else `want` is reached), each for a limit now full: the next
        # round leaves that limit's jobs out, and the jobs picked.
        read_on = [_after(candidates[-1][2:]) if db.is_sqlite else jobs.c.id.not_in(picked)]
    for key, window in windows.items():
        if window != limited[key].recent_starts:
            conn.execute(
                update(job_limits)
                .where(job_limits.c.kind == key[0], job_limits.c.name == key[1])
                .values(recent_starts=window)
            )
    return LimitedPick(picked, started, _opens_in(limited, windows, now))


def _after(last: Sequence[Any]) -> Any:
    """SQLite: the jobs after the last candidate in claim order (`last`: its `ORDER` values).
    Each walk then reads on from there (its index range), so a job ahead that a full limit holds
    back is read once per claim, not again at each round (5,000 such jobs: 221 → 136 thousand
    steps for a claim of three rounds). Not on PostgreSQL: the planner estimated the row
    comparison to keep one row and walked the claim index past all of them, where without it
    it read the other tasks' few jobs through ix_jobs_state_task_queue and sorted them."""
    return tuple_(*ORDER) > tuple_(*last, types=[c.type for c in ORDER])


def _opens_in(limited: Mapping[Key, Any], windows: Mapping[Key, list[float]], now: float) -> float | None:
    """Seconds until the first full rate window has room for one more start (None: none is full)."""
    waits = []
    for key, window in windows.items():
        r = limited[key]
        if len(window) >= r.rate_limit:  # the oldest start that must leave before one more fits
            waits.append(sorted(window)[len(window) - r.rate_limit] + r.rate_period - now)
    return max(0.0, min(waits)) if waits else None


def forget_starts(conn: Connection, given_back: Sequence[tuple[str, str, datetime | None]]) -> None:
    """Take out of the rate windows the starts of claims handed back before their task ran.

    `given_back` holds each job's (queue, task, started_at as claimed). A rescued, released or
    snoozed attempt did start its task: it keeps its place in the window.
    """
    drop: dict[Key, list[float]] = {}
    for queue, task, started in given_back:
        if started is None:
            continue
        for key in (("queue", queue), ("task", task)):
            drop.setdefault(key, []).append(started.timestamp())
    if not drop:
        return
    rows = conn.execute(
        select(job_limits)
        .where(
            or_(*(and_(job_limits.c.kind == k, job_limits.c.name == n) for k, n in sorted(drop))),
            job_limits.c.rate_limit.is_not(None),
        )
        .order_by(job_limits.c.kind, job_limits.c.name)
        .with_for_update()
    ).all()
    for r in rows:
        window = list(r.recent_starts)
        for start in drop[(r.kind, r.name)]:
            match = min(window, key=lambda t: abs(t - start), default=None)
            if match is not None and abs(match - start) <= _SAME_START:
                window.remove(match)
        if len(window) != len(r.recent_starts):
            conn.execute(
                update(job_limits)
                .where(job_limits.c.kind == r.kind, job_limits.c.name == r.name)
                .values(recent_starts=window)
            )


def running_by_limit(db: Database) -> dict[Key, int]:
    """Running jobs per limited queue and task (for listings)."""
    with db.read() as conn:
        out: dict[Key, int] = {}
        for kind, column in (("queue", jobs.c.queue), ("task", jobs.c.task)):
            rows = conn.execute(
                select(column, func.count())
                .where(
                    jobs.c.state == S.RUNNING,
                    column.in_(select(job_limits.c.name).where(job_limits.c.kind == kind)),
                )
                .group_by(column)
            )
            out.update({(kind, name): int(n) for name, n in rows})
        return out
