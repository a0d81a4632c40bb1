"""`ledgerflow schedules …` and `ledgerflow scheduler`."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Annotated, Any

import typer

from ledgerflow.cli.context import console, fmt_time, print_json, print_table, state
from ledgerflow.cli.jobs import _parse_json
from ledgerflow.errors import BadInput
from ledgerflow.scheduler.schedules import Schedule

Json = Annotated[bool, typer.Option("--json", help="One JSON document on stdout.")]
schedules_cli = typer.Typer(
    help="Cron schedules: list, add, edit, enable, disable, remove, run, next, fires.", no_args_is_help=True
)


def register(cli: typer.Typer) -> None:
    cli.add_typer(schedules_cli, name="schedules")
    cli.command("scheduler")(scheduler)


def scheduler(
    tick: Annotated[float, typer.Option("--tick", help="Seconds between passes.")] = 1.0,
    app_ref: Annotated[str | None, typer.Option("--app")] = None,
) -> None:
    """Run a scheduler process (any number may run at once: each fire still runs once)."""
    from ledgerflow.clock import clock_from_env

    if tick <= 0:
        raise BadInput(f"--tick must be > 0, got {tick}")
    state.app(app_ref).run_scheduler(clock_from_env(), tick)


@schedules_cli.command("list")
def list_schedules(as_json: Json = False) -> None:
    """All schedules with their next fire time."""
    schedules = state.app().schedules.list()
    if as_json:
        print_json([s.to_dict() for s in schedules])
        return
    print_table(
        ["name", "cron", "zone", "task", "enabled", "next fire", "last fire", "note"],
        [
            [
                s.name,
                s.cron_expression,
                s.timezone,
                s.job_type,
                s.enabled,
                fmt_time(s.next_fire_time.astimezone(s.tz) if s.next_fire_time else None),
                fmt_time(s.last_fire_time.astimezone(s.tz) if s.last_fire_time else None),
                s.disabled_reason or "",
            ]
            for s in schedules
        ],
    )


@schedules_cli.command("add")
def add(
    name: str,
    cron: Annotated[str, typer.Option("--cron", help="5-field cron, e.g. '0 18 * * *' or '0 1 L * *'.")],
    task: Annotated[str, typer.Option("--task", help="Registered task name.")],
    args: Annotated[str, typer.Option("--args", help="JSON array (or @FILE holding it).")] = "[]",
    kwargs: Annotated[str, typer.Option("--kwargs", help="JSON object (or @FILE holding it).")] = "{}",
    timezone: Annotated[
        str | None, typer.Option("--timezone", help="IANA zone (default LEDGERFLOW_TIMEZONE).")
    ] = None,
    queue: Annotated[str | None, typer.Option("--queue")] = None,
    priority: Annotated[int | None, typer.Option("--priority")] = None,
    misfire: Annotated[
        str, typer.Option("--misfire", help="skip (run the latest missed once) or all.")
    ] = "skip",
    misfire_max: Annotated[int, typer.Option("--misfire-max", help="Most missed fires caught up.")] = 24,
    allow_overlap: Annotated[
        bool, typer.Option("--allow-overlap", help="Fire even while the last run runs.")
    ] = False,
    holidays: Annotated[
        str | None, typer.Option("--holidays", help="Holiday calendar, e.g. TH or JP.")
    ] = None,
    extra_holidays: Annotated[
        str | None, typer.Option("--extra-holidays", help="YYYY-MM-DD,YYYY-MM-DD")
    ] = None,
    business_day: Annotated[
        str | None, typer.Option("--business-day", help="next, previous or skip.")
    ] = None,
    disabled: Annotated[bool, typer.Option("--disabled", help="Create it disabled.")] = False,
    as_json: Json = False,
) -> None:
    """Add a schedule (a duplicate name is refused)."""
    app = state.app()
    t = app.registry.get(task)
    extra = _extra_holidays(extra_holidays) if extra_holidays else ()
    schedule = Schedule(
        name=name,
        cron_expression=cron,
        job_type=t.name,
        timezone=timezone or app.settings.timezone,
        args=_parse_json(args, "--args", list),
        kwargs=_parse_json(kwargs, "--kwargs", dict),
        queue=t.options.queue if queue is None else queue,
        priority=t.options.priority if priority is None else priority,
        enabled=not disabled,
        misfire_policy=misfire,
        misfire_max=misfire_max,
        allow_overlap=allow_overlap,
        holiday_calendar=holidays.upper() if holidays else None,
        extra_holidays=extra,
        business_day=business_day,
        disabled_reason="disabled by user" if disabled else None,
    )
    _show_stored(app.schedules.add(schedule), "added", as_json)


def _show_stored(stored: Schedule, done: str, as_json: bool) -> None:
    """The schedule just stored, with its next 5 run times (`next_fires` in JSON)."""
    fires = stored.preview() if stored.enabled else []
    if as_json:
        print_json({**stored.to_dict(), "next_fires": fires})
        return
    console.print(f"{done} schedule {stored.name}: {stored.describe()}", highlight=False)
    if not stored.enabled:
        console.print(f"disabled ({stored.disabled_reason or 'by user'}): it does not fire", highlight=False)
    else:
        console.print(f"next {len(fires)} fires:", highlight=False)
        typer.echo("\n".join(f"  {t}" for t in fires))


def _extra_holidays(value: str) -> tuple[date, ...]:
    try:
        return tuple(date.fromisoformat(d.strip()) for d in value.split(",") if d.strip())
    except ValueError as exc:
        raise BadInput(f"--extra-holidays: {exc}") from None


@schedules_cli.command("edit")
def edit(
    name: str,
    cron: Annotated[str | None, typer.Option("--cron", help="5-field cron.")] = None,
    task: Annotated[str | None, typer.Option("--task", help="Registered task name.")] = None,
    args: Annotated[str | None, typer.Option("--args", help="JSON array (or @FILE holding it).")] = None,
    kwargs: Annotated[str | None, typer.Option("--kwargs", help="JSON object (or @FILE holding it).")] = None,
    timezone: Annotated[str | None, typer.Option("--timezone", help="IANA zone.")] = None,
    queue: Annotated[str | None, typer.Option("--queue")] = None,
    priority: Annotated[int | None, typer.Option("--priority")] = None,
    misfire: Annotated[str | None, typer.Option("--misfire", help="skip or all.")] = None,
    misfire_max: Annotated[int | None, typer.Option("--misfire-max")] = None,
    allow_overlap: Annotated[
        bool | None, typer.Option("--allow-overlap/--no-overlap", help="Fire while the last run runs.")
    ] = None,
    holidays: Annotated[
        str | None, typer.Option("--holidays", help="Holiday calendar, e.g. TH; '' removes it.")
    ] = None,
    extra_holidays: Annotated[
        str | None, typer.Option("--extra-holidays", help="YYYY-MM-DD,...; '' removes them.")
    ] = None,
    business_day: Annotated[
        str | None, typer.Option("--business-day", help="next, previous or skip; '' removes it.")
    ] = None,
    as_json: Json = False,
) -> None:
    """Change some fields of a schedule (the others are kept); a new timing applies from now.
    Prints the next 5 fire times."""
    app = state.app()
    changes: dict[str, Any] = {}
    if cron is not None:
        changes["cron_expression"] = cron
    if task is not None:
        changes["job_type"] = app.registry.get(task).name
    if args is not None:
        changes["args"] = _parse_json(args, "--args", list)
    if kwargs is not None:
        changes["kwargs"] = _parse_json(kwargs, "--kwargs", dict)
    for key, value in (
        ("timezone", timezone),
        ("queue", queue),
        ("priority", priority),
        ("misfire_policy", misfire),
        ("misfire_max", misfire_max),
        ("allow_overlap", allow_overlap),
    ):
        if value is not None:
            changes[key] = value
    if holidays is not None:
        changes["holiday_calendar"] = holidays.upper() or None
    if extra_holidays is not None:
        changes["extra_holidays"] = _extra_holidays(extra_holidays)
    if business_day is not None:
        changes["business_day"] = business_day or None
    if not changes:
        raise BadInput("nothing to change: give at least one option (see --help)")
    _show_stored(app.schedules.edit(name, **changes), "edited", as_json)


@schedules_cli.command("enable")
def enable(name: str) -> None:
    """Enable a schedule (it fires from now on; missed fires are not owed)."""
    s = state.app().schedules.set_enabled(name, True)
    upcoming = fmt_time(s.next_fire_time.astimezone(s.tz)) if s.next_fire_time else "-"
    console.print(f"schedule {name} enabled; next fire {upcoming}")


@schedules_cli.command("disable")
def disable(name: str, reason: Annotated[str, typer.Option("--reason")] = "disabled by user") -> None:
    """Disable a schedule (`schedules run` still works)."""
    state.app().schedules.set_enabled(name, False, reason)
    console.print(f"schedule {name} disabled")


@schedules_cli.command("remove")
def remove(name: str) -> None:
    """Delete a schedule and its fire records."""
    state.app().schedules.remove(name)
    console.print(f"schedule {name} removed")


@schedules_cli.command("run")
def run(
    name: str,
    run_id: Annotated[str | None, typer.Option("--run-id", help="Idempotency key of this run.")] = None,
    as_json: Json = False,
) -> None:
    """Trigger one run now, even while disabled (once per --run-id)."""
    result = state.app().schedules.run_now(name, run_id)
    print_json(result) if as_json else console.print(
        f"schedule {name}: enqueued job {result['job_id']} (run id {result['run_key']})"
    )


@schedules_cli.command("next")
def next_fires(
    name: str,
    n: Annotated[int, typer.Option("-n", help="How many fire times.")] = 5,
    after: Annotated[
        str | None, typer.Option("--after", help="ISO 8601 instant (naive: the schedule's zone).")
    ] = None,
    as_json: Json = False,
) -> None:
    """The next N fire times after now (or --after), one per line, in the schedule's zone."""
    if n < 1:
        raise BadInput(f"-n must be >= 1, got {n}")
    schedule = state.app().schedules.get(name)
    if after is None:
        start = datetime.now(UTC)
    else:
        try:
            start = datetime.fromisoformat(after)
        except ValueError:
            raise BadInput(f"--after {after!r} is not an ISO 8601 date-time") from None
        if start.tzinfo is None:
            start = start.replace(tzinfo=schedule.tz)
    try:
        fires = schedule.next_times(start, n)
    except OverflowError:
        raise BadInput(f"--after {after!r}: no fire times can be computed past the year 9999") from None
    times = [t.astimezone(schedule.tz).isoformat(timespec="seconds") for t in fires]
    if as_json:
        print_json(times)
    else:
        typer.echo("\n".join(times))


@schedules_cli.command("fires")
def fires(
    name: str,
    status: Annotated[str | None, typer.Option("--status", help="enqueued|skipped|missed")] = None,
    limit: Annotated[int, typer.Option("--limit")] = 50,
    as_json: Json = False,
) -> None:
    """Every fire of a schedule, including the missed and skipped ones, with the reason."""
    rows = state.app().schedules.fires(name, limit, status)
    if as_json:
        print_json(rows)
        return
    print_table(
        ["fire time", "trigger", "status", "reason", "job", "job state", "finished"],
        [
            [
                fmt_time(r["fire_time"]),
                r["trigger"],
                r["status"],
                r["reason"] or "",
                r["job_id"],
                r["job_state"],
                fmt_time(r["finished_at"]),
            ]
            for r in rows
        ],
    )


@schedules_cli.command("history")
def history(name: str, limit: Annotated[int, typer.Option("--limit")] = 50, as_json: Json = False) -> None:
    """Execution history of the schedule's jobs (one row per attempt)."""
    rows = state.app().schedules.history(name, limit)
    if as_json:
        print_json(rows)
        return
    print_table(
        ["fire time", "job", "attempt", "status", "started", "completed", "seconds", "error"],
        [
            [
                fmt_time(r["fire_time"]),
                r["job_id"],
                r["attempt"],
                r["status"],
                fmt_time(r["started_at"]),
                fmt_time(r["completed_at"]),
                r["duration_seconds"],
                r["error_message"] or "",
            ]
            for r in rows
        ],
    )
