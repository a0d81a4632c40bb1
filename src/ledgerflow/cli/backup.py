"""`ledgerflow backup create|list|restore`."""

from __future__ import annotations

from typing import Annotated

import typer

from ledgerflow.cli.context import console, print_json, print_table, state

Json = Annotated[bool, typer.Option("--json", help="One JSON document on stdout.")]
Folder = Annotated[str | None, typer.Option("--dir", help="Backup folder (default LEDGERFLOW_BACKUP_DIR).")]
backup_cli = typer.Typer(help="Verified database backups: create, list, restore.", no_args_is_help=True)


def register(cli: typer.Typer) -> None:
    cli.add_typer(backup_cli, name="backup")


@backup_cli.command("create")
def create(
    directory: Folder = None,
    keep: Annotated[
        int | None, typer.Option("--keep", help="Verified backups kept (default LEDGERFLOW_BACKUP_KEEP).")
    ] = None,
    as_json: Json = False,
) -> None:
    """Snapshot the database, verify it, rotate old ones, and upload it to LEDGERFLOW_BACKUP_DESTINATION."""
    from ledgerflow.backup import create_backup, describe

    app = state.app()
    backup = create_backup(app, directory, keep)
    if as_json:
        print_json(describe(backup))
        return
    how = "by a restore" if backup.verified_by == "restore" else "by reading the archive back"
    console.print(
        f"{backup.name}: {backup.bytes:,} bytes, {backup.total_rows:,} rows, sha256 {backup.sha256[:16]}…, "
        f"verified {how} at {backup.verified_at}"
    )
    if backup.verified_by == "archive":
        console.print(
            "note: the database role cannot create a scratch database (no CREATEDB), so the archive was read "
            "back whole instead of restored; grant CREATEDB for a full restore test"
        )
    if app.settings.backup_destination:
        console.print(f"uploaded to {app.settings.backup_destination} and checked by the service's checksum")


@backup_cli.command("list")
def list_(
    directory: Folder = None,
    every: Annotated[
        bool, typer.Option("--all", help="Also other databases' backups in the folder.")
    ] = False,
    check: Annotated[
        bool, typer.Option("--check", help="Re-hash every file (slow for big backups).")
    ] = False,
    remote: Annotated[
        bool, typer.Option("--remote", help="List LEDGERFLOW_BACKUP_DESTINATION instead.")
    ] = False,
    as_json: Json = False,
) -> None:
    """Backups of this database, newest first; a missing, truncated or altered file is not "verified"."""
    from pathlib import Path

    from ledgerflow.backup import describe, list_backups
    from ledgerflow.backup.folder import database_identity, work_folder
    from ledgerflow.backup.offsite import backup_destination, list_remote
    from ledgerflow.errors import BadInput

    app = state.app()
    database = None if every else database_identity(app.db.url)
    folder = Path(directory or app.settings.backup_dir)
    if remote:
        destination = backup_destination(app.settings)
        if destination is None:
            raise BadInput("--remote: LEDGERFLOW_BACKUP_DESTINATION is not set")
        folder.mkdir(parents=True, exist_ok=True)
        with work_folder(folder) as work:
            backups = list_remote(destination, work, database)
    else:
        backups = list_backups(folder, database, check=check)
    if as_json:
        print_json([describe(b) for b in backups])
        return
    print_table(
        ["name", "created", "bytes", "rows", "schema", "verified"],
        [
            [
                b.name,
                b.created_at,
                f"{b.bytes:,}",
                f"{b.total_rows:,}",
                b.revision,
                b.problem or b.verified_at,
            ]
            for b in backups
        ],
    )


@backup_cli.command("restore")
def restore(
    name: str,
    directory: Folder = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Restore even while workers run or when the database holds newer books "
            "(what was delivered is carried over).",
        ),
    ] = False,
) -> None:
    """Replace the database with backup NAME (its sha256 is checked first). Stop workers before."""
    from ledgerflow.backup import restore_backup, restore_lines

    result = restore_backup(state.app(), name, directory, force=force)
    for line in restore_lines(result):
        console.print(line, markup=False, highlight=False)
    if result.rolled_back:
        console.print(
            "the books were rolled back: this restore is recorded in the export audit log and a critical "
            "alert was raised; run `ledgerflow export verify`",
            markup=False,
            highlight=False,
        )
