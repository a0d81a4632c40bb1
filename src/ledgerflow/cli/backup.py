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
    """Snapshot the database, verify it by restoring it into a scratch database, rotate old ones."""
    from ledgerflow.backup import create_backup, describe

    backup = create_backup(state.app(), directory, keep)
    if as_json:
        print_json(describe(backup))
        return
    console.print(
        f"{backup.name}: {backup.bytes:,} bytes, {backup.total_rows:,} rows, sha256 {backup.sha256[:16]}…, "
        f"verified {backup.verified_at}"
    )


@backup_cli.command("list")
def list_(directory: Folder = None, as_json: Json = False) -> None:
    """Backups in the folder, newest first."""
    from ledgerflow.backup import describe, list_backups

    backups = list_backups(directory or state.app().settings.backup_dir)
    if as_json:
        print_json([describe(b) for b in backups])
        return
    print_table(
        ["name", "created", "bytes", "rows", "schema", "verified"],
        [
            [b.name, b.created_at, f"{b.bytes:,}", f"{b.total_rows:,}", b.revision, b.verified_at]
            for b in backups
        ],
    )


@backup_cli.command("restore")
def restore(
    name: str,
    directory: Folder = None,
    force: Annotated[bool, typer.Option("--force", help="Restore even while workers are running.")] = False,
) -> None:
    """Replace the database with backup NAME (its sha256 is checked first). Stop workers before."""
    from ledgerflow.backup import restore_backup

    backup = restore_backup(state.app(), name, directory, force=force)
    console.print(f"restored {backup.name} ({backup.total_rows:,} rows, schema {backup.revision})")
