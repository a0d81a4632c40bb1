"""Dashboard pages: overview, jobs, dead-letter queue, queues, schedules, exports, alerts, receipts."""

from __future__ import annotations

import itertools
import json
import os
import re
import secrets
import stat
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO, Literal
from urllib.parse import parse_qsl, quote, urlencode, urlsplit
from zoneinfo import ZoneInfo

from fastapi import FastAPI, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from markupsafe import Markup
from sqlalchemy import case, func, select

from ledgerflow.alerts import SEVERITIES
from ledgerflow.api.listing import list_jobs
from ledgerflow.api.routes import RowId
from ledgerflow.app import App
from ledgerflow.db.tables import circuit_breakers, export_batches, job_executions, job_schedules, workers
from ledgerflow.db.types import MAX_ID
from ledgerflow.engine.limits import running_by_limit
from ledgerflow.engine.search import (
    ACTION_SOURCES,
    LIST_WINDOW,
    JobFilter,
    count_matching,
    parse_age,
    parse_instant,
)
from ledgerflow.engine.search import enqueued_before as enqueued_before_bound
from ledgerflow.engine.states import CANCEL, RETRY, JobState
from ledgerflow.errors import BadInput, LedgerflowError, NotFound
from ledgerflow.export.destinations import LocalFolder, open_destination
from ledgerflow.export.saga import held_back, latest_daily_batch
from ledgerflow.names import check_name
from ledgerflow.scheduler.schedules import Schedule
from ledgerflow.web import SESSION_COOKIE, STATIC, TEMPLATES
from ledgerflow.web.sessions import SESSION_SECONDS, LoginThrottle, Sessions


def register(api: FastAPI, app: App, token: str, throttle: LoginThrottle) -> None:
    """Add the dashboard's routes to `api`; signing in takes `token` (the API token), and wrong
    passwords count in `throttle`."""
    sessions = Sessions(app.db, token)
    zone = ZoneInfo(app.settings.timezone)
    templates = Jinja2Templates(directory=str(TEMPLATES))

    def when(value: datetime | None, fmt: str = "%Y-%m-%d %H:%M:%S") -> Markup:
        """Local time in the configured zone, UTC on hover."""
        if value is None:
            return Markup("—")
        value = value if value.tzinfo else value.replace(tzinfo=UTC)
        return Markup('<time datetime="{0}" title="{0} UTC">{1}</time>').format(
            value.astimezone(UTC).isoformat(timespec="seconds"), value.astimezone(zone).strftime(fmt)
        )

    def until(value: datetime | None) -> str:
        if value is None:
            return "—"
        seconds = int((value - datetime.now(UTC)).total_seconds())
        if seconds < 0:
            return "due"
        hours, rest = divmod(seconds, 3600)
        return f"in {hours} h {rest // 60:02d} min" if hours else f"in {rest // 60} min"

    templates.env.filters["when"] = when
    templates.env.filters["until"] = until
    templates.env.filters["json_text"] = lambda value: json.dumps(value, ensure_ascii=False)
    templates.env.globals["zone"] = app.settings.timezone
    # the job page offers the user moves the state machine allows from the job's state
    templates.env.globals["retry_from"] = [str(s) for s in RETRY.sources]
    templates.env.globals["cancel_from"] = [str(s) for s in CANCEL.sources]
    api.mount("/static", StaticFiles(directory=str(STATIC)), name="static")

    def session(request: Request) -> str | None:
        cookie = request.cookies.get(SESSION_COOKIE)
        return cookie if sessions.valid(cookie) else None

    def page(request: Request, template: str, **context: Any) -> Response:
        cookie = session(request)
        if cookie is None:
            return RedirectResponse(f"/login?{urlencode({'next': request.url.path})}", status_code=303)
        return templates.TemplateResponse(
            request,
            template,
            {"csrf": sessions.csrf_token(cookie), "path": request.url.path, **context},
        )

    def action(request: Request, csrf: str) -> Response | None:
        """None when the POST may proceed; otherwise the refusal."""
        cookie = session(request)
        if cookie is None:
            return HTMLResponse("session expired: log in again", status_code=403)
        if not secrets.compare_digest(csrf.encode(), sessions.csrf_token(cookie).encode()):
            return HTMLResponse("invalid CSRF token", status_code=403)
        return None

    def back(request: Request, default: str, message: str) -> RedirectResponse:
        """Back to the page the form was on (its path only), with a message."""
        referer = urlsplit(request.headers.get("referer") or "")
        target = referer.path if referer.path.startswith("/") else default
        query = [(k, v) for k, v in parse_qsl(referer.query) if k != "flash"] if referer.path else []
        return RedirectResponse(
            f"{_local(target)}?{urlencode([*query, ('flash', message)])}", status_code=303
        )

    # ------------------------------------------------------------------ login
    def login_page(request: Request, next: str, error: str | None, status: int, **headers: str) -> Response:
        return templates.TemplateResponse(
            request,
            "login.html",
            {"next": _local(next), "error": error, "path": "/login"},
            status_code=status,
            headers=headers,
        )

    @api.get("/login", include_in_schema=False)
    def login_form(request: Request, next: str = "/") -> Response:
        return login_page(request, next, None, 200)

    @api.post("/login", include_in_schema=False)
    def login(request: Request, password: str = Form(""), next: str = Form("/")) -> Response:
        client = request.client.host if request.client else "?"
        wait = throttle.retry_after(client)
        if wait:
            message = f"Too many wrong passwords: try again in {wait} s."
            return login_page(request, next, message, 429, **{"Retry-After": str(wait)})
        if not secrets.compare_digest(password.encode(), token.encode()):
            throttle.failed(client)
            return login_page(request, next, "Wrong password.", 401)
        throttle.succeeded(client)
        response = RedirectResponse(_local(next), status_code=303)
        _set_cookie(request, response, sessions.create())
        return response

    @api.post("/logout", include_in_schema=False)
    def logout(request: Request, csrf: str = Form("")) -> Response:
        refused = action(request, csrf)
        if refused:
            return refused
        sessions.revoke(request.cookies.get(SESSION_COOKIE))
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    # ------------------------------------------------------------------ overview
    @api.get("/", include_in_schema=False)
    def overview(request: Request, partial: bool = False) -> Response:
        now = datetime.now(UTC)
        with app.db.read() as conn:
            hour_ago = now - timedelta(hours=1)
            edges = [hour_ago + timedelta(minutes=5 * i) for i in range(13)]
            buckets = conn.execute(
                select(
                    *[
                        func.sum(
                            case(
                                ((job_executions.c.started_at >= a) & (job_executions.c.started_at < b), 1),
                                else_=0,
                            )
                        )
                        for a, b in itertools.pairwise(edges)
                    ]
                ).where(job_executions.c.started_at >= hour_ago, job_executions.c.status == "completed")
            ).one()
            beats = conn.execute(
                select(workers.c.kind, workers.c.id, workers.c.heartbeat_at).where(
                    workers.c.stopped_at.is_(None)
                )
            ).all()
            breakers = conn.execute(select(circuit_breakers)).all()
            last_export = latest_daily_batch(conn)
            next_export = conn.execute(
                select(job_schedules.c.next_fire_time, job_schedules.c.enabled).where(
                    job_schedules.c.name == "daily_export"
                )
            ).first()
        throughput = [int(b or 0) for b in buckets]
        fresh = [b for b in beats if (now - b.heartbeat_at) < timedelta(seconds=30)]
        running = list_jobs(app.db, state=JobState.RUNNING, limit=20)
        queues = app.store.queue_summary()
        return page(
            request,
            "overview_partial.html" if partial else "overview.html",
            queues=queues,
            throughput=throughput,
            throughput_max=max([*throughput, 1]),
            running=running,
            dead=sum(q["dead"] for q in queues),
            workers=[b for b in fresh if b.kind == "worker"],
            schedulers=[b for b in fresh if b.kind == "scheduler"],
            breakers=breakers,
            last_export=last_export,
            next_export=next_export.next_fire_time if next_export and next_export.enabled else None,
        )

    # ------------------------------------------------------------------ jobs
    def job_filter(filters: dict[str, str]) -> JobFilter:
        """The jobs page's filter fields as a JobFilter (a time is a date, that day's start in the
        app's zone, or a date-time with its offset: see `parse_instant`)."""

        def instant(key: str) -> datetime | None:
            value = filters.get(key)
            return parse_instant(value, TIME_LABELS[key], zone) if value else None

        age = parse_age(filters["older_than"], "older than") if filters.get("older_than") else None
        return JobFilter(
            states=(filters["state"],) if filters.get("state") else (),  # type: ignore[arg-type]
            queue=filters.get("queue"),
            task=filters.get("task"),
            text=filters.get("search"),
            error=filters.get("error"),
            enqueued_after=instant("enqueued_after"),
            enqueued_before=enqueued_before_bound(age, instant("enqueued_before")),
            finished_after=instant("finished_after"),
            finished_before=instant("finished_before"),
        )

    @api.get("/jobs", include_in_schema=False)
    def jobs_page(
        request: Request,
        state: str | None = None,
        queue: str | None = None,
        task: str | None = None,
        search: str | None = None,
        error: str | None = None,
        older_than: str | None = None,
        enqueued_after: str | None = None,
        enqueued_before: str | None = None,
        finished_after: str | None = None,
        finished_before: str | None = None,
        id: str | None = None,
        before_id: int | None = Query(None, ge=1, le=MAX_ID),
        bulk: Literal["cancel", "retry", "delete"] | None = None,
        flash: str | None = None,
    ) -> Response:
        if id and id.strip().isdigit():
            return RedirectResponse(f"/jobs/{int(id)}", status_code=303)
        given = {
            "state": state,
            "queue": queue,
            "task": task,
            "search": search,
            "error": error,
            "older_than": older_than,
            "enqueued_after": enqueued_after,
            "enqueued_before": enqueued_before,
            "finished_after": finished_after,
            "finished_before": finished_before,
        }
        filters = {k: v.strip() for k, v in given.items() if v and v.strip()}
        matched, confirm = None, None
        try:
            filt = job_filter(filters)
            jobs = list_jobs(app.db, limit=50, before_id=before_id, filt=filt)
            if filters:
                matched = count_matching(app.db, filt)
            if bulk and filters:
                confirm = app.store.bulk(bulk, filt, dry_run=True)
        except LedgerflowError as exc:
            jobs, flash = [], str(exc)
        older = f"/jobs?{urlencode({**filters, 'before_id': jobs[-1].id})}" if len(jobs) == 50 else None
        return page(
            request,
            "jobs.html",
            jobs=jobs,
            filters=filters,
            matched=matched,
            window=LIST_WINDOW,
            confirm=confirm,
            sources={a: ", ".join(ACTION_SOURCES[a]) for a in ACTION_SOURCES},
            older=older,
            flash=flash,
            states=[s.value for s in JobState],
            queues=sorted(set(app.queues()) | {q["queue"] for q in app.store.queue_summary()}),
            tasks=[t["task"] for t in app.task_summary()],
            time_fields=TIME_LABELS,
            zone=str(zone),
        )

    @api.post("/jobs/bulk", include_in_schema=False)
    async def jobs_bulk(request: Request) -> Response:
        """Run a bulk action the operator confirmed on the jobs page (same filter, counted again)."""
        form = await request.form()
        refused = action(request, str(form.get("csrf", "")))
        if refused:
            return refused
        filters = {k: str(form[k]).strip() for k in JOB_FILTER_FIELDS if str(form.get(k, "")).strip()}
        verb = str(form.get("action", ""))
        if verb not in ACTION_SOURCES:
            return HTMLResponse("unknown action", status_code=404)
        if form.get("confirmed") != "yes":
            return RedirectResponse(f"/jobs?{urlencode({**filters, 'bulk': verb})}", status_code=303)
        try:
            result = app.store.bulk(verb, job_filter(filters), reason="cancelled from the dashboard")  # type: ignore[arg-type]
            message = f"{PAST[verb]} {result.count} job(s)"
        except LedgerflowError as exc:
            message = str(exc)
        return RedirectResponse(f"/jobs?{urlencode({**filters, 'flash': message})}", status_code=303)

    @api.get("/jobs/{job_id}", include_in_schema=False)
    def job_page(
        request: Request, job_id: RowId, flash: str | None = None, partial: bool = False
    ) -> Response:
        try:
            job = app.store.get(job_id)
        except NotFound:
            return page(request, "missing.html", what=f"job {job_id}")
        except (RecursionError, ValueError):  # a row from before the payload limits
            return page(request, "missing.html", what=f"a readable form of job {job_id}")
        executions = app.store.executions(job_id)
        progress = executions[-1]["execution_metadata"] if executions else None
        return page(
            request,
            "job_partial.html" if partial else "job.html",
            job=job,
            executions=executions,
            progress=progress,
            flash=flash,
        )

    @api.post("/jobs/{job_id}/{verb}", include_in_schema=False)
    def job_action(request: Request, job_id: RowId, verb: str, csrf: str = Form("")) -> Response:
        refused = action(request, csrf)
        if refused:
            return refused
        try:
            if verb == "retry":
                job = app.store.retry(job_id)
            elif verb == "cancel":
                job = app.store.cancel(job_id, "cancelled from the dashboard")
            else:
                return HTMLResponse("unknown action", status_code=404)
            message = f"job {job_id} is {job.state}"
        except LedgerflowError as exc:
            message = str(exc)
        return back(request, f"/jobs/{job_id}", message)

    # ------------------------------------------------------------------ queues and their limits
    @api.get("/queues", include_in_schema=False)
    def queues_page(request: Request, flash: str | None = None) -> Response:
        summary = {q["queue"]: q for q in app.store.queue_summary()}
        for name in app.queues():
            summary.setdefault(
                name, {"queue": name, "depth": 0, "running": 0, "dead": 0, "paused": False, "limit": None}
            )
        task_limits = {lim.name: lim for lim in app.limits.list() if lim.kind == "task"}
        running = running_by_limit(app.db)
        paused_tasks = {t["task"]: t for t in app.task_summary() if t["paused"]}
        tasks = [
            {
                "name": n,
                "limit": task_limits.get(n),
                "running": running.get(("task", n), 0),
                "pause": paused_tasks.get(n),
            }
            for n in sorted(set(app.registry.names()) | set(task_limits) | set(paused_tasks))
        ]
        return page(
            request,
            "queues.html",
            queues=[summary[n] for n in sorted(summary)],
            tasks=tasks,
            pauses={(p.kind, p.name): p for p in app.store.pauses()},
            flash=flash,
        )

    @api.post("/limits/{kind}/{name}/{verb}", include_in_schema=False)
    def limit_action(
        request: Request,
        kind: str,
        name: str,
        verb: str,
        csrf: str = Form(""),
        concurrency: str = Form(""),
        rate: str = Form(""),
    ) -> Response:
        refused = action(request, csrf)
        if refused:
            return refused
        try:
            if verb == "set":
                if concurrency.strip() and not concurrency.strip().isdigit():
                    raise BadInput(f"concurrency limit must be a whole number, got {concurrency.strip()!r}")
                limit = app.limits.set(
                    kind,
                    name,
                    concurrency=int(concurrency) if concurrency.strip() else None,
                    rate=rate.strip() or None,
                )
                parts = [f"at most {limit.concurrency} running"] if limit.concurrency else []
                parts += [f"at most {limit.rate} starts"] if limit.rate else []
                message = f"{kind} {name}: {' and '.join(parts)}, across all workers"
            elif verb == "clear":
                cleared = app.limits.clear(kind, name)
                message = f"{kind} {name}: {'limits cleared' if cleared else 'had no limit'}"
            else:
                return HTMLResponse("unknown action", status_code=404)
        except LedgerflowError as exc:
            message = str(exc)
        return back(request, "/queues", message)

    @api.get("/dlq", include_in_schema=False)
    def dlq_page(request: Request, flash: str | None = None, confirm: bool = False) -> Response:
        return page(
            request,
            "dlq.html",
            jobs=list_jobs(app.db, state=JobState.DEAD, limit=200),
            flash=flash,
            confirm=confirm,
        )

    @api.post("/dlq/retry", include_in_schema=False)
    def dlq_retry(request: Request, csrf: str = Form(""), confirmed: str = Form("")) -> Response:
        refused = action(request, csrf)
        if refused:
            return refused
        if confirmed != "yes":
            return RedirectResponse("/dlq?confirm=true", status_code=303)
        report = app.store.retry_dead()
        message = "; ".join(
            [f"retried {len(report.retried)} dead job(s)"]
            + [f"job {job_id} not retried: {why}" for job_id, why in sorted(report.refused.items())]
        )
        return RedirectResponse(f"/dlq?{urlencode({'flash': message})}", status_code=303)

    # ------------------------------------------------------------------ pausing queues and tasks
    @api.post("/queues/{name}/{verb}", include_in_schema=False)
    def queue_action(request: Request, name: str, verb: str, csrf: str = Form("")) -> Response:
        return pause_or_resume(request, "queue", name, verb, csrf)

    @api.post("/tasks/{name}/{verb}", include_in_schema=False)
    def task_action(request: Request, name: str, verb: str, csrf: str = Form("")) -> Response:
        return pause_or_resume(request, "task", name, verb, csrf)

    def pause_or_resume(request: Request, what: str, name: str, verb: str, csrf: str) -> Response:
        """Pause or resume a queue or a task type (resuming a task also undoes its auto-stop)."""
        if verb not in ("pause", "resume"):
            return HTMLResponse("unknown action", status_code=404)
        refused = action(request, csrf)
        if refused:
            return refused
        try:
            check_name(name, what)
            if verb == "pause":
                changed = app.store.pause(what, name, "paused from the dashboard", by="dashboard")
                message = f"{what} {name} " + ("paused" if changed else "was already paused")
            else:
                changed = app.store.resume(what, name)
                if changed and what == "task":
                    app.alerts.resolve(f"autostop:{name}", f"task {name} resumed from the dashboard")
                message = f"{what} {name} " + ("resumed" if changed else "was not paused")
        except LedgerflowError as exc:
            message = str(exc)
        return back(request, "/queues", message)

    # ------------------------------------------------------------------ alerts
    @api.get("/alerts", include_in_schema=False)
    def alerts_page(
        request: Request,
        state: str | None = None,
        severity: str | None = None,
        kind: str | None = Query(None, max_length=255),
        before_id: int | None = Query(None, ge=1, le=MAX_ID),
    ) -> Response:
        filters = {"state": state, "severity": severity, "kind": kind}
        filters = {k: v for k, v in filters.items() if v}
        flash = None
        try:
            if state not in (None, "", "open", "resolved"):
                raise BadInput(f"unknown state {state!r} (use open or resolved)")
            found = app.alerts.history(
                50,
                state=state or None,  # type: ignore[arg-type]
                severity=severity or None,
                kind=kind or None,
                before_id=before_id,
            )
        except LedgerflowError as exc:
            found, flash = [], str(exc)
        older = f"/alerts?{urlencode({**filters, 'before_id': found[-1].id})}" if len(found) == 50 else None
        return page(
            request,
            "alerts.html",
            alerts=found,
            filters=filters,
            severities=SEVERITIES,
            older=older,
            flash=flash,
        )

    # ------------------------------------------------------------------ receipts
    @api.get("/receipts", include_in_schema=False)
    def receipts_page(request: Request, status: str = "to_review", flash: str | None = None) -> Response:
        from ledgerflow.receipts.store import ReceiptStore

        store = ReceiptStore(app)
        if status not in RECEIPT_FILTERS:
            status, flash = "to_review", f"unknown status {status!r}"
        if status == "to_review":
            found = sorted(store.list("review", 200) + store.list("draft", 200), key=lambda r: -r.id)
        else:
            found = store.list(None if status == "all" else status, 200)
        return page(
            request, "receipts.html", receipts=found, status=status, counts=store.counts(), flash=flash
        )

    @api.get("/receipts/{receipt_id}", include_in_schema=False)
    def receipt_page(request: Request, receipt_id: RowId, flash: str | None = None) -> Response:
        from ledgerflow.receipts.store import ReceiptStore
        from ledgerflow.receipts.tasks import learned_account

        store = ReceiptStore(app)
        try:
            receipt = store.get(receipt_id)
        except NotFound:
            return page(request, "missing.html", what=f"receipt {receipt_id}")
        return page(
            request,
            "receipt.html",
            receipt=receipt,
            text=store.text(receipt_id),
            sources=store.sources(receipt_id),
            learned=learned_account(app, receipt.vendor),
            default_account=app.settings.receipt_expense_account,
            flash=flash,
        )

    @api.get("/receipts/{receipt_id}/preview", include_in_schema=False)
    def receipt_preview(request: Request, receipt_id: RowId) -> Response:
        """The receipt as an image: a stored JPEG or PNG as it is, a PDF's first page rendered."""
        if session(request) is None:
            return RedirectResponse("/login", status_code=303)
        opened = _receipt_file(app, receipt_id)
        if opened is None:
            return HTMLResponse("no such receipt file", status_code=404)
        file, extension = opened
        if extension in IMAGE_TYPES:
            return StreamingResponse(_chunks(file), media_type=IMAGE_TYPES[extension], headers=PRIVATE)
        with file:
            data = file.read()
        try:
            png = _render_pdf_page(data)
        except ImportError:
            return HTMLResponse("a PDF preview needs the receipts extra (pypdfium2)", status_code=404)
        except Exception:  # a PDF PDFium cannot read: the download link still works
            return HTMLResponse("this PDF cannot be rendered", status_code=404)
        return Response(png, media_type="image/png", headers=PRIVATE)

    @api.get("/receipts/{receipt_id}/file", include_in_schema=False)
    def receipt_file(request: Request, receipt_id: RowId) -> Response:
        """The stored file itself, as a download (never shown inline)."""
        if session(request) is None:
            return RedirectResponse("/login", status_code=303)
        opened = _receipt_file(app, receipt_id)
        if opened is None:
            return HTMLResponse("no such receipt file", status_code=404)
        file, extension = opened
        return StreamingResponse(
            _chunks(file),
            media_type={**IMAGE_TYPES, "pdf": "application/pdf"}[extension],
            headers={
                **PRIVATE,
                "Content-Disposition": f"attachment; filename=receipt-{receipt_id}.{extension}",
            },
        )

    @api.post("/receipts/{receipt_id}/approve", include_in_schema=False)
    def receipt_approve(
        request: Request,
        receipt_id: RowId,
        csrf: str = Form(""),
        total: str = Form(""),
        tax: str = Form(""),
        on: str = Form(""),
        vendor: str = Form(""),
        account: str = Form(""),
        currency: str = Form(""),
        tax_rate: str = Form(""),
    ) -> Response:
        """Approve with the form's values; an empty field keeps what was read (as the CLI)."""
        refused = action(request, csrf)
        if refused:
            return refused
        from ledgerflow.receipts.store import ReceiptStore

        try:
            rate = tax_rate.strip()
            if rate and not rate.isdigit():
                raise BadInput(f"tax rate {rate!r} must be a whole percentage 0-100")
            day = on.strip()
            try:
                booked_on = date.fromisoformat(day) if day else None
            except ValueError:
                raise BadInput(f"date {day!r} must be YYYY-MM-DD") from None
            _, entry = ReceiptStore(app).approve(
                receipt_id,
                total=total.strip() or None,
                tax=tax.strip() or None,
                on=booked_on,
                vendor=vendor.strip() or None,
                account=account.strip() or None,
                currency=currency.strip().upper() or None,
                tax_rate=int(rate) if rate else None,
            )
            message = f"receipt {receipt_id} approved: entry {entry.reference}"
        except LedgerflowError as exc:
            message = str(exc)
        return RedirectResponse(f"/receipts/{receipt_id}?{urlencode({'flash': message})}", status_code=303)

    @api.post("/receipts/{receipt_id}/reject", include_in_schema=False)
    def receipt_reject(
        request: Request, receipt_id: RowId, csrf: str = Form(""), reason: str = Form("")
    ) -> Response:
        refused = action(request, csrf)
        if refused:
            return refused
        from ledgerflow.receipts.store import ReceiptStore

        try:
            why = reason.strip()
            if not why or len(why) > 500:
                raise BadInput("give the reason for rejecting (1-500 characters)")
            ReceiptStore(app).reject(receipt_id, why)
            message = f"receipt {receipt_id} rejected: {why}"
        except LedgerflowError as exc:
            message = str(exc)
        return RedirectResponse(f"/receipts/{receipt_id}?{urlencode({'flash': message})}", status_code=303)

    # ------------------------------------------------------------------ schedules
    @api.get("/schedules", include_in_schema=False)
    def schedules_page(request: Request, flash: str | None = None, remove: str | None = None) -> Response:
        schedules = app.schedules.list()
        rows = []
        for s in schedules:
            last = app.schedules.fires(s.name, 1) if s.id else []
            upcoming = s.next_times(datetime.now(UTC), 3) if s.enabled else []
            rows.append({"schedule": s, "last": last[0] if last else None, "upcoming": upcoming})
        return page(request, "schedules.html", rows=rows, flash=flash, remove=remove)

    def schedule_form(
        request: Request,
        fields: dict[str, str],
        *,
        name: str | None,
        preview: Any = None,
        error: str | None = None,
    ) -> Response:
        return page(
            request,
            "schedule_form.html",
            fields=fields,
            name=name,
            preview=preview,
            error=error,
            tasks=sorted(app.registry.names()),
        )

    def fields_of(schedule: Schedule) -> dict[str, str]:
        return {
            "name": schedule.name,
            "cron": schedule.cron_expression,
            "task": schedule.job_type,
            "timezone": schedule.timezone,
            "args": json.dumps(schedule.args, ensure_ascii=False),
            "kwargs": json.dumps(schedule.kwargs, ensure_ascii=False),
            "queue": schedule.queue,
            "priority": str(schedule.priority),
            "business_day": schedule.business_day or "",
            "holiday_calendar": schedule.holiday_calendar or "",
        }

    def changes_of(fields: dict[str, str]) -> dict[str, Any]:
        """The form's fields as Schedule fields, each checked (one clear error)."""
        if fields.get("task") and fields["task"] not in app.registry:
            raise BadInput(f"task {fields['task']!r} is not registered in this app")
        priority = fields.get("priority", "").strip()
        if priority and not priority.isdigit():
            raise BadInput(f"priority must be 0..9, got {priority!r}")
        return {
            "cron_expression": fields.get("cron", "").strip(),
            "job_type": fields.get("task", ""),
            "timezone": fields.get("timezone", "").strip() or app.settings.timezone,
            "args": _json_field(fields.get("args", ""), "args", list),
            "kwargs": _json_field(fields.get("kwargs", ""), "kwargs", dict),
            "queue": fields.get("queue", "").strip()
            or (app.registry.get(fields["task"]).options.queue if fields.get("task") else "default"),
            "priority": int(priority) if priority else 5,
            "business_day": fields.get("business_day") or None,
            "holiday_calendar": fields.get("holiday_calendar", "").strip().upper() or None,
        }

    @api.get("/schedules/new", include_in_schema=False)
    def new_schedule_form(request: Request) -> Response:
        fields = {"timezone": app.settings.timezone, "args": "[]", "kwargs": "{}"}
        return schedule_form(request, fields, name=None)

    @api.get("/schedules/{name}/edit", include_in_schema=False)
    def edit_schedule_form(request: Request, name: str) -> Response:
        try:
            schedule = app.schedules.get(name)
        except NotFound:
            return page(request, "missing.html", what=f"schedule {name}")
        return schedule_form(request, fields_of(schedule), name=name, preview=schedule.preview())

    async def save_schedule(request: Request, name: str | None) -> Response:
        """Preview (nothing stored) or save the create/edit form; a bad field re-shows the form."""
        form = await request.form()
        refused = action(request, str(form.get("csrf", "")))
        if refused:
            return refused
        fields = {k: str(v) for k, v in form.items() if k not in ("csrf", "intent")}
        try:
            changes = changes_of(fields)
            if name is None:
                candidate = Schedule(name=fields.get("name", "").strip(), **changes)
            else:
                current = app.schedules.get(name)
                candidate = replace(current, **changes)
            if form.get("intent") != "save":
                return schedule_form(request, fields, name=name, preview=candidate.preview())
            stored = app.schedules.add(candidate) if name is None else app.schedules.edit(name, **changes)
        except LedgerflowError as exc:
            return schedule_form(request, fields, name=name, error=str(exc))
        fires = stored.preview(1) if stored.enabled else []
        message = f"schedule {stored.name} saved; next fire {fires[0] if fires else '—'}"
        return RedirectResponse(f"/schedules?{urlencode({'flash': message})}", status_code=303)

    @api.post("/schedules/new", include_in_schema=False)
    async def create_schedule(request: Request) -> Response:
        return await save_schedule(request, None)

    @api.post("/schedules/{name}/edit", include_in_schema=False)
    async def edit_schedule(request: Request, name: str) -> Response:
        return await save_schedule(request, name)

    @api.post("/schedules/{name}/{verb}", include_in_schema=False)
    def schedule_action(
        request: Request, name: str, verb: str, csrf: str = Form(""), confirmed: str = Form("")
    ) -> Response:
        refused = action(request, csrf)
        if refused:
            return refused
        try:
            if verb in ("enable", "disable"):
                app.schedules.set_enabled(name, verb == "enable", "disabled from the dashboard")
                message = f"schedule {name} {verb}d"
            elif verb == "run":
                message = f"schedule {name}: job {app.schedules.run_now(name)['job_id']} enqueued"
            elif verb == "remove":
                if confirmed != "yes":
                    return RedirectResponse(f"/schedules?{urlencode({'remove': name})}", status_code=303)
                app.schedules.remove(name)
                message = f"schedule {name} removed"
            else:
                return HTMLResponse("unknown action", status_code=404)
        except LedgerflowError as exc:
            message = str(exc)
        return RedirectResponse(f"/schedules?{urlencode({'flash': message})}", status_code=303)

    # ------------------------------------------------------------------ exports
    @api.get("/exports", include_in_schema=False)
    def exports_page(request: Request, flash: str | None = None, before: date | None = None) -> Response:
        query = select(export_batches).order_by(
            export_batches.c.batch_date.desc(), export_batches.c.id.desc()
        )
        if before:
            query = query.where(export_batches.c.batch_date < before)
        with app.db.read() as conn:
            batches = [dict(r._mapping) for r in conn.execute(query.limit(30))]
        for batch in batches:
            batch["held_back"] = held_back(batch)
        local = app.settings.export_destination.startswith("file://")
        return page(
            request,
            "exports.html",
            batches=batches,
            flash=flash,
            local=local,
            older=f"/exports?before={batches[-1]['batch_date']}" if len(batches) == 30 else None,
        )

    @api.post("/exports/{day}/rerun", include_in_schema=False)
    def rerun_export(request: Request, day: str, csrf: str = Form("")) -> Response:
        refused = action(request, csrf)
        if refused:
            return refused
        from ledgerflow.api.routes import revive_abandoned
        from ledgerflow.export.tasks import enqueue_daily_export

        try:
            batch_day = date.fromisoformat(day)
            revive_abandoned(app, batch_day)
            with app.db.begin() as conn:  # a retryable day runs now instead of at its next retry time
                conn.execute(
                    export_batches.update()
                    .where(
                        export_batches.c.batch_key == f"daily:{day}", export_batches.c.state == "retryable"
                    )
                    .values(next_retry_at=None)
                )
            job = enqueue_daily_export(app, batch_day)
            if job.state in (JobState.SCHEDULED, JobState.RETRYABLE):
                app.store.retry(job.id)
            message = f"export {day} queued (job {job.id})"
        except (LedgerflowError, ValueError) as exc:
            message = str(exc)
        return back(request, "/exports", message)

    @api.get("/exports/{batch_id}/files/{name}", include_in_schema=False)
    def download(request: Request, batch_id: RowId, name: str) -> Response:
        if session(request) is None:
            return RedirectResponse("/login", status_code=303)
        with app.db.read() as conn:
            batch = conn.execute(
                select(export_batches.c.files, export_batches.c.destination).where(
                    export_batches.c.id == batch_id
                )
            ).first()
        match = next((f for f in (batch.files if batch else []) or [] if f["name"] == name), None)
        if batch is None or match is None or not match.get("remote_id"):
            return HTMLResponse("no such file", status_code=404)
        destination = open_destination(batch.destination)
        if not isinstance(destination, LocalFolder):
            return HTMLResponse("only files in a local destination folder can be downloaded here", 404)
        opened = open_inside(destination.directory, Path(match["remote_id"]))
        if opened is None:
            return HTMLResponse("this file is not a plain file inside the destination folder", 404)
        media = "text/csv" if name.endswith(".csv") else "application/json"
        return StreamingResponse(
            _chunks(opened),
            media_type=media,
            headers={"Content-Disposition": f"attachment; filename*=UTF-8''{quote(name)}"},
        )


JOB_FILTER_FIELDS = (
    "state",
    "queue",
    "task",
    "search",
    "error",
    "older_than",
    "enqueued_after",
    "enqueued_before",
    "finished_after",
    "finished_before",
)
#: How the jobs page names its time fields in an error.
TIME_LABELS = {
    "enqueued_after": "enqueued from",
    "enqueued_before": "enqueued before",
    "finished_after": "finished from",
    "finished_before": "finished before",
}
PAST = {"cancel": "cancelled", "retry": "retried", "delete": "deleted"}


def _json_field(value: str, field: str, kind: type) -> Any:
    """A form field holding a JSON array or object (empty: an empty one)."""
    if not value.strip():
        return kind()
    try:
        parsed = json.loads(value)
    except (json.JSONDecodeError, RecursionError):
        raise BadInput(f"{field} is not valid JSON") from None
    if not isinstance(parsed, kind):
        raise BadInput(f"{field} must be a JSON {'array' if kind is list else 'object'}")
    return parsed


RECEIPT_FILTERS = ("to_review", "review", "draft", "received", "approved", "rejected", "all")
IMAGE_TYPES = {"jpg": "image/jpeg", "jpeg": "image/jpeg", "png": "image/png"}
PRIVATE = {"Cache-Control": "private, no-store", "X-Content-Type-Options": "nosniff"}
SHA256 = re.compile(r"[0-9a-f]{64}")


def _receipt_file(app: App, receipt_id: int) -> tuple[BinaryIO, str] | None:
    """The receipt's stored file opened for reading, with its extension — only a PDF, JPEG or
    PNG kept under its content address inside the receipts folder (no symlink), else None."""
    from ledgerflow.receipts.store import ReceiptStore

    store = ReceiptStore(app)
    try:
        receipt = store.get(receipt_id)
    except NotFound:
        return None
    extension = receipt.extension.lower()
    if extension not in (*IMAGE_TYPES, "pdf") or not SHA256.fullmatch(receipt.sha256):
        return None
    path = store.path(receipt)
    opened = open_inside(store.root / receipt.sha256[:2], path)
    return (opened, extension) if opened is not None else None


def _render_pdf_page(data: bytes, width: int = 1000) -> bytes:
    """The first page of a PDF as a PNG about `width` pixels wide (PDFium, from the receipts extra)."""
    import io

    import pypdfium2

    pdf = pypdfium2.PdfDocument(data)
    try:
        first = pdf[0]
        scale = max(0.5, min(4.0, width / max(first.get_width(), 1)))
        image = first.render(scale=scale).to_pil()
    finally:
        pdf.close()
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def open_inside(directory: Path, path: Path) -> BinaryIO | None:
    """`path` opened for reading if it is a regular file directly in `directory` — not a symlink,
    and not resolving anywhere else — else None. Opened without following a symlink, so a file
    swapped for one after the check is refused too."""
    if path.parent != directory or path.resolve().parent != directory.resolve():
        return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return None
    return os.fdopen(fd, "rb")


def _chunks(file: BinaryIO, size: int = 64 * 1024) -> Iterator[bytes]:
    with file:
        while chunk := file.read(size):
            yield chunk


def _local(target: str) -> str:
    """Only redirect within this site."""
    return target if target.startswith("/") and not target.startswith("//") else "/"


def _set_cookie(request: Request, response: Response, cookie: str) -> None:
    host = request.url.hostname or ""
    secure = request.url.scheme == "https" or host in ("localhost", "127.0.0.1", "::1")
    response.set_cookie(
        SESSION_COOKIE,
        cookie,
        max_age=SESSION_SECONDS,
        httponly=True,
        secure=secure,
        samesite="strict",
        path="/",
    )
