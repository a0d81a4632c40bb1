"""JobStore: inserting jobs and every user-facing operation on them.

Every state change is one guarded UPDATE (`WHERE id = :id AND state IN (:allowed)`);
zero rows updated means the job was not in a state that allows the move.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Connection, case, delete, func, insert, select, update
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.exc import IntegrityError
from sqlalchemy.sql import Insert

from ledgerflow import tracing
from ledgerflow.db.backends import AnyConnection, dumps, loads
from ledgerflow.db.database import Database
from ledgerflow.db.tables import (
    NOT_AWAITED,
    UNIQUE_KEY_WHERE,
    job_dependencies,
    job_executions,
    job_limits,
    jobs,
    pauses,
)
from ledgerflow.engine.jobs import Job, JobSpec
from ledgerflow.engine.search import Action, BulkActions, BulkResult, JobFilter, newest_matches
from ledgerflow.engine.states import (
    CANCEL,
    CANCEL_DEPENDENT,
    CLAIMABLE,
    DELETE,
    LIVE,
    PURGE,
    RETRY,
    JobState,
    Move,
    describe,
)
from ledgerflow.errors import BadInput, Conflict, NotAllowed, NotFound

S = JobState
# Must match the partial index's WHERE text exactly for SQLite's ON CONFLICT to find it.
_UNIQUE_WHERE = UNIQUE_KEY_WHERE
#: First key of the advisory lock taken by enqueues with `unique_for` (the second is the key's hash).
_UNIQUE_FOR_LOCK = 72_771_002


@dataclass(frozen=True)
class RetryReport:
    """What a retry of many jobs did: the ids made available, and each id refused with why."""

    retried: list[int]
    refused: dict[int, str]

    def to_dict(self) -> dict[str, Any]:
        return {
            "retried": len(self.retried),
            "refused": [{"job_id": k, "reason": v} for k, v in sorted(self.refused.items())],
        }


@dataclass(frozen=True)
class Pause:
    kind: str  # 'queue' | 'task'
    name: str
    reason: str
    paused_by: str
    paused_at: datetime


def in_states(states: Sequence[JobState]) -> ColumnElement[bool]:
    """`state = 'x'` for one state (one plan, no expanding parameter), else `state IN (...)`."""
    return jobs.c.state == states[0] if len(states) == 1 else jobs.c.state.in_(states)


def allowed(move: Move) -> ColumnElement[bool]:
    """The WHERE clause of a guarded move: the job is in one of the move's source states."""
    return in_states(move.sources)


def is_plain(spec: JobSpec) -> bool:
    """No uniqueness, dependencies or schedule: eligible for the bulk insert path."""
    return not (spec.unique_key or spec.depends_on or spec.schedule_id is not None or spec.fire_time)


#: Stored values of the two states a plain job starts in (an enum's `.value` costs a descriptor call).
_SCHEDULED, _AVAILABLE = S.SCHEDULED.value, S.AVAILABLE.value


def scheduled_for(spec: JobSpec, now: datetime) -> datetime:
    """When the job becomes due: its `scheduled_at` (in UTC), `now` + its delay, or `now`."""
    if spec.scheduled_at is not None:
        return spec.scheduled_at.astimezone(UTC)
    if spec.delay:
        return now + timedelta(seconds=spec.delay)
    return now


def plain_row(spec: JobSpec, now: datetime) -> tuple[Any, ...]:
    """A plain job's `BULK_JOB_COLUMNS` values, its payload as the JSON its validation encoded."""
    when = now if spec.scheduled_at is None and not spec.delay else scheduled_for(spec, now)
    return (
        spec.task,
        spec.queue,
        spec.priority,
        _SCHEDULED if when > now else _AVAILABLE,
        spec.args_json,
        spec.kwargs_json,
        spec.max_attempts,
        float(spec.timeout),
        when,
    )


def dialect_insert(db: Database, table: Any) -> Insert:
    """INSERT construct that supports ON CONFLICT on the current backend."""
    module = sqlite_dialect if db.is_sqlite else pg_dialect
    return module.insert(table)  # type: ignore[no-any-return]


#: Ids bound in one statement (psycopg sends at most 65,535 parameters).
_IDS_PER_STATEMENT = 10_000


class JobStore:
    """Job persistence for one database."""

    def __init__(self, db: Database) -> None:
        self.db = db

    # ---------------------------------------------------------------- enqueue
    def enqueue(self, conn: Connection, specs: Sequence[JobSpec]) -> list[int]:
        """Insert jobs inside the caller's transaction and return their ids, in order.

        A spec with a `unique_key` that a live job already holds yields that job's id; with
        `unique_for`, so does a job of that key completed within the window.
        """
        if not specs:
            return []
        with tracing.enqueue_span(specs[0].task, specs[0].queue, len(specs)):
            plain = [i for i, s in enumerate(specs) if is_plain(s)]
            if len(plain) == len(specs):  # the usual bulk: every id from the one insert, in order
                return self._insert_plain_many(conn, specs)
            ids: list[int | None] = [None] * len(specs)
            if plain:
                new_ids = self._insert_plain_many(conn, [specs[i] for i in plain])
                for i, new_id in zip(plain, new_ids, strict=True):
                    ids[i] = new_id
            for i, spec in enumerate(specs):
                if ids[i] is None:
                    ids[i] = self._enqueue_one(conn, spec)
            return [int(i) for i in ids if i is not None]

    def _insert_plain_many(self, conn: Connection, specs: Sequence[JobSpec]) -> list[int]:
        now = datetime.now(UTC)
        new_ids = self.db.backend.insert_jobs(conn, [plain_row(spec, now) for spec in specs])
        trace_context = tracing.carrier()
        if trace_context:  # the bulk path writes fixed columns; tracing adds a statement per slice
            for start in range(0, len(new_ids), _IDS_PER_STATEMENT):
                some = new_ids[start : start + _IDS_PER_STATEMENT]
                conn.execute(update(jobs).where(jobs.c.id.in_(some)).values(trace_context=trace_context))
        return new_ids

    def enqueue_job(self, conn: Connection, spec: JobSpec) -> Job:
        """Insert one job and return it as stored (one statement for a plain job)."""
        if not is_plain(spec):
            (job_id,) = self.enqueue(conn, [spec])
            return self.get(job_id, conn)
        return self.insert_plain(conn, spec)

    def insert_plain(self, conn: AnyConnection, spec: JobSpec) -> Job:
        """Insert a plain job (`is_plain`) in one statement and return it as stored; `conn` may
        be a pooled driver connection (`Database.single`) as well as a SQLAlchemy one."""
        with tracing.enqueue_span(spec.task, spec.queue) as span:
            now = datetime.now(UTC)
            row = plain_row(spec, now)
            trace_context = tracing.carrier()
            job_id, created_at = self.db.backend.insert_job(
                conn, (*row, dumps(trace_context) if trace_context else None), now
            )
            tracing.set_job_id(span, job_id)
            return Job.inserted(spec, job_id, row[3], row[8], created_at, trace_context)

    def _row(self, spec: JobSpec, state: JobState | None = None, reason: str | None = None) -> dict[str, Any]:
        now = datetime.now(UTC)
        when = scheduled_for(spec, now)
        if state is None:
            state = S.SCHEDULED if (when > now or spec.depends_on) else S.AVAILABLE
        return {
            "task": spec.task,
            "queue": spec.queue,
            "priority": spec.priority,
            "state": str(state),
            # the payload as checked (`JobSpec.args_json`), not as it may have been changed since
            "args": loads(spec.args_json),
            "kwargs": loads(spec.kwargs_json),
            "max_attempts": spec.max_attempts,
            "timeout": float(spec.timeout),
            "unique_key": spec.unique_key,
            "has_dependencies": bool(spec.depends_on),
            "scheduled_at": when,
            "errors": [],
            "schedule_id": spec.schedule_id,
            "fire_time": spec.fire_time,
            "state_reason": reason,
            "trace_context": tracing.carrier(),
        }

    def _enqueue_one(self, conn: Connection, spec: JobSpec) -> int:
        state: JobState | None = None
        reason = None
        if spec.depends_on:
            state, reason = self._dependency_state(conn, spec)
        row = self._row(spec, state, reason)
        row["created_at"] = datetime.now(UTC)
        if not spec.unique_key:
            new_id = conn.execute(insert(jobs).values(row).returning(jobs.c.id)).scalar_one()
        elif spec.unique_for and (recent := self._recent_unique(conn, spec.unique_key, spec.unique_for)):
            return recent
        else:
            new_id = self._insert_unique(conn, spec.unique_key, row)
        if spec.depends_on and row["state"] != S.CANCELLED:
            conn.execute(
                insert(job_dependencies),
                [{"job_id": new_id, "depends_on_id": d} for d in sorted(set(spec.depends_on))],
            )
        return int(new_id)

    def _insert_unique(self, conn: Connection, key: str, row: dict[str, Any]) -> int:
        stmt = (
            dialect_insert(self.db, jobs)
            .values(row)
            .on_conflict_do_nothing(index_elements=["unique_key"], index_where=_UNIQUE_WHERE)
            .returning(jobs.c.id)
        )
        for _ in range(5):  # the holder may finish between our INSERT and SELECT
            new_id = conn.execute(stmt).scalar()
            if new_id is not None:
                return int(new_id)
            existing = conn.execute(
                select(jobs.c.id).where(jobs.c.unique_key == key, jobs.c.state.in_(LIVE))
            ).scalar()
            if existing is not None:
                return int(existing)
        raise Conflict(f"could not enqueue unique job {key!r}: key keeps changing hands")

    def _recent_unique(self, conn: Connection, key: str, seconds: float) -> int | None:
        """The newest job of `key` created in the last `seconds` that is live or completed.

        On PostgreSQL a transaction-scoped advisory lock on the key serialises these enqueues
        until commit, so two of them never both find nothing and both insert (the second would
        otherwise miss a first job that already completed); SQLite's write lock does the same.
        Waiting for that lock may take up to 60 s, past the session's `lock_timeout`.
        """
        if not self.db.is_sqlite:  # others enqueuing the key hold it for a moment: wait past lock_timeout
            previous = conn.execute(
                select(func.current_setting("lock_timeout"), func.set_config("lock_timeout", "60s", True))
            ).scalar_one()
            conn.execute(
                select(
                    func.pg_advisory_xact_lock(_UNIQUE_FOR_LOCK, func.hashtext(key)),
                    func.set_config("lock_timeout", previous, True),
                )
            )
        since = datetime.now(UTC) - timedelta(seconds=seconds)
        found = conn.execute(
            select(jobs.c.id)
            .where(
                jobs.c.unique_key == key,
                jobs.c.created_at >= since,
                jobs.c.state.in_([*LIVE, S.COMPLETED]),
            )
            .order_by(jobs.c.created_at.desc())
            .limit(1)
        ).scalar()
        return int(found) if found is not None else None

    def _dependency_state(self, conn: Connection, spec: JobSpec) -> tuple[JobState | None, str | None]:
        wanted = sorted(set(spec.depends_on))
        query = select(jobs.c.id, jobs.c.state).where(jobs.c.id.in_(wanted))
        if not self.db.is_sqlite:  # block a concurrent completion until we commit
            query = query.with_for_update(read=True)
        found = {int(r.id): r.state for r in conn.execute(query)}
        missing = [d for d in wanted if d not in found]
        if missing:
            raise NotFound(f"depends_on: unknown job id(s) {', '.join(map(str, missing))}")
        for parent, state in found.items():
            if state in (S.DEAD, S.CANCELLED):
                return S.CANCELLED, f"dependency {parent} is {state}"
        return None, None

    # ------------------------------------------------------------------ reads
    def get(self, job_id: int, conn: Connection | None = None) -> Job:
        if conn is None:
            with self.db.read() as c:
                return self.get(job_id, c)
        row = conn.execute(select(jobs).where(jobs.c.id == job_id)).first()
        if row is None:
            raise NotFound(f"unknown job id {job_id}")
        return Job.from_row(row)

    def list(
        self,
        *,
        state: str | None = None,
        queue: str | None = None,
        task: str | None = None,
        limit: int = 50,
        before_id: int | None = None,
        offset: int = 0,
    ) -> list[Job]:
        """Newest first; page with `before_id` (keyset) or `offset`."""
        query = select(jobs).order_by(jobs.c.id.desc()).limit(max(1, min(limit, 1000)))
        if state:
            if state not in JobState.__members__.values():
                raise BadInput(f"unknown state {state!r}")
            query = query.where(jobs.c.state == state)
        if queue:
            query = query.where(jobs.c.queue == queue)
        if task:
            query = query.where(jobs.c.task == task)
        if before_id:
            query = query.where(jobs.c.id < before_id)
        if offset:
            query = query.offset(offset)
        with self.db.read() as conn:
            return [Job.from_row(r) for r in conn.execute(query)]

    def executions(self, job_id: int) -> list[dict[str, Any]]:
        with self.db.read() as conn:
            rows = conn.execute(
                select(job_executions)
                .where(job_executions.c.job_id == job_id)
                .order_by(job_executions.c.attempt)
            )
            return [dict(r._mapping) for r in rows]

    def counts(
        self, states: Iterable[str] | None = None, conn: Connection | None = None
    ) -> dict[tuple[str, str, str], int]:
        """(queue, task, state) → number of jobs, for all states or only `states` (index-only)."""
        query = select(jobs.c.queue, jobs.c.task, jobs.c.state, func.count()).group_by(
            jobs.c.state, jobs.c.task, jobs.c.queue
        )
        if states is not None:
            query = query.where(jobs.c.state.in_(list(states)))
        if conn is not None:
            return {(r[0], r[1], r[2]): int(r[3]) for r in conn.execute(query)}
        with self.db.read() as fresh:
            return self.counts(states, fresh)

    def queue_summary(self) -> list[dict[str, Any]]:
        """Per queue: jobs waiting (depth), running, dead, whether it is paused, and its global limits."""
        paused = {p.name for p in self.pauses() if p.kind == "queue"}
        limits = self._queue_limits()
        queues: dict[str, dict[str, Any]] = {
            n: {"queue": n, "depth": 0, "running": 0, "dead": 0} for n in sorted(paused | set(limits))
        }
        for (queue, _task, state), n in self.counts([*CLAIMABLE, S.RUNNING, S.DEAD]).items():
            q = queues.setdefault(queue, {"queue": queue, "depth": 0, "running": 0, "dead": 0})
            if state in CLAIMABLE:
                q["depth"] += n
            elif state == S.RUNNING:
                q["running"] += n
            elif state == S.DEAD:
                q["dead"] += n
        return [
            {**q, "paused": q["queue"] in paused, **limits.get(q["queue"], {"limit": None, "rate": None})}
            for q in sorted(queues.values(), key=lambda q: q["queue"])
        ]

    def _queue_limits(self) -> dict[str, dict[str, Any]]:
        """Queue → its global concurrency limit and rate (see engine/limits.py)."""
        from ledgerflow.engine.limits import format_rate

        with self.db.read() as conn:
            rows = conn.execute(select(job_limits).where(job_limits.c.kind == "queue"))
            return {
                r.name: {"limit": r.concurrency, "rate": format_rate(r.rate_limit, r.rate_period)}
                for r in rows
            }

    # ------------------------------------------------------------ user moves
    def retry(self, job_id: int) -> Job:
        """Make a dead, cancelled, retryable or scheduled job available now.

        A running, available or completed job is refused (`NotAllowed`, 409 / exit 2): the
        internal running → available moves (release, rescue) are not a user's retry. A job
        whose unique key a live job holds now is refused with `Conflict` naming that job. Run
        once more if the server ended the transaction before it committed (`Database.run`).
        """

        def move(conn: Connection) -> Job:
            report = self._make_available(conn, [job_id])
            if job_id in report.refused:
                raise Conflict(f"job {job_id} not retried: {report.refused[job_id]}")
            if not report.retried:
                state = self.get(job_id, conn).state
                raise NotAllowed(
                    f"job {job_id} is {state}; only {describe(RETRY.sources)} jobs can be retried"
                )
            return self.get(job_id, conn)

        return self.db.run(move)

    def retry_dead(self, task: str | None = None, ids: Iterable[int] | None = None) -> RetryReport:
        """Retry every dead job (optionally of one task, or only `ids`).

        Retries what can be retried; a job whose unique key a live job holds stays dead and
        is reported in `refused` with the reason. Run once more if the server ended the
        transaction before it committed (its connection lost, or idle past
        `idle_in_transaction_session_timeout` while this process was paused): `Database.run`.
        """
        query = select(jobs.c.id).where(jobs.c.state == S.DEAD).order_by(jobs.c.id)
        if task:
            query = query.where(jobs.c.task == task)
        if ids is not None:
            query = query.where(jobs.c.id.in_(list(ids)))
        return self.db.run(lambda conn: self._make_available(conn, list(conn.execute(query).scalars())))

    def _make_available(self, conn: Connection, ids: list[int]) -> RetryReport:
        """Retry `ids` in chunks; a chunk that breaks a unique key is retried job by job."""
        report = RetryReport([], {})
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            try:
                with conn.begin_nested():
                    report.retried.extend(self._retry_update(conn, chunk))
            except IntegrityError:
                for job_id in chunk:
                    try:
                        with conn.begin_nested():
                            report.retried.extend(self._retry_update(conn, [job_id]))
                    except IntegrityError:
                        report.refused[job_id] = self._unique_key_holder(conn, job_id)
        return report

    def _retry_update(self, conn: Connection, ids: list[int]) -> list[int]:
        result = conn.execute(
            update(jobs)
            .where(jobs.c.id.in_(ids), allowed(RETRY))
            .values(
                state=RETRY.target,
                scheduled_at=self.db.now(),
                # a retried dead job gets at least one more attempt
                max_attempts=case(
                    (jobs.c.max_attempts > jobs.c.attempt - jobs.c.snoozes, jobs.c.max_attempts),
                    else_=jobs.c.attempt - jobs.c.snoozes + 1,
                ),
                finished_at=None,
                state_reason=None,
            )
            .returning(jobs.c.id, jobs.c.queue)
        )
        rows = result.all()
        self.notify(conn, [r.queue for r in rows])
        return sorted(int(r.id) for r in rows)

    def _unique_key_holder(self, conn: Connection, job_id: int) -> str:
        """Why retrying `job_id` broke its unique key: the live job that holds the key."""
        key = conn.execute(select(jobs.c.unique_key).where(jobs.c.id == job_id)).scalar()
        holder = conn.execute(
            select(jobs.c.id).where(jobs.c.unique_key == key, in_states(LIVE), jobs.c.id != job_id).limit(1)
        ).scalar()
        return f"unique key {key!r} is held by live job {holder}"

    def cancel(self, job_id: int, reason: str = "cancelled by user") -> Job:
        """Cancel a job that has not finished; a running job's worker is fenced off."""
        with self.db.begin() as conn:
            if not self.cancel_ids(conn, [job_id], reason):
                state = self.get(job_id, conn).state
                raise NotAllowed(f"job {job_id} is {state} and cannot be cancelled")
            return self.get(job_id, conn)

    def cancel_ids(self, conn: Connection, ids: Sequence[int], reason: str) -> int:
        """Cancel those of `ids` that may be cancelled, and their dependents; returns how many
        of `ids` were cancelled (a running job's lease is dropped: its worker is fenced off)."""
        result = conn.execute(
            update(jobs)
            .where(jobs.c.id.in_(list(ids)), allowed(CANCEL))
            .values(
                state=CANCEL.target,
                finished_at=self.db.now(),
                state_reason=reason,
                lease_token=None,
                lease_expires_at=None,
            )
            .returning(jobs.c.id)
        )
        cancelled = [int(i) for i in result.scalars()]
        if cancelled:
            # the running attempt's row ends here: its fenced worker's outcome is refused
            conn.execute(
                update(job_executions)
                .where(job_executions.c.job_id.in_(cancelled), job_executions.c.status == "running")
                .values(
                    status="failed", completed_at=self.db.now(), error_type="cancelled", error_message=reason
                )
            )
            cancel_dependents(self.db, conn, cancelled)
        return len(cancelled)

    def delete(self, job_id: int) -> None:
        """Delete a finished (completed, dead or cancelled) job with its execution history."""
        with self.db.begin() as conn:
            if conn.execute(delete(jobs).where(jobs.c.id == job_id, allowed(DELETE), NOT_AWAITED)).rowcount:
                return
            state = self.get(job_id, conn).state
            if state not in DELETE.sources:
                raise NotAllowed(f"job {job_id} is {state}; only {describe(DELETE.sources)} jobs are deleted")
            waiting = conn.execute(
                select(jobs.c.id)
                .join(job_dependencies, job_dependencies.c.job_id == jobs.c.id)
                .where(job_dependencies.c.depends_on_id == job_id, in_states(LIVE))
            ).scalars()
            raise NotAllowed(
                f"job {job_id} is {state} and unfinished jobs wait on it "
                f"({', '.join(map(str, sorted(waiting)))}): cancel them first"
            )

    # ------------------------------------------------------ search and bulk
    def find(
        self, filt: JobFilter | None = None, *, limit: int = 50, before_id: int | None = None
    ) -> list[Job]:
        """Jobs matching `filt`, newest first; page with `before_id`."""
        page = max(1, min(limit, 1000))
        query = select(jobs).order_by(jobs.c.id.desc()).limit(page)
        if before_id:
            query = query.where(jobs.c.id < before_id)
        with self.db.read() as conn:
            rows = newest_matches(conn, query, filt, self.db.is_sqlite, page, before_id)
        return [Job.from_row(r) for r in rows]

    def bulk(
        self, action: Action, filt: JobFilter, *, dry_run: bool = False, reason: str | None = None
    ) -> BulkResult:
        """Cancel, retry or delete every job `filt` matches (see `ledgerflow.engine.search`);
        with `dry_run`, only count them."""
        return BulkActions(self).run(action, filt, dry_run=dry_run, reason=reason)

    def purge_dead(self, older_than: timedelta | None = None, task: str | None = None) -> int:
        """Delete dead jobs (the dead-letter queue), optionally only older ones or of one task."""
        with self.db.begin() as conn:
            stmt = delete(jobs).where(allowed(PURGE), NOT_AWAITED)
            if older_than is not None:
                stmt = stmt.where(jobs.c.finished_at < datetime.now(UTC) - older_than)
            if task:
                stmt = stmt.where(jobs.c.task == task)
            return int(conn.execute(stmt).rowcount)

    # ----------------------------------------------------------- pause/resume
    def pause(
        self,
        kind: str,
        name: str,
        reason: str = "paused by user",
        by: str = "user",
        *,
        conn: Connection | None = None,
    ) -> bool:
        """Pause a queue or a task type (in `conn`'s transaction if given); returns False if it
        was already paused."""
        if kind not in ("queue", "task"):
            raise BadInput(f"kind must be 'queue' or 'task', got {kind!r}")
        if conn is None:
            with self.db.begin() as conn:
                return self.pause(kind, name, reason, by, conn=conn)
        stmt = (
            dialect_insert(self.db, pauses)
            .values(kind=kind, name=name, reason=reason, paused_by=by, paused_at=datetime.now(UTC))
            .on_conflict_do_nothing(index_elements=["kind", "name"])
            .returning(pauses.c.name)
        )
        return conn.execute(stmt).first() is not None

    def resume(self, kind: str, name: str) -> bool:
        """Resume a paused queue or task type; returns False if it was not paused."""
        with self.db.begin() as conn:
            deleted = conn.execute(
                delete(pauses).where(pauses.c.kind == kind, pauses.c.name == name)
            ).rowcount
            if deleted and kind == "queue":
                self.notify(conn, [name])
            elif deleted:
                queues = conn.execute(
                    select(jobs.c.queue).where(jobs.c.task == name, jobs.c.state.in_(CLAIMABLE)).distinct()
                ).scalars()
                self.notify(conn, list(queues))
            return bool(deleted)

    def pauses(self) -> list[Pause]:
        with self.db.read() as conn:
            return [
                Pause(**r._mapping)
                for r in conn.execute(select(pauses).order_by(pauses.c.kind, pauses.c.name))
            ]

    # ---------------------------------------------------------------- notify
    def notify(self, conn: Connection, queues: Iterable[str]) -> None:
        """Wake PostgreSQL workers listening for these queues (no-op on SQLite)."""
        notify_queues(self.db, conn, queues)


def notify_queues(db: Database, conn: Connection, queues: Iterable[str]) -> None:
    """Wake PostgreSQL workers listening for these queues when the transaction commits (on
    SQLite every commit already wakes them: their waker watches `data_version`)."""
    if db.is_sqlite:
        return
    for queue in sorted(set(queues)):
        conn.execute(select(func.pg_notify("ledgerflow_jobs", queue)))


def cancel_dependents(db: Database, conn: Connection, parent_ids: Sequence[int]) -> int:
    """Cancel, transitively, every unfinished job that depends on one of `parent_ids`."""
    total = 0
    frontier = list(parent_ids)
    while frontier:
        children = select(job_dependencies.c.job_id).where(job_dependencies.c.depends_on_id.in_(frontier))
        reason = f"dependency {', '.join(map(str, sorted(frontier)[:10]))} ended dead or cancelled"
        result = conn.execute(
            update(jobs)
            .where(jobs.c.id.in_(children), allowed(CANCEL_DEPENDENT))
            .values(state=CANCEL_DEPENDENT.target, finished_at=db.now(), state_reason=reason)
            .returning(jobs.c.id)
        )
        frontier = [int(r) for r in result.scalars()]
        total += len(frontier)
    return total
