"""JSON API under /api: jobs, dead-letter queue, queues, tasks, schedules, executions,
entries, exports and alerts. Every route goes through the same services as the CLI."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, tzinfo
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Body, Path, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from ledgerflow.api import listing
from ledgerflow.api.responses import SafeJSONResponse
from ledgerflow.app import App
from ledgerflow.db.tables import export_batches, job_executions
from ledgerflow.db.types import MAX_ID
from ledgerflow.engine.jobs import JobSpec
from ledgerflow.engine.search import JobFilter, parse_age, parse_instant
from ledgerflow.engine.search import enqueued_before as enqueued_before_bound
from ledgerflow.engine.states import JobState
from ledgerflow.errors import BadInput, NotFound
from ledgerflow.export.saga import held_back, latest_daily_batch
from ledgerflow.ledger.dates import check_not_after_today, parse_day, today_in
from ledgerflow.names import check_name
from ledgerflow.receipts.store import ReceiptStore
from ledgerflow.scheduler.schedules import PREVIEW_COUNT, Schedule

router = APIRouter()
RowId = Annotated[int, Path(ge=1, le=MAX_ID)]
StateName = Literal["scheduled", "available", "running", "retryable", "completed", "dead", "cancelled"]


def _app(request: Request) -> App:
    return request.app.state.app  # type: ignore[no-any-return]


def _zone(request: Request) -> ZoneInfo:
    """The app's time zone: a date alone in a filter means that day's start there."""
    return ZoneInfo(_app(request).settings.timezone)


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v.isoformat() if isinstance(v, datetime | date) else v for k, v in row.items()}


# ------------------------------------------------------------------ jobs
class EnqueueRequest(BaseModel):
    """A job to enqueue: what the Python API's `Task.enqueue` takes, task defaults otherwise."""

    model_config = ConfigDict(extra="forbid")

    task: str = Field(min_length=1, max_length=200)
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    queue: str | None = Field(None, min_length=1, max_length=100)
    priority: int | None = Field(None, ge=0, le=9)
    unique_key: str | None = Field(None, min_length=1, max_length=255)
    unique_for: float | None = Field(
        None, gt=0, le=366 * 86400, description="Seconds during which unique_key also covers completed jobs."
    )
    delay: float | None = Field(None, ge=0, le=10 * 365 * 86400)
    scheduled_at: datetime | None = Field(None, description="ISO 8601 with an offset; not with delay")
    max_attempts: int | None = Field(None, ge=1, le=1000)
    timeout: float | None = Field(None, gt=0, le=7 * 86400, description="seconds per attempt")
    depends_on: list[Annotated[int, Field(ge=1, le=MAX_ID)]] = Field([], max_length=1000)


TIME_HELP = (
    "an ISO 8601 date-time with its offset (2026-11-30T09:00+07:00, ...Z) "
    "or a date (2026-11-30: its start in LEDGERFLOW_TIMEZONE)"
)


class JobFilterIn(BaseModel):
    """Which jobs (every condition given must hold); see `GET /api/jobs` for each field."""

    model_config = ConfigDict(extra="forbid")

    states: list[StateName] = Field([], max_length=7)
    queue: str | None = Field(None, min_length=1, max_length=100)
    task: str | None = Field(None, min_length=1, max_length=200)
    search: str | None = Field(None, max_length=200)
    error_contains: str | None = Field(None, max_length=200)
    older_than: str | None = Field(None, max_length=20, description="30m, 12h, 7d, 2w")
    enqueued_after: str | None = Field(None, max_length=40, description=TIME_HELP)
    enqueued_before: str | None = Field(None, max_length=40, description=TIME_HELP)
    finished_after: str | None = Field(None, max_length=40, description=TIME_HELP)
    finished_before: str | None = Field(None, max_length=40, description=TIME_HELP)

    def to_filter(self, zone: tzinfo) -> JobFilter:
        return _job_filter(zone, **self.model_dump())


def _job_filter(
    zone: tzinfo,
    *,
    states: list[str],
    queue: str | None,
    task: str | None,
    search: str | None,
    error_contains: str | None,
    older_than: str | None,
    enqueued_after: str | None,
    enqueued_before: str | None,
    finished_after: str | None,
    finished_before: str | None,
) -> JobFilter:
    age = parse_age(older_than) if older_than is not None else None

    def instant(value: str | None, name: str) -> datetime | None:
        return parse_instant(value, name, zone) if value is not None else None

    return JobFilter(
        states=tuple(JobState(s) for s in states),
        queue=queue,
        task=task,
        text=search,
        error=error_contains,
        enqueued_after=instant(enqueued_after, "enqueued_after"),
        enqueued_before=enqueued_before_bound(age, instant(enqueued_before, "enqueued_before")),
        finished_after=instant(finished_after, "finished_after"),
        finished_before=instant(finished_before, "finished_before"),
    )


class BulkRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    action: Literal["cancel", "retry", "delete"]
    filter: JobFilterIn
    dry_run: bool = False
    reason: str | None = Field(None, max_length=500, description="kept on cancelled jobs")


@router.get("/jobs", tags=["jobs"])
def list_jobs(
    request: Request,
    state: list[StateName] = Query([], description="one or more states"),
    queue: str | None = None,
    task: str | None = None,
    search: str | None = Query(None, max_length=200, description="text in args or kwargs (3+ chars)"),
    error_contains: str | None = Query(None, max_length=200, description="text in the errors (3+ chars)"),
    older_than: str | None = Query(None, max_length=20, description="enqueued longer ago: 30m, 12h, 7d"),
    enqueued_after: str | None = Query(None, max_length=40, description=TIME_HELP),
    enqueued_before: str | None = Query(None, max_length=40, description=TIME_HELP),
    finished_after: str | None = Query(None, max_length=40, description=TIME_HELP),
    finished_before: str | None = Query(None, max_length=40, description=TIME_HELP),
    limit: int = Query(50, ge=1, le=1000),
    before_id: int | None = Query(None, ge=1, le=MAX_ID),
    offset: int = Query(0, ge=0, le=1_000_000),
) -> dict[str, Any]:
    """Newest first; page with `before_id` (the last id of the previous page) or `offset`.

    Filters, all optional, must all hold: `state` (repeat it for several), `queue`, `task`,
    `search` (case-insensitive text in the JSON of args or kwargs), `error_contains` (in the
    errors of failed attempts), `older_than`, and times: `enqueued_after`, `enqueued_before`,
    `finished_after`, `finished_before` (after: at or after; before: strictly before), each an
    ISO 8601 date-time with its offset or a date (its start in LEDGERFLOW_TIMEZONE).

    `args`, `kwargs` and `result` are the first 200 characters of their JSON text and
    `last_error` the last attempt's error: `GET /api/jobs/{id}` has the whole job."""
    filt = _job_filter(
        _zone(request),
        states=list(state),
        queue=queue,
        task=task,
        search=search,
        error_contains=error_contains,
        older_than=older_than,
        enqueued_after=enqueued_after,
        enqueued_before=enqueued_before,
        finished_after=finished_after,
        finished_before=finished_before,
    )
    jobs = listing.list_jobs(_app(request).db, limit=limit, before_id=before_id, offset=offset, filt=filt)
    return {
        "jobs": [j.to_dict() for j in jobs],
        "next_before_id": jobs[-1].id if len(jobs) == limit else None,
    }


@router.post("/jobs", tags=["jobs"], status_code=201)
def enqueue(request: Request, body: EnqueueRequest) -> dict[str, Any]:
    app = _app(request)
    task = app.registry.get(body.task)
    o = task.options
    job = app.enqueue(
        JobSpec(
            task=task.name,
            args=tuple(body.args),
            kwargs=body.kwargs,
            queue=body.queue or o.queue,
            priority=o.priority if body.priority is None else body.priority,
            max_attempts=body.max_attempts or o.max_attempts,
            unique_key=body.unique_key,
            unique_for=body.unique_for,
            delay=body.delay,
            scheduled_at=body.scheduled_at,
            timeout=o.timeout if body.timeout is None else body.timeout,
            depends_on=tuple(body.depends_on),
        )
    )
    return job.to_dict()


@router.post("/jobs/bulk", tags=["jobs"])
def bulk_action(request: Request, body: BulkRequest) -> dict[str, Any]:
    """Cancel, retry or delete every job the filter matches, through the state machine:
    cancel takes unfinished jobs, retry dead, cancelled, retryable and scheduled
    ones (never running), delete only finished ones. `dry_run` only counts. Returns
    `matched` (jobs the filter matches) and `count` (moved, or that would be)."""
    store = _app(request).store
    return store.bulk(
        body.action, body.filter.to_filter(_zone(request)), dry_run=body.dry_run, reason=body.reason
    ).to_dict()


@router.get("/jobs/{job_id}", tags=["jobs"])
def show_job(request: Request, job_id: RowId) -> Response:
    """The whole job with its errors and attempts, and `progress`: what its latest attempt
    reported (progress 0–100, message, metadata, updated_at; null if nothing). A stored value
    no decoder can read is shown as its first characters, with `"unreadable": true`."""
    app = _app(request)
    executions = [_jsonable(e) for e in app.store.executions(job_id)]
    progress = executions[-1]["execution_metadata"] if executions else None
    try:
        job = app.store.get(job_id).to_dict()
        return SafeJSONResponse({**job, "progress": progress, "executions": executions})
    except (RecursionError, ValueError):
        summary = listing.list_jobs(app.db, before_id=job_id + 1, limit=1)
        if not summary or summary[0].id != job_id:
            raise NotFound(f"unknown job id {job_id}") from None
        return SafeJSONResponse({**summary[0].to_dict(), "unreadable": True, "executions": executions})


@router.delete("/jobs/{job_id}", tags=["jobs"])
def delete_job(request: Request, job_id: RowId) -> dict[str, Any]:
    """Delete a completed, dead or cancelled job (a live one is refused: cancel it first)."""
    _app(request).store.delete(job_id)
    return {"deleted": job_id}


@router.post("/jobs/{job_id}/retry", tags=["jobs"])
def retry_job(request: Request, job_id: RowId) -> dict[str, Any]:
    return _app(request).store.retry(job_id).to_dict()


@router.post("/jobs/{job_id}/cancel", tags=["jobs"])
def cancel_job(
    request: Request,
    job_id: RowId,
    reason: str = Body("cancelled through the API", embed=True, max_length=500),
) -> dict[str, Any]:
    return _app(request).store.cancel(job_id, reason).to_dict()


@router.get("/executions", tags=["jobs"])
def list_executions(
    request: Request,
    job_id: int | None = Query(None, ge=1, le=MAX_ID),
    task: str | None = None,
    status: Literal["running", "completed", "failed"] | None = None,
    schedule: str | None = None,
    limit: int = Query(50, ge=1, le=1000),
    offset: int = Query(0, ge=0, le=1_000_000),
) -> dict[str, Any]:
    """Attempt history, newest first, filtered by job, task, status or schedule name."""
    app = _app(request)
    query = select(job_executions).order_by(job_executions.c.id.desc()).limit(limit).offset(offset)
    if job_id is not None:
        query = query.where(job_executions.c.job_id == job_id)
    if task:
        query = query.where(job_executions.c.task == task)
    if status:
        query = query.where(job_executions.c.status == status)
    if schedule:
        query = query.where(job_executions.c.schedule_id == app.schedules.get(schedule).id)
    with app.db.read() as conn:
        return {"executions": [_jsonable(dict(r._mapping)) for r in conn.execute(query)]}


# ------------------------------------------------------------------ dead-letter queue
@router.get("/dlq", tags=["dead-letter queue"])
def list_dead(
    request: Request,
    task: str | None = None,
    limit: int = Query(50, ge=1, le=1000),
    before_id: int | None = Query(None, ge=1, le=MAX_ID),
) -> dict[str, Any]:
    jobs = listing.list_jobs(
        _app(request).db, state=JobState.DEAD, task=task, limit=limit, before_id=before_id
    )
    return {"jobs": [j.to_dict() for j in jobs]}


class RetryDead(BaseModel):
    ids: list[int] | None = Field(None, max_length=10_000)
    task: str | None = None


@router.post("/dlq/retry", tags=["dead-letter queue"])
def retry_dead(request: Request, body: RetryDead | None = None) -> dict[str, Any]:
    """Retry the given dead jobs, or all of them (optionally of one task).

    Returns how many were retried and each job refused, with the reason (a live job holds its
    unique key): `{"retried": 2, "refused": [{"job_id": 7, "reason": "..."}]}`.
    """
    body = body or RetryDead()
    return _app(request).store.retry_dead(task=body.task, ids=body.ids).to_dict()


@router.delete("/dlq", tags=["dead-letter queue"])
def purge_dead(
    request: Request, older_than_days: float | None = Query(None, ge=0, le=36500), task: str | None = None
) -> dict[str, int]:
    age = timedelta(days=older_than_days) if older_than_days is not None else None
    return {"purged": _app(request).store.purge_dead(age, task)}


# ------------------------------------------------------------------ queues and tasks
@router.get("/queues", tags=["queues"])
def list_queues(request: Request) -> dict[str, Any]:
    return {"queues": _app(request).store.queue_summary()}


@router.post("/queues/{name}/pause", tags=["queues"])
def pause_queue(request: Request, name: str) -> dict[str, Any]:
    check_name(name, "queue")
    return {"queue": name, "changed": _app(request).store.pause("queue", name, "paused through the API")}


@router.post("/queues/{name}/resume", tags=["queues"])
def resume_queue(request: Request, name: str) -> dict[str, Any]:
    check_name(name, "queue")
    return {"queue": name, "changed": _app(request).store.resume("queue", name)}


@router.get("/tasks", tags=["queues"])
def list_tasks(request: Request) -> dict[str, Any]:
    """Registered tasks with their pause or auto-stop state."""
    return {"tasks": _app(request).task_summary()}


@router.post("/tasks/{name}/pause", tags=["queues"])
def pause_task(request: Request, name: str) -> dict[str, Any]:
    check_name(name, "task")
    return {"task": name, "changed": _app(request).store.pause("task", name, "paused through the API")}


@router.post("/tasks/{name}/resume", tags=["queues"])
def resume_task(request: Request, name: str) -> dict[str, Any]:
    """Resume a task type (also undoes an auto-stop and resolves its alert)."""
    app = _app(request)
    changed = app.store.resume("task", check_name(name, "task"))
    if changed:
        app.alerts.resolve(f"autostop:{name}", f"task {name} resumed through the API")
    return {"task": name, "changed": changed}


# ------------------------------------------------------------------ global limits
class LimitRequest(BaseModel):
    """The limits to give a queue or task type (replacing its previous ones); at least one."""

    concurrency: int | None = Field(None, ge=1, le=100_000, description="At most this many running at once.")
    rate: str | None = Field(
        None, min_length=3, max_length=40, description="At most N starts per period: 60/minute, 10/30s."
    )


@router.get("/limits", tags=["queues"])
def list_limits(request: Request) -> dict[str, Any]:
    """Every global limit (of queues and task types) with the jobs running under it now."""
    from ledgerflow.engine.limits import running_by_limit

    app = _app(request)
    running = running_by_limit(app.db)
    return {
        "limits": [
            {**lim.as_dict(), "running": running.get((lim.kind, lim.name), 0)} for lim in app.limits.list()
        ]
    }


@router.put("/queues/{name}/limit", tags=["queues"])
def set_queue_limit(request: Request, name: str, body: LimitRequest) -> dict[str, Any]:
    """At most `concurrency` running and/or `rate` starts of this queue, across all workers."""
    return _app(request).limits.set("queue", name, concurrency=body.concurrency, rate=body.rate).as_dict()


@router.delete("/queues/{name}/limit", tags=["queues"])
def clear_queue_limit(request: Request, name: str) -> dict[str, Any]:
    return {"queue": name, "changed": _app(request).limits.clear("queue", name)}


@router.put("/tasks/{name}/limit", tags=["queues"])
def set_task_limit(request: Request, name: str, body: LimitRequest) -> dict[str, Any]:
    """Like a queue's limit, for one task type (takes precedence over the task's own declaration)."""
    return _app(request).limits.set("task", name, concurrency=body.concurrency, rate=body.rate).as_dict()


@router.delete("/tasks/{name}/limit", tags=["queues"])
def clear_task_limit(request: Request, name: str) -> dict[str, Any]:
    return {"task": name, "changed": _app(request).limits.clear("task", name)}


# ------------------------------------------------------------------ schedules
class ScheduleCreate(BaseModel):
    name: str = Field(min_length=1, max_length=100)
    cron: str = Field(min_length=1, max_length=100)
    task: str = Field(min_length=1, max_length=200)
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    timezone: str | None = Field(None, max_length=64)
    queue: str | None = Field(None, min_length=1, max_length=100)
    priority: int | None = Field(None, ge=0, le=9)
    misfire_policy: Literal["skip", "all"] = "skip"
    misfire_max: int = Field(24, ge=1, le=10_000)
    allow_overlap: bool = False
    holiday_calendar: str | None = Field(None, max_length=8)
    extra_holidays: list[date] = Field([], max_length=1000)
    business_day: Literal["next", "previous", "skip"] | None = None
    enabled: bool = True


@router.get("/schedules", tags=["schedules"])
def list_schedules(request: Request) -> dict[str, Any]:
    return {"schedules": [s.to_dict() for s in _app(request).schedules.list()]}


class ScheduleEdit(BaseModel):
    """The fields to change; those left out keep their value."""

    model_config = ConfigDict(extra="forbid")

    cron: str | None = Field(None, min_length=1, max_length=100)
    task: str | None = Field(None, min_length=1, max_length=200)
    args: list[Any] | None = None
    kwargs: dict[str, Any] | None = None
    timezone: str | None = Field(None, min_length=1, max_length=64)
    queue: str | None = Field(None, min_length=1, max_length=100)
    priority: int | None = Field(None, ge=0, le=9)
    misfire_policy: Literal["skip", "all"] | None = None
    misfire_max: int | None = Field(None, ge=1, le=10_000)
    allow_overlap: bool | None = None
    holiday_calendar: str | None = Field(None, max_length=8, description="'' removes it")
    extra_holidays: list[date] | None = Field(None, max_length=1000)
    business_day: Literal["next", "previous", "skip", ""] | None = Field(None, description="'' removes it")
    enabled: bool | None = None

    def changes(self) -> dict[str, Any]:
        """The given fields, under the names of `Schedule` ('' clears an optional one)."""
        given = self.model_dump(exclude_unset=True)
        renamed = {"cron": "cron_expression", "task": "job_type"}
        out: dict[str, Any] = {}
        for key, value in given.items():
            if value is None:
                raise BadInput(f"{key} cannot be null (leave it out to keep it)")
            if key in ("holiday_calendar", "business_day"):
                value = value.upper() if key == "holiday_calendar" and value else (value or None)
            if key == "extra_holidays":
                value = tuple(value)
            out[renamed.get(key, key)] = value
        return out


class SchedulePreview(BaseModel):
    """An unsaved timing, checked like a schedule's: its next fire times."""

    model_config = ConfigDict(extra="forbid")

    cron: str = Field(min_length=1, max_length=100)
    timezone: str | None = Field(None, max_length=64)
    holiday_calendar: str | None = Field(None, max_length=8)
    extra_holidays: list[date] = Field([], max_length=1000)
    business_day: Literal["next", "previous", "skip"] | None = None
    n: int = Field(PREVIEW_COUNT, ge=1, le=100)


def _with_preview(schedule: Schedule) -> dict[str, Any]:
    """The schedule as JSON, with `next_fires`: its next 5 run times in its zone."""
    return {**schedule.to_dict(), "next_fires": schedule.preview() if schedule.enabled else []}


@router.post("/schedules", tags=["schedules"], status_code=201)
def create_schedule(request: Request, body: ScheduleCreate) -> dict[str, Any]:
    """Add a schedule (a duplicate name is refused); `next_fires` previews its next 5 runs."""
    app = _app(request)
    task = app.registry.get(body.task)
    schedule = Schedule(
        name=body.name,
        cron_expression=body.cron,
        job_type=task.name,
        timezone=body.timezone or app.settings.timezone,
        args=body.args,
        kwargs=body.kwargs,
        queue=body.queue or task.options.queue,
        priority=task.options.priority if body.priority is None else body.priority,
        enabled=body.enabled,
        misfire_policy=body.misfire_policy,
        misfire_max=body.misfire_max,
        allow_overlap=body.allow_overlap,
        holiday_calendar=body.holiday_calendar.upper() if body.holiday_calendar else None,
        extra_holidays=tuple(body.extra_holidays),
        business_day=body.business_day,
        disabled_reason=None if body.enabled else "disabled by user",
    )
    return _with_preview(app.schedules.add(schedule))


@router.post("/schedules/preview", tags=["schedules"])
def preview_schedule(request: Request, body: SchedulePreview) -> dict[str, Any]:
    """The next `n` run times of a timing not stored yet (a bad cron or zone: one 4xx error)."""
    app = _app(request)
    probe = Schedule(
        name="preview",
        cron_expression=body.cron,
        job_type="preview",
        timezone=body.timezone or app.settings.timezone,
        holiday_calendar=body.holiday_calendar.upper() if body.holiday_calendar else None,
        extra_holidays=tuple(body.extra_holidays),
        business_day=body.business_day,
    )
    return {"description": probe.describe(), "next_fires": probe.preview(body.n)}


@router.get("/schedules/{name}", tags=["schedules"])
def show_schedule(request: Request, name: str) -> dict[str, Any]:
    return _with_preview(_app(request).schedules.get(name))


@router.patch("/schedules/{name}", tags=["schedules"])
def edit_schedule(request: Request, name: str, body: ScheduleEdit) -> dict[str, Any]:
    """Change the given fields; a new timing applies from now (fires it would have made
    before the edit are not owed). `next_fires` previews the next 5 runs."""
    return _with_preview(_app(request).schedules.edit(name, **body.changes()))


@router.delete("/schedules/{name}", tags=["schedules"])
def remove_schedule(request: Request, name: str) -> dict[str, Any]:
    """Delete a schedule and its fire records (jobs it enqueued stay)."""
    _app(request).schedules.remove(name)
    return {"removed": name}


@router.post("/schedules/{name}/enable", tags=["schedules"])
def enable_schedule(request: Request, name: str) -> dict[str, Any]:
    return _app(request).schedules.set_enabled(name, True).to_dict()


@router.post("/schedules/{name}/disable", tags=["schedules"])
def disable_schedule(request: Request, name: str) -> dict[str, Any]:
    return _app(request).schedules.set_enabled(name, False, "disabled through the API").to_dict()


@router.post("/schedules/{name}/run", tags=["schedules"])
def run_schedule(
    request: Request, name: str, run_id: str | None = Body(None, embed=True, min_length=1, max_length=100)
) -> dict[str, Any]:
    """Trigger one run now (also while disabled); once per `run_id`."""
    return _app(request).schedules.run_now(name, run_id)


@router.get("/schedules/{name}/next", tags=["schedules"])
def next_fires(
    request: Request, name: str, n: int = Query(5, ge=1, le=100), after: datetime | None = None
) -> dict[str, Any]:
    schedule = _app(request).schedules.get(name)
    start = after or datetime.now(UTC)
    if start.tzinfo is None:
        start = start.replace(tzinfo=schedule.tz)
    try:
        fires = schedule.next_times(start, n)
    except OverflowError:
        raise BadInput(
            f"after={start.isoformat()}: no fire times can be computed past the year 9999"
        ) from None
    return {
        "schedule": name,
        "fires": [t.astimezone(schedule.tz).isoformat(timespec="seconds") for t in fires],
    }


@router.get("/schedules/{name}/fires", tags=["schedules"])
def schedule_fires(
    request: Request,
    name: str,
    status: Literal["enqueued", "skipped", "missed"] | None = None,
    limit: int = Query(50, ge=1, le=1000),
) -> dict[str, Any]:
    return {"fires": [_jsonable(r) for r in _app(request).schedules.fires(name, limit, status)]}


# ------------------------------------------------------------------ entries
#: An amount as sent: checked by the ledger's one amount rule, which names what is wrong.
AmountIn = Annotated[Any, Field(description="decimal string such as '107.00', or a whole number")]


class LineIn(BaseModel):
    account: str
    account_name: str | None = None
    debit: AmountIn = "0"
    credit: AmountIn = "0"
    tax_code: str | None = None
    memo: str | None = None


class EntryIn(BaseModel):
    date: str
    reference: str
    description: str | None = None
    currency: str = "THB"
    export_path: Literal["scheduled", "immediate"] = "scheduled"
    lines: list[LineIn] = Field(max_length=1000)


@router.post("/entries", tags=["entries"], status_code=201)
def record_entries(
    request: Request,
    body: EntryIn | list[EntryIn] = Body(...),
    upsert: bool = Query(False, description="replace entries not exported yet"),
) -> dict[str, Any]:
    """Record one entry or a list (all or nothing); amounts are decimal strings."""
    items = body if isinstance(body, list) else [body]
    if len(items) > 10_000:
        raise BadInput("at most 10,000 entries per request")
    stored = _app(request).ledger.record_many([i.model_dump() for i in items], upsert=upsert, source="api")
    return {"recorded": len(stored), "entries": [e.to_dict() for e in stored]}


@router.get("/entries", tags=["entries"])
def list_entries(
    request: Request,
    status: Literal["queued", "processing", "completed", "failed"] | None = None,
    limit: int = Query(50, ge=1, le=1000),
    offset: int = Query(0, ge=0, le=10_000_000),
) -> dict[str, Any]:
    return {
        "entries": [
            _jsonable(r) for r in _app(request).ledger.list(limit=limit, offset=offset, status=status)
        ]
    }


@router.get("/entries/{reference}", tags=["entries"])
def show_entry(request: Request, reference: str) -> dict[str, Any]:
    app = _app(request)
    return {**app.ledger.get(reference).to_dict(), "export": _jsonable(app.ledger.export_status(reference))}


@router.post("/entries/{reference}/reverse", tags=["entries"], status_code=201)
def reverse_entry(
    request: Request,
    reference: str,
    on: str | None = Body(None, embed=True, alias="date", description="YYYY-MM-DD (default: today)"),
) -> dict[str, Any]:
    """Reverse an exported entry, dated `date` (never before the entry itself)."""
    return _app(request).ledger.reverse(reference, parse_day(on) if on is not None else None).to_dict()


# ------------------------------------------------------------------ exports
@router.get("/exports", tags=["exports"])
def list_exports(
    request: Request, limit: int = Query(30, ge=1, le=1000), offset: int = Query(0, ge=0, le=1_000_000)
) -> dict[str, Any]:
    """Batches, newest first: state, entries, entries held back (with the reason), control
    totals, files, attempts, next retry."""
    with _app(request).db.read() as conn:
        rows = conn.execute(
            select(export_batches)
            .order_by(export_batches.c.batch_date.desc(), export_batches.c.id.desc())
            .limit(limit)
            .offset(offset)
        )
        batches = []
        for r in rows:
            b = _jsonable(dict(r._mapping))
            b.pop("lock_token", None)
            b.pop("reservation", None)
            b["held_back"] = held_back(b)
            batches.append(b)
    return {"batches": batches}


@router.get("/exports/status", tags=["exports"])
def export_status(request: Request) -> dict[str, Any]:
    """The last daily batch, open problems and when the next daily export fires."""
    from ledgerflow.api.app import cron_health

    app = _app(request)
    code, cron = cron_health(app, request.app.state.clock)
    with app.db.read() as conn:
        last = latest_daily_batch(conn)
        failing = (
            conn.execute(
                select(export_batches.c.batch_key).where(
                    export_batches.c.state.in_(["retryable", "abandoned"])
                )
            )
            .scalars()
            .all()
        )
    return {
        "cron": cron,
        "healthy": code == 200,
        "last_batch": (
            {**_jsonable(dict(last._mapping)), "held_back": held_back(dict(last._mapping))} if last else None
        ),
        "failing_batches": list(failing),
    }


class ExportRun(BaseModel):
    day: str | None = Field(None, alias="date", description="YYYY-MM-DD, not after today")


@router.post("/exports/run", tags=["exports"], status_code=202)
def run_export(request: Request, body: ExportRun | None = None) -> dict[str, Any]:
    """Queue the daily export of `date` (default: today in LEDGERFLOW_TIMEZONE) for a worker.
    A failed or abandoned day is run again; a delivered day is not delivered twice."""
    from ledgerflow.export.tasks import DAILY_TASK, enqueue_daily_export

    app = _app(request)
    zone = app.settings.timezone
    day = (
        check_not_after_today(parse_day(body.day), zone, "date")
        if body and body.day is not None
        else today_in(zone)
    )
    if DAILY_TASK not in app.registry:
        raise NotFound(f"task {DAILY_TASK} is not registered in this app")
    revive_abandoned(app, day)
    job = enqueue_daily_export(app, day)
    return {"batch_date": day.isoformat(), "job": job.to_dict()}


def revive_abandoned(app: App, day: date) -> None:
    """An explicit re-run brings an abandoned day back (its entries were returned to the queue)."""
    from ledgerflow.export.saga import ExportSaga

    with app.db.read() as conn:
        state = conn.execute(
            select(export_batches.c.state).where(export_batches.c.batch_key == f"daily:{day.isoformat()}")
        ).scalar()
    if state == "abandoned":
        ExportSaga(app)._claim(f"daily:{day.isoformat()}", "daily", day, None, revive=True)


# ------------------------------------------------------------------ receipts
class ApproveRequest(BaseModel):
    """Facts a person supplies or corrects; omitted ones keep what was read from the receipt."""

    total: str | None = Field(None, max_length=30, description="decimal string, e.g. '535.00'")
    tax: str | None = Field(None, max_length=30)
    on: date | None = Field(None, alias="date")
    vendor: str | None = Field(None, min_length=1, max_length=300)
    account: str | None = Field(None, max_length=100, description="CODE:Account name")
    currency: str | None = Field(None, min_length=3, max_length=3)
    tax_rate: int | None = Field(None, ge=0, le=100, description="percent; sets the tax code")
    not_duplicate: bool = Field(
        False, description="book it although it looks like a receipt or entry already booked (409 otherwise)"
    )


@router.get("/receipts", tags=["receipts"])
def list_receipts(
    request: Request,
    status: Literal["received", "draft", "review", "approved", "rejected"] | None = None,
    limit: int = Query(100, ge=1, le=1000),
) -> dict[str, Any]:
    store = ReceiptStore(_app(request))
    counts = {**store.counts(), "skipped_mail": store.skipped_count()}
    return {"receipts": [r.to_dict() for r in store.list(status, limit)], "counts": counts}


@router.get("/receipts/skipped", tags=["receipts"])
def list_skipped_mail(request: Request, limit: int = Query(100, ge=1, le=1000)) -> dict[str, Any]:
    """Messages and attachments that did not become receipts, newest first, with the reason."""
    return {"skipped": [_jsonable(s) for s in ReceiptStore(_app(request)).skipped(limit)]}


@router.get("/receipts/{receipt_id}", tags=["receipts"])
def show_receipt(request: Request, receipt_id: RowId) -> dict[str, Any]:
    store = ReceiptStore(_app(request))
    receipt = store.get(receipt_id)
    sources = [_jsonable(s) for s in store.sources(receipt_id)]
    return {**receipt.to_dict(), "text": store.text(receipt_id), "sources": sources}


@router.post("/receipts/{receipt_id}/approve", tags=["receipts"])
def approve_receipt(
    request: Request, receipt_id: RowId, body: ApproveRequest | None = None
) -> dict[str, Any]:
    """Book the receipt: its journal entry is recorded and queued for the daily export."""
    fixes = body or ApproveRequest()
    receipt, entry = ReceiptStore(_app(request)).approve(
        receipt_id,
        total=fixes.total,
        tax=fixes.tax,
        on=fixes.on,
        vendor=fixes.vendor,
        account=fixes.account,
        currency=fixes.currency,
        tax_rate=fixes.tax_rate,
        not_duplicate=fixes.not_duplicate,
    )
    return {"receipt": receipt.to_dict(), "entry": entry.to_dict()}


@router.post("/receipts/{receipt_id}/reject", tags=["receipts"])
def reject_receipt(
    request: Request,
    receipt_id: RowId,
    reason: str = Body("rejected by a person", embed=True, max_length=500),
) -> dict[str, Any]:
    return ReceiptStore(_app(request)).reject(receipt_id, reason).to_dict()


# ------------------------------------------------------------------ alerts
@router.get("/alerts", tags=["alerts"])
def list_alerts(
    request: Request,
    state: Literal["open", "resolved"] | None = None,
    open_only: bool = False,
    severity: Literal["info", "warning", "error", "critical"] | None = None,
    kind: str | None = Query(None, min_length=1, max_length=255),
    since: datetime | None = None,
    before_id: int | None = Query(None, ge=1, le=MAX_ID),
    limit: int = Query(100, ge=1, le=1000),
) -> dict[str, Any]:
    """Open and resolved alerts, newest first. `state` open|resolved (`open_only` = open),
    `severity`, `kind` (e.g. `queue_overflow`, or a whole incident key), `since` (opened at or
    after, ISO 8601 with offset); page with `before_id` = the last id of the previous page."""
    if since is not None and since.tzinfo is None:
        raise BadInput(f"since {since.isoformat()!r} needs a UTC offset (e.g. +07:00 or Z)")
    found = _app(request).alerts.history(
        limit, open_only, state=state, severity=severity, kind=kind, since=since, before_id=before_id
    )
    return {
        "alerts": [a.to_dict() for a in found],
        "next_before_id": found[-1].id if len(found) == limit else None,
    }
