"""Job lists for the API and the dashboard: bounded in size, and robust to any one stored row.

A list never decodes a job's arguments or result: it reads the first characters of their
stored text. So three jobs with 5 MB of arguments make a list of a few kilobytes, and a row
whose arguments no JSON decoder could handle (nested far too deep, from before the payload
limits) still lists. The whole job is at `GET /api/jobs/{id}`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Text, cast, func, select

from ledgerflow.db.database import Database
from ledgerflow.db.tables import jobs
from ledgerflow.engine.search import JobFilter, matching, newest_matches
from ledgerflow.engine.states import JobState
from ledgerflow.errors import BadInput

PREVIEW_CHARS = 200  # of args, kwargs and result
ERROR_CHARS = 300  # of the last error's message


def preview(text: str | None, limit: int = PREVIEW_CHARS) -> str | None:
    """`text` cut to `limit` characters, with an ellipsis when something was cut."""
    if text is None:
        return None
    return text if len(text) <= limit else text[:limit] + "…"


@dataclass(frozen=True)
class JobSummary:
    """One line of a job list: everything but the full arguments, result and error history."""

    id: int
    task: str
    queue: str
    priority: int
    state: str
    attempt: int
    max_attempts: int
    unique_key: str | None
    scheduled_at: datetime
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    worker_id: str | None
    state_reason: str | None
    schedule_id: int | None
    args: str
    kwargs: str
    result: str | None
    last_error: str | None

    def to_dict(self) -> dict[str, Any]:
        return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in asdict(self).items()}


def _head(column: Any) -> Any:
    """The first characters of a JSON column's text (one more than shown, to know it was cut)."""
    return func.substr(cast(column, Text), 1, PREVIEW_CHARS + 1)


def _last_error(errors: Any) -> str | None:
    if not isinstance(errors, list) or not errors or not isinstance(errors[-1], dict):
        return None
    last = errors[-1]
    return preview(f"{last.get('type', 'error')}: {last.get('message', '')}", ERROR_CHARS)


def list_jobs(
    db: Database,
    *,
    state: str | None = None,
    queue: str | None = None,
    task: str | None = None,
    limit: int = 50,
    before_id: int | None = None,
    offset: int = 0,
    filt: JobFilter | None = None,
) -> list[JobSummary]:
    """Newest first; page with `before_id` (keyset) or `offset`; at most 1,000 a page.
    `filt` adds the search conditions (text, error text, time ranges, several states)."""
    query = (
        select(
            *[jobs.c[name] for name in ("id", "task", "queue", "priority", "state", "attempt")],
            *[jobs.c[name] for name in ("max_attempts", "unique_key", "scheduled_at", "created_at")],
            *[jobs.c[name] for name in ("started_at", "finished_at", "worker_id", "state_reason")],
            jobs.c.schedule_id,
            jobs.c.errors,
            _head(jobs.c.args).label("args"),
            _head(jobs.c.kwargs).label("kwargs"),
            _head(jobs.c.result).label("result"),
        )
        .order_by(jobs.c.id.desc())
        .limit(max(1, min(limit, 1000)))
    )
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
    rows: Sequence[Any]
    with db.read() as conn:
        if offset:
            rows = conn.execute(query.where(matching(filt, db.is_sqlite, conn=conn))).all()
        else:
            rows = newest_matches(conn, query, filt, db.is_sqlite, max(1, min(limit, 1000)), before_id)
    return [
        JobSummary(
            **{k: v for k, v in r._mapping.items() if k not in ("errors", "args", "kwargs", "result")},
            args=preview(r.args) or "[]",
            kwargs=preview(r.kwargs) or "{}",
            result=preview(r.result) if r.result not in (None, "null") else None,
            last_error=_last_error(r.errors),
        )
        for r in rows
    ]
