"""Commands on jobs, the dead-letter queue, queues and task types."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any
from zoneinfo import ZoneInfo

import typer

from ledgerflow.cli.context import console, fmt_time, print_json, print_table, state
from ledgerflow.db.types import MAX_ID
from ledgerflow.engine.jobs import Job, JobSpec
from ledgerflow.engine.progress import describe_progress
from ledgerflow.engine.search import Action, JobFilter, parse_age, parse_instant
from ledgerflow.engine.search import enqueued_before as enqueued_before_bound
from ledgerflow.engine.states import JobState
from ledgerflow.errors import BadInput, NotFound
from ledgerflow.names import check_name

Json = Annotated[bool, typer.Option("--json", help="One JSON document on stdout.")]
JobId = Annotated[int, typer.Argument(min=1, max=MAX_ID, help="Job id.")]

jobs_cli = typer.Typer(help="Enqueue, list, inspect, retry and cancel jobs.", no_args_is_help=True)
dlq_cli = typer.Typer(help="The dead-letter queue: jobs whose attempts are exhausted.", no_args_is_help=True)
queues_cli = typer.Typer(help="List, pause, resume and limit queues.", no_args_is_help=True)
tasks_cli = typer.Typer(
    help="List, pause, resume and limit task types (auto-stop is undone here).", no_args_is_help=True
)
Concurrency = Annotated[
    int | None,
    typer.Argument(min=1, max=100_000, help="At most this many running at once, across all workers."),
]
Rate = Annotated[
    str | None, typer.Option("--rate", help="At most N starts per period: 60/minute, 10/30s, 1000/hour.")
]
Clear = Annotated[bool, typer.Option("--clear", help="Remove every limit.")]


def register(cli: typer.Typer) -> None:
    cli.add_typer(jobs_cli, name="jobs")
    cli.add_typer(dlq_cli, name="dlq")
    cli.add_typer(queues_cli, name="queues")
    cli.add_typer(tasks_cli, name="tasks")


def _parse_json(value: str, option: str, kind: type) -> Any:
    """`value` — JSON text, or `@FILE` to read it from a file — as a JSON array or object."""
    if value.startswith("@"):  # no JSON text starts with @
        path = Path(value[1:])
        try:
            value = path.read_text("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise BadInput(f"{option} {str(path)!r}: cannot read it ({reason})") from None
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as exc:
        raise BadInput(f"{option} is not valid JSON: {exc.msg} (at char {exc.pos})") from None
    except RecursionError:
        raise BadInput(f"{option}: JSON nested too deeply to read") from None
    if not isinstance(parsed, kind):
        shown = value if len(value) <= 80 else value[:80] + "…"
        raise BadInput(f"{option} must be a JSON {'array' if kind is list else 'object'}, got {shown!r}")
    return parsed


def _ids(value: str | None, option: str) -> tuple[int, ...]:
    """`12,13` as job ids."""
    if not value:
        return ()
    ids = []
    for part in value.split(","):
        part = part.strip()
        if not part.isdigit() or not 1 <= int(part) <= MAX_ID:
            raise BadInput(f"{option}: {part!r} is not a job id")
        ids.append(int(part))
    return tuple(ids)


def _job_rows(jobs: list[Job]) -> list[list[Any]]:
    return [
        [
            j.id,
            j.task,
            j.queue,
            j.priority,
            j.state,
            f"{j.attempt}/{j.max_attempts}",
            fmt_time(j.scheduled_at),
            (j.errors[-1].message[:60] if j.errors else ""),
        ]
        for j in jobs
    ]


JOB_COLUMNS = ["id", "task", "queue", "prio", "state", "attempt", "scheduled_at", "last error"]


@jobs_cli.command("enqueue")
def enqueue(
    task: Annotated[str, typer.Argument(help="Registered task name.")],
    args: Annotated[
        str, typer.Option("--args", help="JSON array of positional arguments (or @FILE holding it).")
    ] = "[]",
    kwargs: Annotated[
        str, typer.Option("--kwargs", help="JSON object of keyword arguments (or @FILE holding it).")
    ] = "{}",
    queue: Annotated[str | None, typer.Option("--queue")] = None,
    priority: Annotated[int | None, typer.Option("--priority", help="0 (highest) .. 9")] = None,
    unique_key: Annotated[str | None, typer.Option("--unique-key")] = None,
    unique_for: Annotated[
        float | None,
        typer.Option("--unique-for", help="Seconds during which --unique-key also covers completed jobs."),
    ] = None,
    delay: Annotated[float | None, typer.Option("--delay", help="Seconds before it may run.")] = None,
    scheduled_at: Annotated[
        str | None,
        typer.Option("--scheduled-at", help="Not before this ISO 8601 time (no offset: the app's zone)."),
    ] = None,
    max_attempts: Annotated[int | None, typer.Option("--max-attempts")] = None,
    timeout: Annotated[float | None, typer.Option("--timeout", help="Seconds per attempt.")] = None,
    depends_on: Annotated[
        str | None, typer.Option("--depends-on", help="Job ids that must complete first: 12,13.")
    ] = None,
    as_json: Json = False,
) -> None:
    """Enqueue one job of TASK (options not given: the task's defaults)."""
    app = state.app()
    t = app.registry.get(task)
    parsed_args = _parse_json(args, "--args", list)
    parsed_kwargs = _parse_json(kwargs, "--kwargs", dict)
    o = t.options
    spec = JobSpec(
        task=t.name,
        args=tuple(parsed_args),
        kwargs=parsed_kwargs,
        queue=o.queue if queue is None else queue,
        priority=o.priority if priority is None else priority,
        max_attempts=o.max_attempts if max_attempts is None else max_attempts,
        timeout=o.timeout if timeout is None else timeout,
        unique_key=unique_key,
        unique_for=unique_for,
        delay=delay,
        scheduled_at=_instant(scheduled_at, "--scheduled-at"),
        depends_on=_ids(depends_on, "--depends-on"),
    )
    job = app.enqueue(spec)
    if as_json:
        print_json(job)
    else:
        console.print(f"enqueued job {job.id} ({job.task}, queue {job.queue}, state {job.state})")


StateOpt = Annotated[
    str | None,
    typer.Option(
        "--state", help="scheduled|available|running|retryable|completed|dead|cancelled (comma-separated)"
    ),
]
QueueOpt = Annotated[str | None, typer.Option("--queue")]
TaskOpt = Annotated[str | None, typer.Option("--task")]
SearchOpt = Annotated[
    str | None, typer.Option("--search", help="Text in the args or kwargs (3+ characters, any case).")
]
ErrorOpt = Annotated[
    str | None, typer.Option("--error-contains", help="Text in the errors of failed attempts (3+ chars).")
]
OlderOpt = Annotated[
    str | None, typer.Option("--older-than", help="Enqueued longer ago than this: 30m, 12h, 7d, 2w.")
]
TimeOpt = Annotated[
    str | None,
    typer.Option(
        help="ISO 8601 date-time with its offset (2026-11-30T09:00+07:00, ...Z) or a date "
        "(2026-11-30: its start in LEDGERFLOW_TIMEZONE)."
    ),
]


def _instant(value: str | None, option: str) -> datetime | None:
    """`--scheduled-at`: ISO 8601; without an offset, in LEDGERFLOW_TIMEZONE."""
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise BadInput(f"{option} {value!r} is not an ISO 8601 date or date-time") from None
    if parsed.tzinfo is None:
        zone = ZoneInfo(state.app().settings.timezone)
        local, parsed = parsed, parsed.replace(tzinfo=zone)
        if parsed.astimezone(UTC).astimezone(zone).replace(tzinfo=None) != local:
            raise BadInput(
                f"{option} {value!r} does not exist in {zone} (the clocks skip it): give its UTC offset"
            )
        if parsed.utcoffset() != parsed.replace(fold=1).utcoffset():
            offsets = sorted({_offset(parsed), _offset(parsed.replace(fold=1))})
            raise BadInput(
                f"{option} {value!r} happens twice in {zone} (the clocks go back): "
                f"give its UTC offset ({' or '.join(offsets)})"
            )
    return parsed


def _offset(moment: datetime) -> str:
    return moment.isoformat()[-6:]


def _bound(value: str | None, option: str) -> datetime | None:
    """A filter's time bound: a date or a date-time with its offset (`parse_instant`)."""
    if value is None:
        return None
    return parse_instant(value, option, ZoneInfo(state.app().settings.timezone))


def job_filter(
    states: str | None,
    queue: str | None,
    task: str | None,
    search: str | None,
    error: str | None,
    older_than: str | None,
    enqueued_after: str | None,
    enqueued_before: str | None,
    finished_after: str | None,
    finished_before: str | None,
) -> JobFilter:
    """A JobFilter from the CLI's filter options (each checked, one clear error)."""
    age = parse_age(older_than, "--older-than") if older_than is not None else None
    before = _bound(enqueued_before, "--enqueued-before")
    if age is not None and before is not None:
        raise BadInput("give --older-than or --enqueued-before, not both")
    return JobFilter(
        states=tuple(s.strip() for s in states.split(",") if s.strip()) if states else (),  # type: ignore[misc]
        queue=queue,
        task=task,
        text=search,
        error=error,
        enqueued_after=_bound(enqueued_after, "--enqueued-after"),
        enqueued_before=enqueued_before_bound(age, before),
        finished_after=_bound(finished_after, "--finished-after"),
        finished_before=_bound(finished_before, "--finished-before"),
    )


@jobs_cli.command("list")
def list_jobs(
    state_: StateOpt = None,
    queue: QueueOpt = None,
    task: TaskOpt = None,
    search: SearchOpt = None,
    error_contains: ErrorOpt = None,
    older_than: OlderOpt = None,
    enqueued_after: TimeOpt = None,
    enqueued_before: TimeOpt = None,
    finished_after: TimeOpt = None,
    finished_before: TimeOpt = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000)] = 50,
    before_id: Annotated[
        int | None, typer.Option("--before-id", min=1, max=MAX_ID, help="Page: jobs with a smaller id.")
    ] = None,
    as_json: Json = False,
) -> None:
    """List jobs, newest first; the filters (all optional) must all hold."""
    filt = job_filter(
        state_,
        queue,
        task,
        search,
        error_contains,
        older_than,
        enqueued_after,
        enqueued_before,
        finished_after,
        finished_before,
    )
    jobs = state.app().store.find(filt, limit=limit, before_id=before_id)
    if as_json:
        print_json([j.to_dict() for j in jobs])
    else:
        print_table(JOB_COLUMNS, _job_rows(jobs))


@jobs_cli.command("show")
def show(job_id: JobId, as_json: Json = False) -> None:
    """Show one job with its errors and execution history."""
    app = state.app()
    job = app.store.get(job_id)
    executions = app.store.executions(job_id)
    progress = executions[-1]["execution_metadata"] if executions else None
    if as_json:
        print_json({**job.to_dict(), "progress": progress, "executions": executions})
        return
    for key, value in job.to_dict().items():
        if key != "errors":
            console.print(f"[bold]{key}[/bold]: {value}", highlight=False)
    if progress:
        console.print(f"[bold]progress[/bold]: {describe_progress(progress)}", highlight=False)
    for e in job.errors:
        console.print(f"[red]attempt {e.attempt}[/red] {e.type}: {e.message}", highlight=False)
        if e.traceback:
            console.print(e.traceback, markup=False, highlight=False)
    print_table(
        ["attempt", "status", "worker", "started", "completed", "seconds", "error"],
        [
            [
                x["attempt"],
                x["status"],
                x["worker_id"],
                fmt_time(x["started_at"]),
                fmt_time(x["completed_at"]),
                x["duration_seconds"],
                x["error_type"],
            ]
            for x in executions
        ],
        title="executions",
    )


def _bulk(
    action: Action,
    job_filter_: JobFilter,
    *,
    yes: bool,
    dry_run: bool,
    as_json: bool,
    reason: str | None = None,
) -> None:
    """Count what `action` would touch, ask (unless --yes), then do it and say how many moved."""
    store = state.app().store
    preview = store.bulk(action, job_filter_, dry_run=True)
    past = {"cancel": "cancelled", "retry": "retried", "delete": "deleted"}[action]
    if dry_run:
        if as_json:
            print_json(preview.to_dict())
        else:
            console.print(f"{preview.matched} job(s) match; {preview.count} would be {past}")
        return
    if not yes:
        console.print(f"{preview.matched} job(s) match; {preview.count} can be {past}")
        if not preview.count or not typer.confirm(f"{action.capitalize()} {preview.count} job(s)?"):
            raise typer.Exit(0 if not preview.count else 1)
    done = store.bulk(action, job_filter_, reason=reason)
    print_json(done.to_dict()) if as_json else console.print(f"{past} {done.count} job(s)")


def _bulk_command(action: Action, summary: str) -> Any:
    """A `jobs <action>` command: one job by id, or every job the filter options match."""

    def command(
        job_id: Annotated[
            int | None, typer.Argument(min=1, max=MAX_ID, help="One job; omit it to use the filters.")
        ] = None,
        state_: StateOpt = None,
        queue: QueueOpt = None,
        task: TaskOpt = None,
        search: SearchOpt = None,
        error_contains: ErrorOpt = None,
        older_than: OlderOpt = None,
        enqueued_after: TimeOpt = None,
        enqueued_before: TimeOpt = None,
        finished_after: TimeOpt = None,
        finished_before: TimeOpt = None,
        reason: Annotated[str | None, typer.Option("--reason", help="Kept on cancelled jobs.")] = None,
        dry_run: Annotated[bool, typer.Option("--dry-run", help="Only count the jobs.")] = False,
        yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
        as_json: Json = False,
    ) -> None:
        filt = job_filter(
            state_,
            queue,
            task,
            search,
            error_contains,
            older_than,
            enqueued_after,
            enqueued_before,
            finished_after,
            finished_before,
        )
        if job_id is None:
            _bulk(action, filt, yes=yes, dry_run=dry_run, as_json=as_json, reason=reason)
            return
        if not filt.is_empty() or dry_run:
            raise BadInput("give a job id or filter options, not both")
        _one(action, job_id, reason, as_json)

    command.__doc__ = summary
    return jobs_cli.command(action)(command)


def _one(action: Action, job_id: int, reason: str | None, as_json: bool) -> None:
    store = state.app().store
    if action == "delete":
        store.delete(job_id)
        print_json({"deleted": job_id}) if as_json else console.print(f"job {job_id} deleted")
        return
    job = store.retry(job_id) if action == "retry" else store.cancel(job_id, reason or "cancelled by user")
    print_json(job) if as_json else console.print(f"job {job.id} is {job.state}")


_bulk_command(
    "retry",
    "Run a dead, cancelled, retryable or scheduled job again now; or every such job the filters match.",
)
_bulk_command(
    "cancel",
    "Cancel a job that has not finished (its dependents too); or every such job the filters match.",
)
_bulk_command(
    "delete",
    "Delete a finished (completed, dead or cancelled) job; or every finished job the filters match.",
)


@dlq_cli.command("list")
def dlq_list(
    task: Annotated[str | None, typer.Option("--task")] = None,
    limit: Annotated[int, typer.Option("--limit")] = 50,
    as_json: Json = False,
) -> None:
    """List dead jobs."""
    jobs = state.app().store.list(state=JobState.DEAD, task=task, limit=limit)
    if as_json:
        print_json([j.to_dict() for j in jobs])
    else:
        print_table(JOB_COLUMNS, _job_rows(jobs), title="dead-letter queue")


@dlq_cli.command("retry")
def dlq_retry(
    job_id: Annotated[
        int | None, typer.Argument(min=1, max=MAX_ID, help="One dead job; omit with --all.")
    ] = None,
    all_: Annotated[bool, typer.Option("--all", help="Retry every dead job (optionally of --task).")] = False,
    task: Annotated[str | None, typer.Option("--task")] = None,
    as_json: Json = False,
) -> None:
    """Retry one dead job, or all of them; each job not retried is named (exit 1)."""
    app = state.app()
    if job_id is None and not all_:
        raise BadInput("give a job id or --all")
    if job_id is not None:
        job = app.store.get(job_id)
        if job.state != JobState.DEAD:
            raise NotFound(f"job {job_id} is not in the dead-letter queue (it is {job.state})")
        report = app.store.retry_dead(ids=[job_id])
    else:
        report = app.store.retry_dead(task=task)
    if as_json:
        print_json(report.to_dict())
    else:
        console.print(f"retried {len(report.retried)} dead job(s)")
        for refused_id, reason in sorted(report.refused.items()):
            console.print(f"job {refused_id} not retried: {reason}")
    if report.refused:
        raise typer.Exit(1)


@dlq_cli.command("purge")
def dlq_purge(
    older_than_days: Annotated[float | None, typer.Option("--older-than-days")] = None,
    task: Annotated[str | None, typer.Option("--task")] = None,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
    as_json: Json = False,
) -> None:
    """Delete dead jobs for good."""
    from datetime import timedelta

    if not yes and not typer.confirm("Delete dead jobs permanently?"):
        raise typer.Exit(1)
    age = timedelta(days=older_than_days) if older_than_days is not None else None
    count = state.app().store.purge_dead(age, task)
    print_json({"purged": count}) if as_json else console.print(f"purged {count} dead job(s)")


@queues_cli.command("list")
def queues_list(as_json: Json = False) -> None:
    """Queues with their depth (jobs waiting to run), running jobs, pause state and global limits."""
    rows = state.app().store.queue_summary()
    if as_json:
        print_json(rows)
    else:
        print_table(
            ["queue", "depth", "running", "dead", "paused", "limit", "rate"],
            [
                [r["queue"], r["depth"], r["running"], r["dead"], r["paused"], r["limit"], r["rate"]]
                for r in rows
            ],
        )


@queues_cli.command("pause")
def queues_pause(queue: str, reason: Annotated[str, typer.Option("--reason")] = "paused by user") -> None:
    """Stop starting jobs of QUEUE (running ones finish)."""
    changed = state.app().store.pause("queue", check_name(queue, "queue"), reason)
    console.print(f"queue {queue} {'paused' if changed else 'was already paused'}")


@queues_cli.command("resume")
def queues_resume(queue: str) -> None:
    """Start jobs of QUEUE again."""
    changed = state.app().store.resume("queue", check_name(queue, "queue"))
    console.print(f"queue {queue} {'resumed' if changed else 'was not paused'}")


@queues_cli.command("limit")
def queues_limit(
    queue: str,
    concurrency: Concurrency = None,
    rate: Rate = None,
    clear: Clear = False,
    as_json: Json = False,
) -> None:
    """Limit QUEUE across all workers: `queues limit mail 3 [--rate 60/minute]`, or `--clear`."""
    _limit("queue", check_name(queue, "queue"), concurrency, rate, clear, as_json)


@queues_cli.command("limits")
def limits_list(as_json: Json = False) -> None:
    """Every global limit, of queues and of task types, with the jobs running under it."""
    from ledgerflow.engine.limits import running_by_limit

    app = state.app()
    running = running_by_limit(app.db)
    rows = [{**lim.as_dict(), "running": running.get((lim.kind, lim.name), 0)} for lim in app.limits.list()]
    if as_json:
        print_json(rows)
    else:
        print_table(
            ["kind", "name", "concurrency", "running", "rate", "set by"],
            [[r["kind"], r["name"], r["concurrency"], r["running"], r["rate"], r["set_by"]] for r in rows],
        )


def _limit(
    kind: str, name: str, concurrency: int | None, rate: str | None, clear: bool, as_json: bool
) -> None:
    """Set or clear the global limits of a queue or task type, and say what they now are."""
    app = state.app()
    if clear:
        if concurrency is not None or rate is not None:
            raise BadInput("--clear removes every limit: give it without a number or --rate")
        changed = app.limits.clear(kind, name)
        if as_json:
            print_json({"kind": kind, "name": name, "cleared": changed})
        else:
            console.print(f"{kind} {name}: {'limits cleared' if changed else 'had no limit'}")
        return
    from ledgerflow.engine.limits import running_by_limit

    limit = app.limits.set(kind, name, concurrency=concurrency, rate=rate)
    running = running_by_limit(app.db).get((kind, name), 0)
    over = limit.concurrency is not None and running > limit.concurrency
    if as_json:
        print_json({**limit.as_dict(), "running": running, "running_above_limit": over})
        return
    parts = [f"at most {limit.concurrency} running"] if limit.concurrency else []
    parts += [f"at most {limit.rate} starts"] if limit.rate else []
    console.print(f"{kind} {name}: {' and '.join(parts)}, across all workers")
    if over:  # a limit stops new claims; it does not stop what already runs
        console.print(
            f"{running} jobs of {kind} {name} are running now, above the new limit of "
            f"{limit.concurrency}: they run to their end, and no new one starts until fewer than "
            f"{limit.concurrency} run"
        )


@tasks_cli.command("list")
def tasks_list(as_json: Json = False) -> None:
    """Registered tasks, with pause (and auto-stop) state."""
    rows = state.app().task_summary()
    if as_json:
        print_json(rows)
    else:
        print_table(
            ["task", "queue", "paused", "by", "reason"],
            [[r["task"], r["queue"], r["paused"], r["paused_by"], r["reason"]] for r in rows],
        )


@tasks_cli.command("pause")
def tasks_pause(task: str, reason: Annotated[str, typer.Option("--reason")] = "paused by user") -> None:
    """Stop starting jobs of task type TASK."""
    changed = state.app().store.pause("task", check_name(task, "task"), reason)
    console.print(f"task {task} {'paused' if changed else 'was already paused'}")


@tasks_cli.command("resume")
def tasks_resume(task: str) -> None:
    """Start jobs of TASK again (also undoes an auto-stop)."""
    app = state.app()
    changed = app.store.resume("task", check_name(task, "task"))
    if changed:
        app.alerts.resolve(f"autostop:{task}", f"task {task} resumed by user")
    console.print(f"task {task} {'resumed' if changed else 'was not paused'}")


@tasks_cli.command("limit")
def tasks_limit(
    task: str,
    concurrency: Concurrency = None,
    rate: Rate = None,
    clear: Clear = False,
    as_json: Json = False,
) -> None:
    """Limit task type TASK across all workers: `tasks limit bank.fetch 2 [--rate 10/second]`, or `--clear`.

    A limit set here takes precedence over the task's own `global_limit` / `rate_limit`."""
    _limit("task", check_name(task, "task"), concurrency, rate, clear, as_json)
