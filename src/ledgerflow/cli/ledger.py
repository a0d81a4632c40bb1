"""`ledgerflow entries …` and `ledgerflow export …`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ledgerflow.cli.context import console, err_console, fmt_time, print_json, print_table, state
from ledgerflow.errors import LedgerflowError
from ledgerflow.ledger.dates import check_not_after_today, parse_day, today_in

Json = Annotated[bool, typer.Option("--json", help="One JSON document on stdout.")]
entries_cli = typer.Typer(help="Journal entries: import, list, show, reverse.", no_args_is_help=True)
export_cli = typer.Typer(help="The daily batch export: run, status, verify.", no_args_is_help=True)


class OperationFailed(LedgerflowError):
    """The command ran but its operation did not succeed (exit code 1)."""


def register(cli: typer.Typer) -> None:
    cli.add_typer(entries_cli, name="entries")
    cli.add_typer(export_cli, name="export")


@entries_cli.command("import")
def import_entries(
    file: Path,
    upsert: Annotated[
        bool,
        typer.Option(
            "--upsert", help="Replace entries with the same reference that never reached the books."
        ),
    ] = False,
    as_json: Json = False,
) -> None:
    """Import a JSON list, JSON lines (.jsonl) or CSV file; all of it or nothing."""
    stored = state.app().ledger.import_file(file, upsert=upsert)
    if as_json:
        print_json({"imported": len(stored), "references": [e.reference for e in stored]})
    else:
        console.print(f"imported {len(stored)} entr{'y' if len(stored) == 1 else 'ies'} from {file}")


@entries_cli.command("list")
def list_entries(
    status: Annotated[str | None, typer.Option("--status", help="queued|processing|completed|failed")] = None,
    limit: Annotated[int, typer.Option("--limit")] = 50,
    as_json: Json = False,
) -> None:
    """Recent entries with their export status."""
    rows = state.app().ledger.list(limit=limit, status=status)
    if as_json:
        print_json(rows)
        return
    print_table(
        ["reference", "date", "description", "total", "currency", "path", "export", "file"],
        [
            [
                r["reference"],
                r["entry_date"],
                r["description"][:40],
                r["debit_total"],
                r["currency"],
                r["export_path"],
                r["export_status"],
                r["file_link"] or "",
            ]
            for r in rows
        ],
    )


@entries_cli.command("show")
def show(reference: str, as_json: Json = False) -> None:
    """One entry with its lines and export status."""
    app = state.app()
    entry = app.ledger.get(reference)
    status = app.ledger.export_status(reference)
    if as_json:
        print_json({**entry.to_dict(), "export": status})
        return
    console.print(f"{entry.reference}  {entry.date}  {entry.currency}  {entry.description}", markup=False)
    d = entry.to_dict()
    print_table(
        ["account", "name", "debit", "credit", "tax", "memo"],
        [
            [ln["account"], ln["account_name"], ln["debit"], ln["credit"], ln["tax_code"], ln["memo"]]
            for ln in d["lines"]
        ],
    )
    console.print(f"export: {status['status']}  {status.get('file_link') or ''}", markup=False)


@entries_cli.command("reverse")
def reverse(
    reference: str,
    on: Annotated[
        str | None,
        typer.Option(
            "--date", help="Date of the reversal, YYYY-MM-DD (default: today; never before the entry)."
        ),
    ] = None,
    as_json: Json = False,
) -> None:
    """Record the entry that cancels exported entry REFERENCE (an exported entry is never edited)."""
    entry = state.app().ledger.reverse(reference, parse_day(on, "--date") if on else None)
    print_json(entry.to_dict()) if as_json else console.print(
        f"recorded {entry.reference} reversing {reference}, queued for the next batch"
    )


@export_cli.command("run")
def run(
    on: Annotated[
        str | None,
        typer.Option(
            "--date",
            help="Batch date D, YYYY-MM-DD, not after today (default: today in LEDGERFLOW_TIMEZONE).",
        ),
    ] = None,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Write a DRYRUN- preview to a local folder and show counts; send and mark nothing.",
        ),
    ] = False,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Folder for --dry-run files, outside the destination "
            "(default: dry-run/ in LEDGERFLOW_EXPORT_WORK_DIR's ledgerflow-export folder).",
        ),
    ] = None,
    as_json: Json = False,
) -> None:
    """Export batch D now: exactly once, whatever else runs at the same time.

    Exits 1 if the batch did not complete, or if entries were held back from it (each is named
    with the reason: correct it with `entries import --upsert`)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from ledgerflow.export.saga import ExportSaga, work_root

    app = state.app()
    zone = app.settings.timezone
    day = check_not_after_today(parse_day(on, "--date"), zone, "--date") if on else today_in(zone)
    saga = ExportSaga(app)
    if dry_run:
        directory = out or work_root(app.settings) / "dry-run"
        result = saga.dry_run(day, directory)
        if as_json:
            print_json(result.to_dict())
            return
        if result.delivered:
            console.print(
                f"{day} was already delivered ({result.delivered['entry_count']} entries, "
                f"{', '.join(result.delivered['files'])} at {result.delivered['destination']}): "
                f"`export run --date {day}` would send nothing; this preview shows the entries still "
                "queued, which the next batch will take",
                markup=False,
            )
        console.print(
            f"dry run for {day}: {result.entry_count} entries, {result.line_count} lines, totals "
            f"{_totals(result.totals)}; DRYRUN- files in {directory} (a preview: nothing marked or sent)",
            markup=False,
        )
        for line in _held_back_lines(result.held_back):
            console.print(line, markup=False)
        return
    with Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        console=err_console,
        disable=as_json or not err_console.is_terminal,
        transient=True,
    ) as progress:
        bar = progress.add_task(f"export {day}", total=None)
        result = saga.run_daily(
            day,
            revive=True,
            on_progress=lambda done, total: progress.update(bar, completed=done, total=total),
        )
    if as_json:
        print_json(result.to_dict())
    else:
        console.print(_describe(result), markup=False)
        for line in _held_back_lines(result.held_back) + [f"  lost: {lost}" for lost in result.delivery_lost]:
            console.print(line, markup=False)
    if result.unfinished or result.deferred_until is not None:
        when = result.deferred_until or result.next_retry_at
        from ledgerflow.export.tasks import enqueue_daily_export

        enqueue_daily_export(app, day, when)
        raise OperationFailed(
            f"export {day} did not complete: {result.error or 'destination breaker open'}; "
            f"retry scheduled at {fmt_time(when)}"
        )
    if result.state == "abandoned" and not result.already:
        raise OperationFailed(f"export {day} abandoned after {result.attempts} attempts: {result.error}")
    if result.held_back and not result.already:
        count = len(result.held_back)
        raise OperationFailed(
            f"export {day}: {count} entr{'y was' if count == 1 else 'ies were'} held back"
            f" ({', '.join(h['reference'] for h in result.held_back)}); correct with "
            "`ledgerflow entries import FILE --upsert`, they go in the next batch"
        )


def _held_back_lines(held_back: list[dict[str, Any]]) -> list[str]:
    return [f"  held back: {h['reference']}: {h['reason']}" for h in held_back]


def _totals(totals: dict[str, Any]) -> str:
    return ", ".join(f"{cur} debit {t['debit']} = credit {t['credit']}" for cur, t in totals.items()) or "-"


def _describe(result: Any) -> str:
    if result.in_progress:
        return f"export {result.batch_date}: another process is exporting this batch right now"
    if result.already:
        return (
            f"export {result.batch_date} was already delivered ({result.entry_count} entries); nothing done"
        )
    if result.state == "completed":
        files = (
            ", ".join(f.get("link") or f["name"] for f in result.files if f.get("kind") == "csv") or "no file"
        )
        return (
            f"export {result.batch_date}: {result.entry_count} entries, {result.line_count} lines, "
            f"{_totals(result.totals)} -> {files}"
        )
    return f"export {result.batch_date}: {result.state}"


@export_cli.command("status")
def status(limit: Annotated[int, typer.Option("--limit")] = 20, as_json: Json = False) -> None:
    """Recent batches: date, state, entries, totals, file, attempts, next retry."""
    from sqlalchemy import select

    from ledgerflow.db.tables import export_batches
    from ledgerflow.export.saga import held_back

    app = state.app()
    with app.db.read() as conn:
        rows = [
            dict(r._mapping)
            for r in conn.execute(
                select(export_batches)
                .order_by(export_batches.c.batch_date.desc(), export_batches.c.id.desc())
                .limit(limit)
            )
        ]
    for r in rows:
        r.pop("lock_token", None)
        r.pop("reservation", None)
        r["held_back"] = held_back(r)
    if as_json:
        print_json(rows)
        return
    print_table(
        ["batch", "state", "entries", "held back", "totals", "files", "attempts", "next retry", "error"],
        [
            [
                r["batch_key"],
                r["state"],
                r["entry_count"],
                ", ".join(h["reference"] for h in r["held_back"]),
                _totals(r["totals"] or {}),
                ", ".join(f["name"] for f in r["files"] or [] if f.get("kind") == "csv"),
                f"{r['attempts']}/{r['max_attempts']}",
                fmt_time(r["next_retry_at"]),
                (r["error"] or "")[:60],
            ]
            for r in rows
        ],
    )
    for r in rows:
        for line in _held_back_lines(r["held_back"]):
            console.print(f"{r['batch_key']}{line}", markup=False)


@export_cli.command("verify")
def verify(as_json: Json = False) -> None:
    """Re-check the audit hash chain, its heads anchored in the delivered manifests, every delivered
    file against the checksums the chain recorded, and report restores that rolled the books back."""
    from ledgerflow.export.verify import verify_exports

    report = verify_exports(state.app())
    if as_json:
        print_json(report)
    else:
        console.print(
            f"audit chain: {report['chain_rows']} rows, "
            f"{'intact' if not report['chain_problems'] else 'BROKEN'}",
            markup=False,
        )
        for line in report["chain_problems"] + report["file_problems"]:
            console.print(f"  problem: {line}", markup=False)
        console.print(
            f"chain heads anchored in delivered manifests: {report['anchors_checked']} checked; "
            f"files checked: {report['files_checked']}, unreachable: {len(report['unreachable'])}",
            markup=False,
        )
        for line in report["unreachable"]:
            console.print(f"  unreachable: {line}", markup=False)
        for line in report["restore_divergences"]:
            console.print(f"  restore divergence: {line}", markup=False)
    if report["chain_problems"] or report["file_problems"]:
        raise OperationFailed("export verification found problems")
