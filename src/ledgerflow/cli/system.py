"""Commands about the installation itself: init, migrate, worker, prune."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ledgerflow.cli.context import console, print_json, state
from ledgerflow.engine.worker import WorkerExit
from ledgerflow.errors import BadInput

if TYPE_CHECKING:
    from ledgerflow.app import App

AppOption = Annotated[str | None, typer.Option("--app", help="package.module:app (default: LEDGERFLOW_APP).")]


def register(cli: typer.Typer) -> None:
    cli.command("migrate")(migrate)
    cli.command("init")(init)
    cli.command("worker")(worker)
    cli.command("prune")(prune)
    cli.command("demo")(demo)
    cli.command("serve")(serve)


def migrate() -> None:
    """Create or upgrade the database schema."""
    app = state.app()
    app.migrate()
    console.print(f"database schema is up to date ({app.db.backend.name})")


def init() -> None:
    """Create or upgrade the schema and seed the standard schedules."""
    app = state.app()
    app.migrate()
    stored = app.sync_schedules()
    enabled = sum(1 for s in stored if s.enabled)
    console.print(f"database ready ({app.db.backend.name}); {len(stored)} schedule(s), {enabled} enabled")


def worker(
    queues: Annotated[
        str | None, typer.Option("--queues", help="a,b or a=LIMIT (default: every queue of the app's tasks).")
    ] = None,
    concurrency: Annotated[int, typer.Option("--concurrency", "-c", help="Jobs run at once.")] = 8,
    burst: Annotated[bool, typer.Option("--burst", help="Exit when nothing is left to run.")] = False,
    app_ref: AppOption = None,
) -> None:
    """Run a worker process until SIGTERM/SIGINT (or until drained, with --burst)."""
    app, queues = _worker_options(app_ref, queues, concurrency)
    result = app.run_worker(queues, concurrency=concurrency, burst=burst)
    if result == WorkerExit.RESTART:
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(sys.executable, sys.orig_argv)  # a fresh process: abandoned threads are gone


def prune(
    days: Annotated[
        int | None, typer.Option("--days", help="Jobs' age in days (default: LEDGERFLOW_PRUNE_AFTER_DAYS).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Run the daily cleanup now: every kind of record after its retention (see LEDGERFLOW_PRUNE_*)."""
    from ledgerflow.cleanup import Retention
    from ledgerflow.cleanup import prune as prune_all

    app = state.app()
    if days is not None and days < 1:
        raise BadInput(f"--days must be >= 1, got {days}")
    result = prune_all(app, Retention.from_settings(app.settings, days))
    if as_json:
        print_json(result)
    else:
        console.print("pruned " + ", ".join(f"{n} {kind.replace('_', ' ')}" for kind, n in result.items()))


def demo(
    jobs: Annotated[int, typer.Option("--jobs", help="How many demo jobs to run after the export.")] = 500,
    verbose: Annotated[bool, typer.Option("--verbose", help="Log every job as it runs.")] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Load a demo ledger (Thai and Japanese), export today's batch, then run demo jobs."""
    from datetime import UTC, datetime
    from zoneinfo import ZoneInfo

    from rich.progress import Progress

    from ledgerflow.api.token import api_token
    from ledgerflow.api.token import token_file as token_file_of
    from ledgerflow.demo import load_demo_ledger, run_job_demo
    from ledgerflow.export.saga import ExportSaga
    from ledgerflow.logs import configure_logging

    if jobs < 0:
        raise BadInput(f"--jobs must be >= 0, got {jobs}")
    app = state.app()
    if not verbose:  # a summary, not a log line per job
        configure_logging("WARNING", app.settings.log_json)
    app.migrate()
    today = datetime.now(UTC).astimezone(ZoneInfo(app.settings.timezone)).date()
    added = load_demo_ledger(app, today)
    quiet = as_json or not console.is_terminal
    with Progress(console=console, disable=quiet, transient=True) as progress:
        bar = progress.add_task(f"daily export {today}", total=None)
        export = ExportSaga(app).run_daily(
            today,
            revive=True,
            on_progress=lambda done, total: progress.update(bar, completed=done, total=total),
        )
    summary: dict[str, object] = {"entries_added": added, "export": export.to_dict()}
    if jobs:
        with Progress(console=console, disable=quiet, transient=True) as progress:
            bar = progress.add_task("demo jobs", total=jobs)
            summary["jobs"] = run_job_demo(
                app, jobs, lambda done, total: progress.update(bar, completed=done)
            )
    token = api_token(app.settings, create=False)  # None: `serve` makes it on first start
    token_file = token_file_of(app.settings) if token is None else token.file
    summary["token_file"] = str(token_file.resolve()) if token_file else None
    if as_json:
        print_json(summary)
        return
    files = [f.get("link") or f["name"] for f in export.files]
    url = app.db.engine.url
    lines = [
        "database      "
        + (str(Path(url.database or "").resolve()) if app.db.is_sqlite else url.render_as_string()),
        f"demo ledger   {added} new journal entries (Thai and Japanese)",
        f"daily export  {export.batch_date}: {export.state}, {export.entry_count} entries -> "
        + (", ".join(files) or "nothing new to export"),
    ]
    if jobs:
        j = summary["jobs"]
        assert isinstance(j, dict)
        lines.append(
            f"demo jobs     {j['completed']}/{j['jobs']} completed in {j['seconds']} s "
            f"({j['jobs_per_second']} jobs/s)"
        )
    lines.append("dashboard     http://127.0.0.1:8000/ while `ledgerflow serve` runs")
    if token_file is None:
        lines.append("sign in with  LEDGERFLOW_API_TOKEN")
    else:
        made = " (made when `ledgerflow serve` first starts)" if token is None else ""
        lines.append(f"sign in with  the API token in {token_file.resolve()}{made}")
    console.print("\n".join(lines), markup=False, highlight=False)


def serve(
    host: Annotated[str, typer.Option("--host")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535)] = 8000,
    no_worker: Annotated[
        bool, typer.Option("--no-worker", help="Do not run a worker in this process.")
    ] = False,
    no_scheduler: Annotated[bool, typer.Option("--no-scheduler", help="Do not run the scheduler.")] = False,
    queues: Annotated[
        str | None, typer.Option("--queues", help="Worker queues (default: every task's queue).")
    ] = None,
    concurrency: Annotated[int, typer.Option("--concurrency", "-c")] = 8,
    app_ref: AppOption = None,
) -> None:
    """Run the HTTP API, a worker and the scheduler in one process (SIGTERM stops it gracefully)."""
    from ledgerflow.service import serve as run_service

    app, queues = _worker_options(app_ref, queues, concurrency)
    run_service(
        app,
        host=host,
        port=port,
        worker=not no_worker,
        scheduler=not no_scheduler,
        queues=queues,
        concurrency=concurrency,
    )


def _worker_options(app_ref: str | None, queues: str | None, concurrency: int) -> tuple[App, str]:
    """The app, and the queues to serve (default: every queue of its tasks), for worker and serve."""
    if concurrency < 1:
        raise BadInput(f"--concurrency must be >= 1, got {concurrency}")
    app = state.app(app_ref)
    return app, queues if queues is not None else ",".join(app.queues())
