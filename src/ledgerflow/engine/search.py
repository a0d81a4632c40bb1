"""Finding jobs by a filter, and acting on every job a filter matches (cancel, retry, delete).

One `JobFilter` serves the job lists (API, CLI, dashboard) and the bulk actions, so what an
operator sees listed is what an action touches. Text conditions are substring matches on the
JSON text of `args`/`kwargs` and of `errors` (type, message and traceback of each failed
attempt), case-insensitive, at least `MIN_TERM` characters long. PostgreSQL compares with
`ILIKE`, SQLite with a Unicode case-folding `lf_contains` (db/sqlite.py). Both narrow the rows
to compare through trigram indexes kept off the hot path (enqueue, claim, completion): side
tables (PostgreSQL: GIN pg_trgm, migration 0018; SQLite: FTS5, migration 0015) that
`index_pending` (each worker's maintenance loop) fills with the jobs up to a mark. A search
takes the index's candidates up to the mark plus every job above it, and the jobs whose
errors changed since they were indexed, then checks each row itself: exactly the rows of a
full scan, whatever the lag. On PostgreSQL the mark only passes ids that can no longer commit
(`postgres.index_jobs`). A text many jobs hold is looked for among the newest `PROBE_ROWS`
jobs first.

A bulk action goes through the state machine: it selects the jobs the filter matches that
are in a state the move is allowed from, then changes them with the same guarded UPDATE or
DELETE a single-job action uses (`WHERE id IN (...) AND state IN (...)`), 500 at a time, each
chunk in its own transaction. A job that moved meanwhile (a worker finished it) is skipped,
not overwritten; jobs enqueued after the action started are never touched.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import UTC, date, datetime, timedelta, tzinfo
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import (
    ColumnElement,
    Connection,
    Row,
    Select,
    Text,
    and_,
    cast,
    delete,
    func,
    or_,
    select,
    true,
)

from ledgerflow.db import sqlite
from ledgerflow.db.tables import NOT_AWAITED, jobs
from ledgerflow.engine.states import CANCEL, DELETE, RETRY, JobState
from ledgerflow.errors import BadInput
from ledgerflow.names import check_name

if TYPE_CHECKING:
    from ledgerflow.db.database import Database
    from ledgerflow.engine.store import JobStore

S = JobState
MIN_TERM = 3  # PostgreSQL's trigram index cannot answer shorter substrings
MAX_TERM = 200
CHUNK = 500
#: Counts shown before a bulk action (and in the dashboard) stop at this many matches.
LIST_WINDOW = 10_000
#: A text search first scans this many of the newest jobs; a text many jobs hold fills its page
#: (or its capped count) there, without reading the index's many candidates.
PROBE_ROWS = 2_000
#: PostgreSQL: a filter with a text that this many of the newest `PROBE_ROWS` jobs match is
#: checked on the rows, newest first (the next match is near), not through the index (whose
#: many candidates would each cost a lookup of their job). SQLite checks a row in Python and
#: keeps to its index.
DENSE = 5
#: Jobs added to the search index per write transaction (SQLite: about 30 ms of writer lock).
INDEX_CHUNK = 2_000

Action = Literal["cancel", "retry", "delete"]
#: The states each bulk action moves jobs from: the sources of the user moves of the state
#: machine. Retry never takes a running job (its worker still holds it); delete only takes
#: finished jobs (cancel live ones first), so nothing a worker runs or waits for vanishes.
ACTION_SOURCES: dict[str, tuple[JobState, ...]] = {
    "cancel": CANCEL.sources,
    "retry": RETRY.sources,
    "delete": DELETE.sources,
}


@dataclass(frozen=True)
class JobFilter:
    """Which jobs: every condition given must hold (all None/empty matches every job).

    `text` is looked for in args and kwargs, `error` in the errors of failed attempts;
    `enqueued_*` bound `created_at` and `finished_*` bound `finished_at` (after: at or
    after; before: strictly before)."""

    states: tuple[JobState, ...] = ()
    queue: str | None = None
    task: str | None = None
    text: str | None = None
    error: str | None = None
    enqueued_after: datetime | None = None
    enqueued_before: datetime | None = None
    finished_after: datetime | None = None
    finished_before: datetime | None = None

    def __post_init__(self) -> None:
        states = []
        for s in self.states:
            if s not in JobState.__members__.values():
                raise BadInput(f"unknown state {s!r} (one of {', '.join(JobState)})")
            states.append(JobState(s))
        object.__setattr__(self, "states", tuple(dict.fromkeys(states)))
        if self.queue is not None:
            check_name(self.queue, "queue")
        if self.task is not None:
            check_name(self.task, "task")
        for name in ("text", "error"):
            term = getattr(self, name)
            if term is not None and not MIN_TERM <= len(term) <= MAX_TERM:
                raise BadInput(f"{name} to search for must be {MIN_TERM}..{MAX_TERM} characters: {term!r}")
            if term is not None and ("\x00" in term or _unencodable(term)):
                raise BadInput(
                    f"{name} to search for holds a NUL or a lone surrogate, which no job can hold: {term!r}"
                )
        for name in ("enqueued_after", "enqueued_before", "finished_after", "finished_before"):
            value = getattr(self, name)
            if value is not None and value.tzinfo is None:
                raise BadInput(f"{name} {value.isoformat()!r} needs a UTC offset (e.g. +07:00 or Z)")
        for kind in ("enqueued", "finished"):
            after, before = getattr(self, f"{kind}_after"), getattr(self, f"{kind}_before")
            if after is not None and before is not None and after >= before:
                raise BadInput(
                    f"{kind}_after {after.isoformat()} is not before {kind}_before {before.isoformat()}"
                )

    def is_empty(self) -> bool:
        return not any(getattr(self, f.name) for f in fields(self))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value:
                out[f.name] = (
                    [str(s) for s in value]
                    if f.name == "states"
                    else value.isoformat()
                    if isinstance(value, datetime)
                    else value
                )
        return out


def _unencodable(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return True
    return False


def text_forms(term: str) -> tuple[str, ...]:
    """The texts a search `term` is looked for as: itself (JSON syntax, keys) and, when JSON
    escapes some of its characters (quotes, backslashes, control characters), its escaped
    form too, so `say "hi` finds the value `say "hi" now` (stored as `say \\"hi\\" now`)."""
    escaped = json.dumps(term, ensure_ascii=False)[1:-1]
    return (term,) if escaped == term else (term, escaped)


def _like(term: str) -> str:
    escaped = term.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def conditions(
    filt: JobFilter, is_sqlite: bool, scan: bool = False, conn: Connection | None = None
) -> list[ColumnElement[bool]]:
    """The WHERE conditions of `filt` on the jobs table, for the current backend.

    A text narrows to the candidates of the job search index (`scan`: it does not, for a look
    at a few rows or a text many jobs hold), then every condition is checked on the row itself."""
    where: list[ColumnElement[bool]] = []
    if filt.states:
        where.append(jobs.c.state.in_([str(s) for s in filt.states]))
    if filt.queue is not None:
        where.append(jobs.c.queue == filt.queue)
    if filt.task is not None:
        where.append(jobs.c.task == filt.task)
    for term, columns in ((filt.text, ("args", "kwargs")), (filt.error, ("errors",))):
        if term is None:
            continue
        forms = text_forms(term)
        if is_sqlite:
            matches = [func.lf_contains(jobs.c[c], form) == 1 for form in forms for c in columns]
            errors = columns[0] == "errors"
            if not scan:
                found = [sqlite.text_candidates(jobs.c.id, form, conn, errors) for form in forms]
                if all(c is not None for c in found):
                    where.append(or_(*found))
        else:
            patterns = [_like(form) for form in forms]
            matches = [cast(jobs.c[c], Text).ilike(p, escape="\\") for p in patterns for c in columns]
            if not scan:
                from ledgerflow.db import postgres  # psycopg: PostgreSQL processes only

                where.append(postgres.text_candidates(jobs.c.id, patterns, columns[0] == "errors"))
        where.append(or_(*matches))
    if filt.enqueued_after is not None:
        where.append(jobs.c.created_at >= filt.enqueued_after)
    if filt.enqueued_before is not None:
        where.append(jobs.c.created_at < filt.enqueued_before)
    if filt.finished_after is not None:
        where.append(jobs.c.finished_at >= filt.finished_after)
    if filt.finished_before is not None:
        where.append(jobs.c.finished_at < filt.finished_before)
    return where


def matching(
    filt: JobFilter | None, is_sqlite: bool, scan: bool = False, conn: Connection | None = None
) -> ColumnElement[bool]:
    """All of `filt`'s conditions as one clause (true for no filter); see `conditions`."""
    where = conditions(filt, is_sqlite, scan, conn) if filt is not None else []
    return and_(true(), *where)


def newest_floor(conn: Connection, below: int | None = None) -> int:
    """The lowest id of the `PROBE_ROWS` ids below `below` (default: above the newest job)."""
    top = below if below is not None else (conn.execute(select(func.max(jobs.c.id))).scalar() or 0) + 1
    return int(top) - PROBE_ROWS


def newest_matches(
    conn: Connection,
    query: Select[Any],
    filt: JobFilter | None,
    is_sqlite: bool,
    page: int,
    below: int | None,
) -> Sequence[Row[Any]]:
    """The rows of `query` (jobs newest first, at most `page`, ids below `below`) `filt` matches.

    A text: the newest `PROBE_ROWS` jobs are scanned first; a full page there is the answer (a
    text many jobs hold), else the index answers (a text few jobs hold; on PostgreSQL, when
    `DENSE` of them matched, a scan newest first)."""
    if filt is not None and _probed(filt, is_sqlite):
        floor = newest_floor(conn, below)
        rows = conn.execute(query.where(matching(filt, is_sqlite, scan=True), jobs.c.id >= floor)).all()
        if len(rows) >= page:
            return rows
        common = len(rows) >= _dense(is_sqlite)
        return conn.execute(query.where(matching(filt, is_sqlite, common, conn))).all()
    return conn.execute(query.where(matching(filt, is_sqlite, conn=conn))).all()


def _probed(filt: JobFilter, is_sqlite: bool) -> bool:
    """Whether the newest jobs are looked at first: a text (PostgreSQL: or an error text)."""
    return filt.text is not None or (not is_sqlite and filt.error is not None)


def _dense(is_sqlite: bool) -> int:
    """How many matches among the newest `PROBE_ROWS` jobs make a text common (SQLite: never)."""
    return PROBE_ROWS + 1 if is_sqlite else DENSE


def common_text(conn: Connection, filt: JobFilter, is_sqlite: bool) -> bool:
    """PostgreSQL: whether `filt` has a text at least `DENSE` of the newest `PROBE_ROWS` jobs
    match (checked on the rows, not through the index: see `DENSE`); SQLite: no."""
    if is_sqlite or not _probed(filt, is_sqlite):
        return False
    newest = select(jobs.c.id).where(matching(filt, False, scan=True), jobs.c.id >= newest_floor(conn))
    found = select(func.count()).select_from(newest.limit(DENSE).subquery())
    return int(conn.execute(found).scalar_one()) >= DENSE


def count_matching(db: Database, filt: JobFilter, cap: int = LIST_WINDOW) -> int:
    """How many jobs match `filt`, counted up to `cap` + 1 (more: "over `cap`")."""

    def count(where: ColumnElement[bool]) -> int:
        found = select(jobs.c.id).where(where).limit(cap + 1)
        return int(conn.execute(select(func.count()).select_from(found.subquery())).scalar_one())

    with db.read() as conn:
        if common_text(conn, filt, db.is_sqlite) or (
            db.is_sqlite and filt.text is not None and sqlite.many_candidates(conn, filt.text, 3 * cap)
        ):
            # a text many jobs hold: a scan newest first reaches the cap sooner than the index
            return count(matching(filt, db.is_sqlite, scan=True))
        return count(matching(filt, db.is_sqlite, conn=conn))


def index_pending(db: Database, chunk: int = INDEX_CHUNK, budget: float = 1.0) -> int:
    """Add the jobs enqueued since the last call, and the errors changed since, to the job
    search index, `chunk` per write transaction, for about `budget` seconds; how many were
    indexed. Run by each worker's maintenance loop."""
    if db.is_sqlite:
        backend: Any = sqlite
    else:
        from ledgerflow.db import postgres  # psycopg: PostgreSQL processes only

        backend = postgres
    with db.read() as conn:  # nothing new: no write lock taken
        if not backend.search_pending(conn):
            return 0
    done, until = 0, time.monotonic() + budget
    while time.monotonic() < until:
        with db.begin() as conn:
            step = backend.index_jobs(conn, chunk)
        done += step
        if step < chunk:
            break
    return done


@dataclass(frozen=True)
class BulkResult:
    """What a bulk action did (or, dry, would do)."""

    action: str
    dry_run: bool
    matched: int  # jobs the filter matches, in any state
    count: int  # jobs moved (dry run: in a state the action moves from)
    filter: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class BulkActions:
    """Cancel, retry or delete every job a filter matches, through the state machine."""

    def __init__(self, store: JobStore) -> None:
        self.store = store
        self.db = store.db

    def count(self, filt: JobFilter, action: Action) -> tuple[int, int]:
        """(jobs the filter matches, of which `action` may move: in a state it moves from and,
        for delete, not awaited by an unfinished dependent)."""
        with self.db.read() as conn:
            where = matching(filt, self.db.is_sqlite, common_text(conn, filt, self.db.is_sqlite), conn)
            matched = conn.execute(select(func.count()).select_from(jobs).where(where)).scalar_one()
            movable = conn.execute(
                select(func.count()).select_from(jobs).where(where, _movable(action))
            ).scalar_one()
        return int(matched), int(movable)

    def run(
        self, action: Action, filt: JobFilter, *, dry_run: bool = False, reason: str | None = None
    ) -> BulkResult:
        """Apply `action` to every job `filt` matches (a filter is required: no filter, no action)."""
        sources = _sources(action)
        if filt.is_empty():
            raise BadInput(f"bulk {action} needs a filter (state, queue, task, age, text or error)")
        matched, movable = self.count(filt, action)
        if dry_run:
            return BulkResult(action, True, matched, movable, filt.to_dict())
        with self.db.read() as conn:
            ceiling = conn.execute(select(func.max(jobs.c.id))).scalar()
            where = matching(filt, self.db.is_sqlite, common_text(conn, filt, self.db.is_sqlite), conn)
        done = 0
        below = (ceiling or 0) + 1
        while True:
            with self.db.begin() as conn:
                ids = list(
                    conn.execute(
                        select(jobs.c.id)
                        .where(where, jobs.c.id < below, _movable(action))
                        .order_by(jobs.c.id.desc())
                        .limit(CHUNK)
                    ).scalars()
                )
                if not ids:
                    break
                below = ids[-1]
                done += self._apply(conn, action, ids, sources, reason)
        return BulkResult(action, False, matched, done, filt.to_dict())

    def _apply(
        self, conn: Connection, action: str, ids: list[int], sources: Sequence[JobState], reason: str | None
    ) -> int:
        if action == "cancel":
            return self.store.cancel_ids(conn, ids, reason or "cancelled in bulk")
        if action == "retry":  # a job whose unique key a live job holds now stays as it is
            return len(self.store._make_available(conn, ids).retried)
        result = conn.execute(
            delete(jobs).where(jobs.c.id.in_(ids), jobs.c.state.in_(list(sources)), NOT_AWAITED)
        )
        return int(result.rowcount)


def _movable(action: str) -> ColumnElement[bool]:
    """The jobs `action` may move: in one of its source states; a delete also leaves the dead
    and cancelled jobs an unfinished (retried) dependent still waits on."""
    in_source = jobs.c.state.in_([str(s) for s in _sources(action)])
    return and_(in_source, NOT_AWAITED) if action == "delete" else in_source


def _sources(action: str) -> tuple[JobState, ...]:
    try:
        return ACTION_SOURCES[action]
    except KeyError:
        raise BadInput(f"unknown bulk action {action!r} (cancel, retry or delete)") from None


_AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_age(value: str, option: str = "older_than") -> timedelta:
    """`90s`, `30m`, `12h`, `7d` or `2w` as a duration (a bare number is seconds)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", value)
    if not match:
        raise BadInput(f"{option} {value!r} is not a duration such as 30m, 12h, 7d or 2w")
    seconds = float(match.group(1)) * _AGE_UNITS[match.group(2) or "s"]
    if seconds > 100 * 365 * 86400:
        raise BadInput(f"{option} {value!r} is more than 100 years")
    return timedelta(seconds=seconds)


_DATE_ONLY = re.compile(r"\d{4}-\d{2}-\d{2}")
_DATE_TIME = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?(Z|[+-]\d{2}:?\d{2})?")


def parse_instant(value: str, name: str, zone: tzinfo) -> datetime:
    """A time bound of a job filter, with no guessing: an ISO 8601 date-time with its UTC offset
    (`2026-11-30T09:00+07:00`, `2026-11-30T02:00Z`) or a date alone (`2026-11-30`: the start
    of that day in `zone`, the app's LEDGERFLOW_TIMEZONE). Anything else is one clear error."""
    text = value.strip()
    if _DATE_ONLY.fullmatch(text):
        try:
            return datetime.combine(date.fromisoformat(text), datetime.min.time(), tzinfo=zone)
        except ValueError:
            raise BadInput(f"{name} {value!r} is not a calendar date") from None
    match = _DATE_TIME.fullmatch(text)
    if match is None:
        raise BadInput(
            f"{name} {value!r} is not a time: give a date (2026-11-30, that day's start in {zone}) "
            "or an ISO 8601 date-time with its offset (2026-11-30T09:00+07:00 or 2026-11-30T02:00Z)"
        )
    if match.group(3) is None:
        raise BadInput(
            f"{name} {value!r} has no UTC offset: add one (e.g. {text}+07:00 or {text}Z), or give a date"
        )
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise BadInput(f"{name} {value!r} is not a valid date-time") from None


def enqueued_before(
    older_than: timedelta | None, before: datetime | None, now: datetime | None = None
) -> datetime | None:
    """The `enqueued_before` bound from an age or an instant (giving both is refused)."""
    if older_than is None:
        return before
    if before is not None:
        raise BadInput("give older_than or enqueued_before, not both")
    return (now or datetime.now(UTC)) - older_than
