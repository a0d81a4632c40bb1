"""The FastAPI application: health, metrics, events, and the JSON API routers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from sqlalchemy import ColumnElement, func, or_, select
from starlette.exceptions import HTTPException as StarletteHTTPException

from ledgerflow import __version__, tracing
from ledgerflow.api.responses import SafeJSONResponse, error
from ledgerflow.api.security import GuardMiddleware, default_allowed_hosts
from ledgerflow.clock import Clock, system_clock
from ledgerflow.config import parse_allowed_hosts
from ledgerflow.db.tables import (
    export_batches,
    export_logs,
    job_executions,
    job_schedules,
    schedule_fires,
    workers,
)
from ledgerflow.errors import Conflict, DatabaseUnavailable, LedgerflowError
from ledgerflow.web import mount_dashboard
from ledgerflow.web.sessions import LoginThrottle

if TYPE_CHECKING:
    from ledgerflow.app import App

STATUS = {
    "bad_input": 400,
    "config_error": 400,
    "not_found": 404,
    "unknown_task": 404,
    "conflict": 409,
    "database_unavailable": 503,
}


def health(app: App, clock: Clock) -> tuple[int, dict[str, Any]]:
    """Database reachability plus the heartbeat age of each worker and scheduler."""
    try:
        with app.db.read() as conn:
            rows = conn.execute(
                select(workers.c.kind, workers.c.id, workers.c.heartbeat_at).where(
                    workers.c.stopped_at.is_(None)
                )
            ).all()
    except (DatabaseUnavailable, Exception) as exc:
        return 503, {"status": "unhealthy", "database": "unreachable", "error": str(exc).splitlines()[0]}
    now = clock()
    stale_after = 10 * max(app.settings.heartbeat_seconds, 1.0)
    processes = [
        {"kind": kind, "id": ident, "heartbeat_age_seconds": round((now - beat).total_seconds(), 1)}
        for kind, ident, beat in rows
    ]
    return 200, {
        "status": "healthy",
        "database": "ok",
        "backend": app.db.backend.name,
        "version": __version__,
        "workers": [
            p for p in processes if p["kind"] == "worker" and p["heartbeat_age_seconds"] < stale_after
        ],
        "schedulers": [
            p for p in processes if p["kind"] == "scheduler" and p["heartbeat_age_seconds"] < stale_after
        ],
        "stale": [p for p in processes if p["heartbeat_age_seconds"] >= stale_after],
    }


def cron_health(app: App, clock: Clock) -> tuple[int, dict[str, Any]]:
    """Healthy when the daily export last succeeded less than LEDGERFLOW_HEALTH_CRON_MAX_AGE_HOURS ago."""
    with app.db.read() as conn:
        last = conn.execute(
            select(func.max(export_batches.c.completed_at)).where(
                export_batches.c.kind == "daily", export_batches.c.state == "completed"
            )
        ).scalar()
        upcoming = conn.execute(
            select(job_schedules.c.next_fire_time, job_schedules.c.timezone).where(
                job_schedules.c.name == "daily_export"
            )
        ).first()
    now = clock()
    hours = None if last is None else round((now - last).total_seconds() / 3600, 2)
    healthy = hours is not None and hours < app.settings.health_cron_max_age_hours
    next_run = None
    if upcoming is not None and upcoming.next_fire_time is not None:
        from zoneinfo import ZoneInfo

        next_run = upcoming.next_fire_time.astimezone(ZoneInfo(upcoming.timezone)).isoformat()
    body = {
        "status": "healthy" if healthy else "unhealthy",
        "last_run": last.isoformat() if last else None,
        "hours_since_last_run": hours,
        "next_run": next_run,
    }
    return (200 if healthy else 503), body


def create_api(
    app: App, *, clock: Clock | None = None, host: str = "127.0.0.1", token: str | None = None
) -> FastAPI:
    """Build the HTTP service for `app` bound on `host`.

    `token` defaults to LEDGERFLOW_API_TOKEN, else the kept (or a newly made) token file: every
    /api route needs it. `clock` is injectable for tests.
    """
    from ledgerflow.api import routes
    from ledgerflow.api.token import api_token

    settings = app.settings
    if token is None:
        made = api_token(settings)
        assert made is not None
        token = made.value
    clock = clock or system_clock
    api = FastAPI(
        title="ledgerflow",
        version=__version__,
        description="Jobs, schedules, journal entries and exports. Every route but the health checks "
        "and metrics needs `Authorization: Bearer <API token>`.",
        default_response_class=SafeJSONResponse,
    )
    api.state.app = app
    api.state.clock = clock
    api.state.token = token

    @api.exception_handler(LedgerflowError)
    async def _ledgerflow_error(_request: Request, exc: LedgerflowError) -> JSONResponse:
        fallback = 409 if isinstance(exc, Conflict) else 500 if exc.exit_code == 1 else 400
        return error(STATUS.get(exc.code, fallback), exc.code, str(exc))

    @api.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return error(
            422, "invalid_request", f"{where}: {first.get('msg')}" if where else str(first.get("msg"))
        )

    @api.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error(exc.status_code, "http_error", str(exc.detail))

    unhealthy = {503: {"description": "unhealthy (by design: uptime checks alert on it)"}}

    @api.get("/api/health", tags=["health"], responses=unhealthy)
    def get_health() -> JSONResponse:
        status, body = health(app, clock)
        return JSONResponse(body, status_code=status)

    @api.get("/api/health/cron", tags=["health"], responses=unhealthy)
    def get_cron_health() -> JSONResponse:
        try:
            status, body = cron_health(app, clock)
        except DatabaseUnavailable as exc:
            status, body = (
                503,
                {
                    "status": "unhealthy",
                    "last_run": None,
                    "hours_since_last_run": None,
                    "next_run": None,
                    "error": str(exc),
                },
            )
        return JSONResponse(body, status_code=status)

    @api.get("/metrics", tags=["health"], response_class=Response)
    def get_metrics() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST

        from ledgerflow.api.metrics import render

        return Response(render(app), media_type=CONTENT_TYPE_LATEST)

    @api.get("/api/events", tags=["events"])
    async def get_events(request: Request) -> StreamingResponse:
        """Server-sent events of job attempts, schedule fires and export steps, as they happen."""
        return StreamingResponse(
            event_stream(app, request), media_type="text/event-stream", headers={"Cache-Control": "no-store"}
        )

    api.include_router(routes.router, prefix="/api")
    throttle = LoginThrottle()
    mount_dashboard(api, app, token, throttle)
    api.add_middleware(
        GuardMiddleware,
        token=token,
        throttle=throttle,
        metrics_token=settings.metrics_token.get_secret_value() if settings.metrics_token else None,
        allowed_hosts=(
            parse_allowed_hosts(settings.allowed_hosts)
            if settings.allowed_hosts
            else default_allowed_hosts(host)
        ),
    )
    if tracing.enabled():  # continue the caller's trace (W3C traceparent) in every request
        api.add_middleware(tracing.TraceMiddleware)
    return api


#: How long the event feed awaits an id it skipped (a lower id still uncommitted when a higher
#: one was sent), and how many such ids it keeps per table (the newest).
GAP_SECONDS = 120.0
MAX_GAPS = 1000


class FeedCursor:
    """What the event feed has sent of one table: every id up to `after` but the `gaps`.

    On PostgreSQL an id is drawn at insert, so rows commit out of id order: a lower id can
    appear after a higher one was sent. Each id skipped so is awaited for `GAP_SECONDS` (a
    rolled-back insert never appears), at most `MAX_GAPS` of them: a row is sent at most once,
    and surely if it commits within `GAP_SECONDS` of a higher id being sent.
    """

    def __init__(self, after: int) -> None:
        self.after = after
        self.gaps: dict[int, float] = {}  # id -> when it was first skipped (monotonic)

    def unsent(self, column: ColumnElement[int]) -> ColumnElement[bool]:
        """The rows not sent yet (gaps still awaited, or above `after`)."""
        deadline = time.monotonic() - GAP_SECONDS
        self.gaps = {i: t for i, t in self.gaps.items() if t > deadline}
        new = column > self.after
        return or_(new, column.in_(sorted(self.gaps))) if self.gaps else new

    def sent(self, ids: list[int]) -> None:
        """Record the rows sent (read through `unsent`); ids below the newest not among them are gaps."""
        for ident in ids:
            self.gaps.pop(ident, None)
        top = max(ids, default=self.after)
        if top > self.after:
            now, seen = time.monotonic(), set(ids)
            for ident in range(max(self.after + 1, top - MAX_GAPS), top):
                if ident not in seen:
                    self.gaps[ident] = now
            self.after = top
        if len(self.gaps) > MAX_GAPS:
            self.gaps = {i: self.gaps[i] for i in sorted(self.gaps)[-MAX_GAPS:]}


async def event_stream(app: App, request: Request, poll: float = 1.0) -> AsyncIterator[bytes]:
    """Poll new rows of job_executions, schedule_fires and export_logs (a short poll on both
    backends; PostgreSQL also wakes it early through LISTEN/NOTIFY)."""
    wake = asyncio.Event()
    loop = asyncio.get_running_loop()
    waker = None
    if not app.db.is_sqlite:
        waker = app.db.backend.waker(app.db.engine, poll)
        waker.start(lambda _p: loop.call_soon_threadsafe(wake.set))

    tables = {"execution": job_executions, "fire": schedule_fires, "export": export_logs}

    def cursors() -> dict[str, FeedCursor]:
        """Start after the newest row of each table, still awaiting the ids missing below it."""
        out = {}
        with app.db.read() as conn:
            for name, t in tables.items():
                newest = int(conn.execute(select(func.coalesce(func.max(t.c.id), 0))).scalar_one())
                out[name] = FeedCursor(max(newest - MAX_GAPS, 0))
                out[name].sent(list(conn.execute(select(t.c.id).where(t.c.id > out[name].after)).scalars()))
        return out

    def fetch(after: dict[str, FeedCursor]) -> list[tuple[str, int, dict[str, Any]]]:
        out: list[tuple[str, int, dict[str, Any]]] = []
        with app.db.read() as conn:
            for r in conn.execute(
                select(job_executions)
                .where(after["execution"].unsent(job_executions.c.id))
                .order_by(job_executions.c.id)
                .limit(500)
            ):
                out.append(
                    (
                        "execution",
                        r.id,
                        {
                            "job_id": r.job_id,
                            "task": r.task,
                            "queue": r.queue,
                            "attempt": r.attempt,
                            "status": r.status,
                            "error_type": r.error_type,
                        },
                    )
                )
            for r in conn.execute(
                select(schedule_fires)
                .where(after["fire"].unsent(schedule_fires.c.id))
                .order_by(schedule_fires.c.id)
                .limit(500)
            ):
                out.append(
                    (
                        "fire",
                        r.id,
                        {
                            "schedule_id": r.schedule_id,
                            "fire_time": r.fire_time.isoformat(),
                            "status": r.status,
                            "reason": r.reason,
                            "job_id": r.job_id,
                        },
                    )
                )
            for r in conn.execute(
                select(export_logs)
                .where(after["export"].unsent(export_logs.c.id))
                .order_by(export_logs.c.id)
                .limit(500)
            ):
                out.append(
                    ("export", r.id, {"batch_key": r.batch_key, "action": r.action, "message": r.message})
                )
        return out

    try:
        after = await asyncio.to_thread(cursors)
        yield b": connected\n\n"
        idle = 0.0
        while not await request.is_disconnected():
            events = await asyncio.to_thread(fetch, after)
            for kind, ident, data in events:
                yield f"event: {kind}\nid: {kind}-{ident}\ndata: {json.dumps(data, default=str)}\n\n".encode()
            for kind, cursor in after.items():
                cursor.sent([ident for k, ident, _ in events if k == kind])
            if not events:
                idle += poll
                if idle >= 15:
                    idle = 0.0
                    yield b": keep-alive\n\n"
                wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), poll)
    finally:
        if waker is not None:
            waker.stop()
