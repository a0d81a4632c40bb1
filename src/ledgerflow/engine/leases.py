"""Worker-side SQL: claiming jobs, recording outcomes, renewing and rescuing leases.

A claim gives each job a lease: a random token plus an expiry judged by the database
clock. Every later write about the attempt names `(id, lease_token)` and requires
`state = 'running'`, so a worker that lost its lease (rescued, cancelled, partitioned)
has its late writes refused: that is the fence.
"""

from __future__ import annotations

import json
import secrets
import time
import traceback as tb
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Connection,
    Float,
    Select,
    and_,
    any_,
    bindparam,
    cast,
    column,
    delete,
    exists,
    false,
    func,
    insert,
    literal,
    or_,
    select,
    true,
    tuple_,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.sql.dml import Insert
from sqlalchemy.sql.elements import BindParameter

from ledgerflow.db.database import Database
from ledgerflow.db.tables import (
    CLAIM_INDEX,
    CLAIMABLE_SQL,
    STATE_INDEX,
    job_dependencies,
    job_executions,
    jobs,
    pauses,
    workers,
)
from ledgerflow.db.types import UTCDateTime
from ledgerflow.engine.claim_order import first_in_claim_order
from ledgerflow.engine.jobs import JOB_STATES, Job, JobError
from ledgerflow.engine.limits import NOT_LIMITED, forget_starts, limited_candidates
from ledgerflow.engine.states import (
    BURY,
    CLAIM,
    COMPLETE,
    FAIL,
    LEASED,
    RELEASE,
    RESCUE,
    RESCUE_DEAD,
    RETURN,
    SNOOZE,
    STAGE,
    JobState,
    Move,
)
from ledgerflow.engine.store import allowed, cancel_dependents, in_states, notify_queues

if TYPE_CHECKING:  # psycopg is imported by PostgreSQL workers only
    from ledgerflow.db.postgres import DriverStatement

S = JobState
_parent = jobs.alias("parent")  # Core alias: the ORM (0.1 s of import) is never loaded

_PARENTS = job_dependencies.join(_parent, _parent.c.id == job_dependencies.c.depends_on_id)
#: Jobs whose every dependency has completed (cheap for the common job without any).
DEPENDENCIES_MET = or_(
    jobs.c.has_dependencies == false(),
    ~exists(
        select(1)
        .select_from(_PARENTS)
        .where(job_dependencies.c.job_id == jobs.c.id, _parent.c.state != S.COMPLETED)
    ),
)
#: Jobs of a queue or task not paused; `NOT IN` for the reason given at `limits.NOT_LIMITED`.
NOT_PAUSED = and_(
    jobs.c.queue.not_in(select(pauses.c.name).where(pauses.c.kind == "queue")),
    jobs.c.task.not_in(select(pauses.c.name).where(pauses.c.kind == "task")),
)


#: The columns a claim returns, in this order (`_claimed_job` unpacks them by position).
CLAIM_COLUMNS = (
    "id", "task", "queue", "priority", "state", "args", "kwargs", "attempt", "max_attempts",
    "snoozes", "timeout", "unique_key", "scheduled_at", "created_at", "started_at", "finished_at",
    "errors", "result", "state_reason", "schedule_id", "fire_time", "worker_id", "trace_context",
)  # fmt: skip
_RETURNED = [jobs.c[name] for name in CLAIM_COLUMNS]


def _claimed_job(row: Any) -> Job:
    """A claimed job from a row of `CLAIM_COLUMNS`, read by position: half the CPU of
    `Job.from_row`'s lookups by name (5.2 -> 2.4 us per job), paid by every job run."""
    (job_id, task, queue, priority, state, args, kwargs, attempt, max_attempts, snoozes, timeout,
     unique_key, scheduled_at, created_at, started_at, finished_at, errors, result, state_reason,
     schedule_id, fire_time, worker_id, trace_context) = row[:_CLAIM_WIDTH]  # fmt: skip
    return Job(
        int(job_id), task, queue, int(priority), JOB_STATES[state], list(args or []), dict(kwargs or {}),
        int(attempt), int(max_attempts), int(snoozes), float(timeout), unique_key, scheduled_at,
        created_at, started_at, finished_at, [JobError(**e) for e in (errors or [])], result,
        state_reason, schedule_id, fire_time, worker_id, trace_context,
    )  # fmt: skip


_CLAIM_WIDTH = len(CLAIM_COLUMNS)


def new_token() -> int:
    return secrets.randbits(62)


def error_record(attempt: int, error: BaseException | None, kind: str | None = None) -> dict[str, Any]:
    """How a failed attempt is kept on the job (`errors`) — type, message, traceback."""
    return {
        "attempt": attempt,
        "type": kind or (type(error).__name__ if error else "error"),
        "message": str(error) if error else "",
        "traceback": "".join(tb.format_exception(error))[-8000:] if error else None,
        "at": datetime.now(UTC).isoformat(),
    }


@dataclass(frozen=True)
class Claim:
    """A job this worker now holds, with its fencing token."""

    job: Job
    token: int
    limited: bool = False  # claimed under a global limit: its end frees a place

    @property
    def key(self) -> tuple[int, int]:
        return (self.job.id, self.token)


@dataclass
class Outcome:
    """How an attempt ended, waiting to be written (in batches) by the worker."""

    claim: Claim
    kind: Literal["completed", "failed", "released", "returned", "snoozed", "left_running"]
    duration: float
    result: Any = None
    error: dict[str, Any] | None = None
    retry_in: float | None = None  # for 'failed': None means dead
    metadata: dict[str, Any] = field(default_factory=dict)
    finished: float = field(default_factory=time.monotonic)

    @property
    def key(self) -> tuple[int, int]:
        return (self.claim.job.id, self.claim.token)


class LeaseSQL:
    """The worker's hot-path statements, built once and reused with fresh parameters.

    Building SQLAlchemy statements costs more than running them on SQLite, so claim,
    completion, execution rows and heartbeat are prebuilt here; the database clock is a
    bound parameter (SQLite) or `now()` (PostgreSQL) taken at execution time.
    """

    def __init__(self, db: Database, lease_seconds: float) -> None:
        self.db = db
        lease = {
            "state": CLAIM.target,
            "attempt": jobs.c.attempt + 1,
            "started_at": db.now(),
            "worker_id": bindparam("worker"),
            "lease_token": bindparam("token"),
            "lease_expires_at": db.after(lease_seconds),
        }

        def chosen() -> ColumnElement[bool]:
            """The jobs a claim takes: the first `limit` runnable ones, skipping locked rows."""
            candidates = (
                select(jobs.c.id)
                .where(
                    CLAIMABLE_SQL,
                    jobs.c.queue.in_(bindparam("queues", expanding=True)),
                    jobs.c.task.in_(bindparam("tasks", expanding=True)),
                    jobs.c.scheduled_at <= db.now(),
                    DEPENDENCIES_MET,
                    NOT_PAUSED,
                    NOT_LIMITED,
                )
                .order_by(jobs.c.priority, jobs.c.scheduled_at, jobs.c.id)
                .limit(bindparam("limit"))
                .with_hint(jobs, CLAIM_INDEX, "sqlite")
            )
            picked = db.backend.skip_locked(candidates)
            if db.is_sqlite:
                return jobs.c.id.in_(picked.scalar_subquery())
            # `id = ANY(<array built once>)`: with `id IN (subquery)` PostgreSQL's planner, once
            # statistics say few candidates match, joins the subquery to a scan of the whole table
            # (118 ms per claim at 20,000 jobs after ANALYZE, instead of 3 ms).
            ids = select(func.array_agg(picked.subquery().c.id)).scalar_subquery()
            return jobs.c.id == any_(cast(ids, ARRAY(BigInteger)))  # the cast: an array, not a row set

        claim = update(jobs).where(chosen()).values(**lease)
        self._lease = lease
        #: claims of several queues, by the number of queues (`_several`)
        self._claims_of: dict[int, tuple[Any, DriverStatement | None]] = {}
        self._claim_ids = (  # started when the rate windows say (the same database clock reading)
            update(jobs)
            .where(jobs.c.id.in_(bindparam("ids", expanding=True)), CLAIMABLE_SQL)
            .values(**{**lease, "started_at": bindparam("started", type_=UTCDateTime)})
            .returning(*_RETURNED)
        )
        #: PostgreSQL writes the execution rows inside the claim and completion statements
        #: (data-modifying CTEs): one statement and one round trip each, whatever the batch.
        self._folded = not db.is_sqlite
        if self._folded:
            from ledgerflow.db.postgres import DriverStatement

            claimed = claim.returning(*_RETURNED).cte("claimed")
            self._claim = select(claimed).add_cte(_started_rows(claimed).cte("started"))
            #: the claim without SQLAlchemy's per-execution work, sent with the same text: 0.25 ms
            #: less client CPU a claim (docs/benchmarks.md, "The claim on the driver, second try")
            self._claim_driver: DriverStatement | None = DriverStatement(
                self._claim, db.engine.dialect, _RETURNED
            )
            # The finished attempts as arrays (id, lease token, duration): the statement's text
            # is the same whatever the batch size, so psycopg prepares it once per connection.
            held = (
                func.unnest(
                    bindparam("ids", type_=ARRAY(BigInteger)),
                    bindparam("tokens", type_=ARRAY(BigInteger)),
                    bindparam("durations", type_=ARRAY(Float)),
                )
                .table_valued(
                    column("job_id", BigInteger),
                    column("token", BigInteger),
                    column("duration", Float),
                    name="held",
                )
                .render_derived()
            )
            # `IS TRUE`, as in `_HELD`: each held job is joined by primary key; a plan that read
            # the index on state visited every attempt leased since the last vacuum at each
            # completion (1 ms more per batch at 8,000 jobs, growing with the run).
            done = (
                update(jobs)
                .where(
                    allowed(COMPLETE).is_(true()),
                    jobs.c.id == held.c.job_id,
                    jobs.c.lease_token == held.c.token,
                )
                .values(state=COMPLETE.target, finished_at=db.now(), lease_token=None, lease_expires_at=None)
                .returning(jobs.c.id, jobs.c.attempt, held.c.duration, held.c.token)
                .cte("done")
            )
            finished = (
                update(job_executions)
                .where(job_executions.c.job_id == done.c.id, job_executions.c.attempt == done.c.attempt)
                .values(status="completed", completed_at=db.now(), duration_seconds=done.c.duration)
            )
            self._complete = select(done.c.id, done.c.token).add_cte(finished.cte("finished"))
        else:
            self._claim = claim.returning(*_RETURNED)
            self._claim_driver = None
            # The held attempts as one JSON array of [id, token] (`held`): the statement's text is the
            # same whatever the batch (no expanded `IN (?, ?, …)` to render and prepare per size);
            # each job is still found by its rowid, its pair checked against the array's.
            pairs = func.json_each(bindparam("held")).table_valued("value", name="pairs")
            held_ids = select(func.json_extract(pairs.c.value, "$[0]"))
            held_pairs = select(
                func.json_extract(pairs.c.value, "$[0]"), func.json_extract(pairs.c.value, "$[1]")
            )
            self._complete = (
                update(jobs)
                .where(
                    allowed(COMPLETE).is_(true()),
                    jobs.c.id.in_(held_ids.scalar_subquery()),
                    tuple_(jobs.c.id, jobs.c.lease_token).in_(held_pairs),
                )
                .values(state=COMPLETE.target, finished_at=db.now(), lease_token=None, lease_expires_at=None)
                .returning(jobs.c.id)
            )
            # SQLite: the completed attempts' execution rows in one statement, from a JSON array
            # of [job_id, attempt, duration] (one parameter: no per-row parameter processing).
            each = func.json_each(bindparam("finished")).table_valued("value", name="each")
            finished_rows = select(
                func.json_extract(each.c.value, "$[0]").label("job_id"),
                func.json_extract(each.c.value, "$[1]").label("attempt"),
                func.json_extract(each.c.value, "$[2]").label("duration"),
            ).subquery("finished")
            self._finish_completed = (
                update(job_executions)
                .where(
                    job_executions.c.job_id == finished_rows.c.job_id,
                    job_executions.c.attempt == finished_rows.c.attempt,
                )
                .values(status="completed", completed_at=db.now(), duration_seconds=finished_rows.c.duration)
            )
        #: The claimed jobs' execution rows, copied from the rows the claim just wrote.
        claimed_ids = (
            jobs.c.id.in_(
                select(column("value")).select_from(func.json_each(bindparam("ids"))).scalar_subquery()
            )
            if db.is_sqlite
            else jobs.c.id == any_(bindparam("ids", type_=ARRAY(BigInteger)))
        )
        self._insert_executions = insert(job_executions).from_select(
            _EXECUTION_START,
            select(
                jobs.c.id,
                jobs.c.schedule_id,
                jobs.c.attempt,
                jobs.c.task,
                jobs.c.queue,
                literal("running"),
                jobs.c.worker_id,
                jobs.c.started_at,
            ).where(claimed_ids),
        )
        self._finish_executions = (
            update(job_executions)
            .where(job_executions.c.job_id == _bind("job_id"), job_executions.c.attempt == _bind("attempt"))
            .values(
                status=_bind("status"),
                completed_at=db.now(),
                duration_seconds=_bind("duration"),
                error_type=_bind("error_type"),
                error_message=_bind("error_message"),
                execution_metadata=_bind("metadata"),
            )
        )
        self._renew = (
            update(jobs)
            .where(in_states(LEASED).is_(true()), _HELD)
            .values(lease_expires_at=db.after(lease_seconds))
            .returning(jobs.c.id, jobs.c.lease_token)
        )
        self._beat = update(workers).where(workers.c.id == bindparam("worker")).values(heartbeat_at=db.now())

    def claim(
        self,
        conn: Connection,
        *,
        worker_id: str,
        queues: Sequence[str],
        tasks: Sequence[str],
        limit: int,
        token: int | None = None,
    ) -> list[Claim]:
        """Take up to `limit` runnable jobs (lowest priority number first) and lease them.

        Pass `token` (from `new_token()`) to be able to find the claimed jobs again with
        `reclaim` when the COMMIT's answer is lost.
        """
        if limit <= 0 or not queues or not tasks:
            return []
        token = new_token() if token is None else token
        several = list(dict.fromkeys(queues))  # a queue named twice is one (one queue: `queue = …`)
        params = {
            "queues": several,
            "tasks": list(tasks),
            "limit": limit,
            "worker": worker_id,
            "token": token,
        }
        statement, driver = self._claim, self._claim_driver
        if len(several) > 1:
            statement, driver = self._several(len(several))
            del params["queues"]
            params.update({f"queue_{i}": name for i, name in enumerate(several)})
        if driver is not None:
            rows: Sequence[Any] = driver.rows(conn, params)
        else:
            rows = conn.execute(statement, params).all()
        return self._record_claims(conn, rows, token, executions_written=self._folded)

    def _several(self, count: int) -> tuple[Any, DriverStatement | None]:
        """The claim of a worker of `count` queues (parameters `queue_0` …): each queue's first
        `limit` runnable jobs read in the claim index's order, merged, and the first `limit` of
        those taken (`first_in_claim_order`). `queue IN (…)` of several queues made both backends
        sort every waiting job of those queues at each claim (60 and 92 ms at a 100,000-job
        backlog for two queues on PostgreSQL and SQLite)."""
        found = self._claims_of.get(count)
        if found is not None:
            return found
        db = self.db
        tasks: BindParameter[Any] = bindparam("tasks", expanding=True)
        walks = [
            and_(
                jobs.c.queue == bindparam(f"queue_{i}"),
                jobs.c.task.in_(tasks),
                jobs.c.scheduled_at <= db.now(),
                DEPENDENCIES_MET,
                NOT_PAUSED,
                NOT_LIMITED,
            )
            for i in range(count)
        ]
        picked = first_in_claim_order(db, walks, bindparam("limit"), [jobs.c.id])
        where: ColumnElement[bool]
        if db.is_sqlite:
            where = jobs.c.id.in_(picked.scalar_subquery())
        else:
            ids = select(func.array_agg(picked.subquery().c.id)).scalar_subquery()
            where = jobs.c.id == any_(cast(ids, ARRAY(BigInteger)))
        claim = update(jobs).where(where).values(**self._lease)
        if self._folded:
            from ledgerflow.db.postgres import DriverStatement

            claimed = claim.returning(*_RETURNED).cte("claimed")
            statement: Any = select(claimed).add_cte(_started_rows(claimed).cte("started"))
            found = (statement, DriverStatement(statement, db.engine.dialect, _RETURNED))
        else:
            found = (claim.returning(*_RETURNED), None)
        self._claims_of[count] = found
        return found

    def claim_limited(
        self,
        conn: Connection,
        *,
        worker_id: str,
        queues: Sequence[str],
        tasks: Sequence[str],
        limit: int,
        local_caps: dict[str, int],
        token: int | None = None,
    ) -> tuple[list[Claim], float | None]:
        """Take up to `limit` jobs of queues or tasks under a global limit, as the limits allow
        (`token` as for `claim`: the cycle's claims are found again after an ambiguous commit).

        Returns the claims and in how many seconds a full rate window opens (None: none is full).
        """
        if limit <= 0 or not queues or not tasks:
            return [], None
        pick = limited_candidates(
            self.db,
            conn,
            queues=queues,
            tasks=tasks,
            want=limit,
            local_caps=local_caps,
            not_blocked=and_(jobs.c.scheduled_at <= self.db.now(), DEPENDENCIES_MET, NOT_PAUSED),
        )
        if not pick.ids:
            return [], pick.opens_in
        token = new_token() if token is None else token
        rows = conn.execute(
            self._claim_ids, {"ids": pick.ids, "worker": worker_id, "token": token, "started": pick.started}
        )
        claims = self._record_claims(conn, rows.all(), token, executions_written=False, limited=True)
        return claims, pick.opens_in

    def _record_claims(
        self,
        conn: Connection,
        rows: Sequence[Any],
        token: int,
        *,
        executions_written: bool,
        limited: bool = False,
    ) -> list[Claim]:
        """An execution row per claimed job (unless the claim statement wrote them); the claims
        in claim order."""
        claimed = [Claim(_claimed_job(r), token, limited) for r in rows]
        if claimed and not executions_written:
            ids = [c.job.id for c in claimed]
            conn.execute(self._insert_executions, {"ids": json.dumps(ids) if self.db.is_sqlite else ids})
        claimed.sort(key=lambda c: (c.job.priority, c.job.scheduled_at, c.job.id))
        return claimed

    def reclaim(self, conn: Connection, *, worker_id: str, token: int) -> list[Claim]:
        """The jobs a claim with `token` leased and this worker still holds (after an ambiguous
        commit: none if the claim was rolled back, all of them if it committed)."""
        rows = conn.execute(
            select(*_RETURNED)
            .where(jobs.c.lease_token == token, in_states(LEASED), jobs.c.worker_id == worker_id)
            .order_by(jobs.c.priority, jobs.c.scheduled_at, jobs.c.id)
        )
        return [Claim(_claimed_job(r), token) for r in rows]

    def still_held(self, conn: Connection, keys: Sequence[tuple[int, int]]) -> set[tuple[int, int]]:
        """Which of these (id, token) leases are still held: an outcome whose lease is no longer
        held was written (or fenced) and must not be written again."""
        if not keys:
            return set()
        rows = conn.execute(
            select(jobs.c.id, jobs.c.lease_token).where(
                in_states(LEASED), tuple_(jobs.c.id, jobs.c.lease_token).in_(list(keys))
            )
        )
        return {(int(r[0]), int(r[1])) for r in rows}

    def apply_outcomes(self, conn: Connection, outcomes: Sequence[Outcome]) -> list[Outcome]:
        """Write finished attempts; returns the outcomes refused because the lease was lost."""
        db = self.db
        accepted: set[tuple[int, int]] = set()
        plain = [o for o in outcomes if is_plain(o)]
        if plain and not self._folded:
            plain = self._without_stale(conn, plain)
        if plain:
            params: dict[str, Any] = (
                {
                    "ids": [o.claim.job.id for o in plain],
                    "tokens": [o.claim.token for o in plain],
                    "durations": [_duration(o) for o in plain],
                }
                if self._folded
                else {"held": json.dumps([o.key for o in plain])}
            )
            rows = conn.execute(self._complete, params).all()
            if self._folded:  # the (id, token) pairs completed
                accepted.update((row[0], row[1]) for row in rows)
            else:  # the ids completed (one outcome per id in `plain`)
                ids = {row[0] for row in rows}
                accepted.update(o.key for o in plain if o.claim.job.id in ids)
        dead: list[int] = []
        returned: list[Outcome] = []
        for o in outcomes:
            if is_plain(o):
                continue
            values: dict[str, Any] = {"lease_token": None, "lease_expires_at": None}
            job = o.claim.job
            if o.kind == "left_running":  # shutdown, thread unstoppable: the lease lapses at exit
                kept = conn.execute(
                    update(jobs)
                    .where(jobs.c.id == job.id, jobs.c.lease_token == o.claim.token, in_states(LEASED))
                    .values(max_attempts=jobs.c.max_attempts + 1)  # the attempt is given back
                )
                if kept.rowcount:
                    accepted.add(o.key)
                continue
            move = outcome_move(o)
            if o.kind == "completed":
                values.update(finished_at=db.now(), result=o.result)
            elif o.kind == "released":  # shutdown: give the attempt back
                values.update(scheduled_at=db.now(), max_attempts=jobs.c.max_attempts + 1)
            elif o.kind == "returned":  # prefetched, never started: undo the claim
                values.update(attempt=jobs.c.attempt - 1, started_at=None, worker_id=None)
            elif o.kind == "snoozed":  # run again later; this attempt does not count
                values.update(scheduled_at=db.after(o.retry_in or 0.0), snoozes=jobs.c.snoozes + 1)
            else:
                values["errors"] = [e.__dict__ for e in job.errors] + [o.error]
                if move is BURY:
                    values.update(finished_at=db.now())
                else:
                    values.update(scheduled_at=db.after(o.retry_in or 0.0))
            result = conn.execute(
                update(jobs)
                .where(jobs.c.id == job.id, jobs.c.lease_token == o.claim.token, allowed(move))
                .values(state=move.target, **values)
            )
            if result.rowcount:
                accepted.add(o.key)
                if o.kind == "returned":
                    returned.append(o)
                elif move is BURY:
                    dead.append(job.id)
        done = [
            o
            for o in outcomes
            if o.key in accepted and o.kind not in ("returned", "left_running") and not is_plain(o)
        ]
        if not self._folded:  # (the folded completion already finished the plain successes' rows)
            finished = [
                [o.claim.job.id, o.claim.job.attempt, _duration(o)] for o in plain if o.key in accepted
            ]
            if finished:
                conn.execute(self._finish_completed, {"finished": json.dumps(finished)})
        if done:
            conn.execute(self._finish_executions, [_execution_params(o) for o in done])
        for o in returned:
            conn.execute(
                delete(job_executions).where(
                    job_executions.c.job_id == o.claim.job.id, job_executions.c.attempt == o.claim.job.attempt
                )
            )
        if dead:
            cancel_dependents(db, conn, dead)
        freed = [o for o in outcomes if o.claim.limited and o.key in accepted and o.kind != "left_running"]
        if freed:  # a place under a global limit is free: give back unstarted starts, wake waiters
            unstarted = [o.claim.job for o in freed if o.kind == "returned"]
            if unstarted:
                forget_starts(conn, [(j.queue, j.task, j.started_at) for j in unstarted])
            notify_queues(db, conn, [o.claim.job.queue for o in freed])
        return [o for o in outcomes if o.key not in accepted]

    def _without_stale(self, conn: Connection, plain: list[Outcome]) -> list[Outcome]:
        """SQLite's completion returns the ids it completed (its RETURNING sees the token it
        cleared): when one batch holds two attempts of a job (a stale one, after a rescue and a
        new claim, and the current one), keep only the attempt whose lease is held, so that the
        stale one is reported refused. Rare: no statement otherwise."""
        seen = Counter(o.claim.job.id for o in plain)
        if len(seen) == len(plain):
            return plain
        doubled = [o.key for o in plain if seen[o.claim.job.id] > 1]
        stale = set(doubled) - self.still_held(conn, doubled)
        return [o for o in plain if o.key not in stale]

    def heartbeat(
        self, conn: Connection, *, worker_id: str, held: Sequence[tuple[int, int]]
    ) -> set[tuple[int, int]]:
        """Extend the leases this worker still holds; returns those it still holds."""
        conn.execute(self._beat, {"worker": worker_id})
        if not held:
            return set()
        result = conn.execute(self._renew, {"ids": [k[0] for k in held], "keys": list(held)})
        return {(int(r[0]), int(r[1])) for r in result}


#: The leases named by `keys` ((id, token) pairs, with their `ids` apart): found by primary
#: key. Callers test the state with `IS TRUE`, which no index on state answers: statistics
#: taken while few jobs ran made both backends read every running job (SQLite after ANALYZE
#: a scan of the whole table; PostgreSQL every entry its state index keeps until a vacuum).
_HELD = and_(
    jobs.c.id.in_(bindparam("ids", expanding=True)),
    tuple_(jobs.c.id, jobs.c.lease_token).in_(bindparam("keys", expanding=True)),
)

#: The columns a claim fills in a new execution row.
_EXECUTION_START = ["job_id", "schedule_id", "attempt", "task", "queue", "status", "worker_id", "started_at"]


def _started_rows(claimed: Any) -> Insert:
    """The execution rows of the jobs a claim CTE (`claimed`) just leased."""
    return insert(job_executions).from_select(
        _EXECUTION_START,
        select(
            claimed.c.id,
            claimed.c.schedule_id,
            claimed.c.attempt,
            claimed.c.task,
            claimed.c.queue,
            literal("running"),
            claimed.c.worker_id,
            claimed.c.started_at,
        ),
    )


def is_plain(o: Outcome) -> bool:
    """A success with nothing to store but its duration: written by the batched completion."""
    return o.kind == "completed" and o.result is None and not o.metadata


def _duration(o: Outcome) -> float:
    return round(o.duration, 6)


def outcome_move(o: Outcome) -> Move:
    """The state machine's move that records this outcome."""
    if o.kind == "failed":
        return BURY if o.retry_in is None else FAIL
    return {"completed": COMPLETE, "released": RELEASE, "returned": RETURN, "snoozed": SNOOZE}[o.kind]


def _execution_params(o: Outcome) -> dict[str, Any]:
    error = o.error or {}
    return {
        "b_job_id": o.claim.job.id,
        "b_attempt": o.claim.job.attempt,
        "b_status": "completed" if o.kind == "completed" else "failed",
        "b_duration": _duration(o),
        "b_error_type": {"released": "shutdown", "snoozed": "snoozed"}.get(o.kind, error.get("type")),
        "b_error_message": error.get("message"),
        "b_metadata": o.metadata or None,
    }


def _bind(name: str) -> Any:
    """A bind parameter for executemany UPDATEs (prefixed: column names are reserved there)."""
    return bindparam("b_" + name)


def expired_leases(db: Database, conn: Connection, limit: int = 500) -> list[tuple[int, int, str | None]]:
    """(id, token, worker id) of running jobs whose lease has expired by the database clock."""
    rows = conn.execute(
        select(jobs.c.id, jobs.c.lease_token, jobs.c.worker_id)
        .where(in_states(LEASED), jobs.c.lease_expires_at < db.now())
        .limit(limit)
    )
    return [(int(r[0]), int(r[1]), r[2]) for r in rows if r[1] is not None]


def rescue(db: Database, conn: Connection, pairs: Sequence[tuple[int, int]]) -> list[Job]:
    """Give jobs whose worker vanished back to the queue (or the DLQ if out of attempts).

    A job whose row another session has locked is skipped, not waited for: that session may be
    a worker cut off in the middle of its heartbeat, holding the lock until the server ends it.
    """
    rescued: list[Job] = []
    dead: list[int] = []
    for job_id, token in pairs:
        row = conn.execute(
            db.backend.skip_locked(
                select(jobs).where(
                    jobs.c.id == job_id,
                    jobs.c.lease_token == token,
                    allowed(RESCUE),
                    jobs.c.lease_expires_at < db.now(),
                )
            )
        ).first()
        if row is None:  # not expired any more, or locked by a session that may be renewing it: never wait
            continue
        job = Job.from_row(row)
        error = error_record(job.attempt, None, "lease_expired")
        error["message"] = f"worker {job.worker_id} stopped renewing its lease"
        out_of_attempts = job.out_of_attempts
        move = RESCUE_DEAD if out_of_attempts else RESCUE
        result = conn.execute(
            update(jobs)
            .where(
                jobs.c.id == job_id,
                jobs.c.lease_token == token,
                allowed(move),
                jobs.c.lease_expires_at < db.now(),
            )
            .values(
                state=move.target,
                scheduled_at=db.now(),
                finished_at=db.now() if out_of_attempts else None,
                errors=[e.__dict__ for e in job.errors] + [error],
                lease_token=None,
                lease_expires_at=None,
            )
        )
        if not result.rowcount:
            continue
        conn.execute(
            update(job_executions)
            .where(job_executions.c.job_id == job_id, job_executions.c.attempt == job.attempt)
            .values(
                status="failed",
                completed_at=db.now(),
                error_type="lease_expired",
                error_message=error["message"],
            )
        )
        if out_of_attempts:
            dead.append(job_id)
        rescued.append(job)
    if dead:
        cancel_dependents(db, conn, dead)
    return rescued


def stage(db: Database, conn: Connection) -> list[str]:
    """Mark due scheduled/retryable jobs (dependencies met) available; returns their queues."""
    result = conn.execute(
        update(jobs)
        .where(
            allowed(STAGE),
            jobs.c.scheduled_at <= db.now(),
            DEPENDENCIES_MET,
        )
        .values(state=STAGE.target)
        .returning(jobs.c.queue)
        .with_hint(STATE_INDEX, dialect_name="sqlite")
    )
    return sorted(set(result.scalars()))


def has_stageable(db: Database, conn: Connection) -> bool:
    return (
        conn.execute(
            select(jobs.c.id)
            .where(
                allowed(STAGE),
                jobs.c.scheduled_at <= db.now(),
                DEPENDENCIES_MET,
            )
            .limit(1)
            .with_hint(jobs, STATE_INDEX, "sqlite")
        ).first()
        is not None
    )


def runnable_soon(db: Database, queues: Sequence[str], tasks: Sequence[str], horizon: float) -> Select[Any]:
    """A job of these queues and tasks runnable now or due within `horizon` seconds (burst mode)."""
    return (
        select(jobs.c.id)
        .where(
            CLAIMABLE_SQL,
            jobs.c.queue.in_(list(queues)),
            jobs.c.task.in_(list(tasks)),
            or_(jobs.c.state == S.AVAILABLE, jobs.c.scheduled_at <= db.after(horizon)),
            DEPENDENCIES_MET,
            NOT_PAUSED,
        )
        .limit(1)
        .with_hint(jobs, CLAIM_INDEX, "sqlite")
    )


#: The range of `jobs.priority` (SMALLINT).
_LOWEST_PRIORITY, _HIGHEST_PRIORITY = -(2**15), 2**15 - 1


def due_query(queue: str) -> Select[Any]:
    """The first claimable job of `queue` not under a global limit, at the lowest priority
    value from `:priority` on, by `scheduled_at`: one read in the claim index's order."""
    return (
        select(jobs.c.priority, jobs.c.scheduled_at)
        .where(
            CLAIMABLE_SQL,
            jobs.c.queue == queue,
            jobs.c.priority >= bindparam("priority"),
            DEPENDENCIES_MET,
            NOT_LIMITED,
        )
        .order_by(jobs.c.priority, jobs.c.scheduled_at, jobs.c.id)
        .limit(1)
        .with_hint(jobs, CLAIM_INDEX, "sqlite")
    )


def next_due(db: Database, conn: Connection, queues: Sequence[str]) -> datetime | None:
    """When the earliest claimable job of these queues becomes due (None if there is none).

    Jobs under a global limit are left out: one held back by its limit is due but cannot be
    claimed, and the worker polls for those instead of waking at once.

    The claim index orders a queue's jobs by priority first, so the minimum of `scheduled_at`
    over the whole queue read every waiting job (50 ms at a 100,000-job backlog on either
    backend). Instead the earliest job of each priority is read in the index's order (a skip
    scan): one short read per queue and priority in use, plus one to find there is no other."""
    earliest: datetime | None = None
    for queue in dict.fromkeys(queues):
        query = due_query(queue)
        priority: int | None = _LOWEST_PRIORITY
        while priority is not None and (row := conn.execute(query, {"priority": priority}).first()):
            value = row.scheduled_at if row.scheduled_at.tzinfo else row.scheduled_at.replace(tzinfo=UTC)
            earliest = value if earliest is None else min(earliest, value)
            priority = row.priority + 1 if row.priority < _HIGHEST_PRIORITY else None
    return earliest
