"""Verified database backups: create, rotate, list, restore (`ledgerflow backup …`, task `ledgerflow.backup`).

SQLite: the online backup API copies a consistent snapshot while workers keep writing; the copy
is checked (`PRAGMA integrity_check`), its rows counted, then gzip-compressed.
PostgreSQL: `pg_dump -Fc` of an exported snapshot, with the rows counted in that same snapshot.

Every backup is **verified** before it counts: it is restored into a scratch database (a
temporary file, or a temporary PostgreSQL database) whose row counts must equal the ones taken
from the snapshot. A manifest (`NAME.json`: sha256, bytes, schema revision, row counts) sits
beside each file; restore checks the sha256 first, so a damaged file is refused before anything
is touched. Only verified backups count towards the `keep` newest that rotation retains.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from ledgerflow.db.tables import metadata, workers
from ledgerflow.errors import BadInput, Conflict, LedgerflowError, NotFound

if TYPE_CHECKING:
    from ledgerflow.app import App

_CHUNK = 1 << 20


class BackupFailed(LedgerflowError):
    """A backup could not be made or did not verify."""


@dataclass(frozen=True)
class Backup:
    """One backup file and its manifest."""

    name: str
    backend: str
    created_at: str
    bytes: int
    sha256: str
    revision: str | None
    rows: dict[str, int]
    verified_at: str | None

    @property
    def total_rows(self) -> int:
        return sum(self.rows.values())


# ------------------------------------------------------------------ public API
def create_backup(app: App, directory: str | Path | None = None, keep: int | None = None) -> Backup:
    """Snapshot the database into `directory`, verify it by restoring it, then rotate."""
    folder = Path(directory or app.settings.backup_dir)
    folder.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC)
    suffix = "sqlite.gz" if app.db.is_sqlite else "pgdump"
    name = f"ledgerflow-{stamp:%Y%m%dT%H%M%S_%f}-{uuid.uuid4().hex[:4]}.{suffix}"
    final = folder / name
    partial = folder / f".{name}.partial"
    try:
        rows = _dump_sqlite(app, partial) if app.db.is_sqlite else _dump_postgres(app, partial)
        digest, size = _sha256(partial)
        _fsync(partial)
        os.replace(partial, final)
        backup = Backup(
            name=name,
            backend=app.db.backend.name,
            created_at=stamp.isoformat(timespec="seconds"),
            bytes=size,
            sha256=digest,
            revision=_revision(app),
            rows=rows,
            verified_at=None,
        )
        try:
            restored = _verify(final, backup, app.db.url if app.db.is_sqlite else _libpq(app.db.url))
            if restored != rows:
                raise BackupFailed(f"backup {name} did not verify: restored rows {restored} != {rows}")
            backup = replace(backup, verified_at=datetime.now(UTC).isoformat(timespec="seconds"))
            _write_manifest(folder, backup)
        except BaseException:
            final.unlink(missing_ok=True)  # an unverified file never stays to be mistaken for a backup
            raise
    finally:
        partial.unlink(missing_ok=True)
    rotate(folder, keep if keep is not None else app.settings.backup_keep)
    return backup


def list_backups(directory: str | Path) -> list[Backup]:
    """Backups in `directory` that have a manifest, newest first."""
    folder = Path(directory)
    if not folder.is_dir():
        return []
    found = []
    for manifest in folder.glob("ledgerflow-*.json"):
        with contextlib.suppress(ValueError, TypeError, KeyError):
            found.append(Backup(**json.loads(manifest.read_text())))
    return sorted(found, key=lambda b: b.name, reverse=True)


def rotate(directory: str | Path, keep: int) -> list[str]:
    """Delete all but the `keep` newest verified backups; returns the names removed."""
    if keep < 1:
        raise BadInput("keep must be at least 1")
    folder = Path(directory)
    removed = []
    for old in [b for b in list_backups(folder) if b.verified_at][keep:]:
        (folder / old.name).unlink(missing_ok=True)
        (folder / f"{old.name}.json").unlink(missing_ok=True)
        removed.append(old.name)
    return removed


def restore_backup(app: App, name: str, directory: str | Path | None = None, force: bool = False) -> Backup:
    """Replace `app`'s database with backup `name` (checked by sha256 first).

    Stop workers, schedulers and `serve` first: a live process is refused unless `force`.
    """
    folder = Path(directory or app.settings.backup_dir)
    backup = next((b for b in list_backups(folder) if b.name == name), None)
    path = folder / name
    if backup is None or not path.is_file():
        raise NotFound(f"no backup {name!r} in {folder}")
    digest, _ = _sha256(path)
    if digest != backup.sha256:
        raise BadInput(f"backup {name} is damaged: sha256 {digest} != {backup.sha256} in its manifest")
    if backup.backend != app.db.backend.name:
        raise BadInput(f"backup {name} is a {backup.backend} backup; the database is {app.db.backend.name}")
    if not force:
        live = _live_processes(app)
        if live:
            raise Conflict(
                f"{live} worker/scheduler process(es) are running against this database: stop them "
                "(or pass --force)"
            )
    if app.db.is_sqlite:
        _restore_sqlite(app, path)
    else:
        app.db.engine.dispose()  # pooled sessions would hold locks pg_restore --clean waits for
        _restore_postgres(_libpq(app.db.url), path)
    return backup


# ------------------------------------------------------------------ SQLite
def _sqlite_file(url: str) -> Path:
    database = make_url(url).database
    if not database or database == ":memory:":
        raise BadInput("an in-memory SQLite database cannot be backed up")
    return Path(database)


def _dump_sqlite(app: App, target: Path) -> dict[str, int]:
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".lf-backup-") as tmp:
        copy = Path(tmp) / "snapshot.db"
        source = sqlite3.connect(_sqlite_file(app.db.url), timeout=app.settings.sqlite_busy_timeout)
        dest = sqlite3.connect(copy)
        try:
            source.backup(dest, pages=4096)  # in steps: writers are not blocked for the whole copy
        finally:
            source.close()
        try:
            dest.execute("PRAGMA journal_mode=DELETE")  # one self-contained file, no -wal beside it
            _check_integrity(dest)
            rows = _count_sqlite(dest)
        finally:
            dest.close()
        with copy.open("rb") as raw, gzip.open(target, "wb", compresslevel=6) as packed:
            shutil.copyfileobj(raw, packed, _CHUNK)
    return rows


def _check_integrity(conn: sqlite3.Connection) -> None:
    result = conn.execute("PRAGMA integrity_check").fetchone()[0]
    if result != "ok":
        raise BackupFailed(f"SQLite integrity check failed: {result}")


def _count_sqlite(conn: sqlite3.Connection) -> dict[str, int]:
    return {t: int(conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0]) for t in _tables()}


def _unpack(path: Path, target: Path) -> None:
    try:
        with gzip.open(path, "rb") as packed, target.open("wb") as raw:
            shutil.copyfileobj(packed, raw, _CHUNK)
    except (OSError, EOFError) as exc:
        raise BadInput(f"backup {path.name} cannot be unpacked: {exc}") from None


def _restore_sqlite(app: App, path: Path) -> None:
    target = _sqlite_file(app.db.url)
    staged = target.with_name(f".{target.name}.restore")
    try:
        _unpack(path, staged)
        conn = sqlite3.connect(staged)
        try:
            _check_integrity(conn)
            conn.execute("PRAGMA journal_mode=WAL")
        finally:
            conn.close()
        app.db.engine.dispose()  # no pooled connection may keep the old file open
        _fsync(staged)
        for stale in (target.with_name(target.name + "-wal"), target.with_name(target.name + "-shm")):
            stale.unlink(missing_ok=True)
        os.replace(staged, target)
    finally:
        staged.unlink(missing_ok=True)


# ------------------------------------------------------------------ PostgreSQL
def _libpq(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _run(args: list[str], what: str) -> None:
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=3600, check=False)
    except FileNotFoundError:
        raise BackupFailed(
            f"{args[0]} is not installed (Debian: apt-get install postgresql-client)"
        ) from None
    if done.returncode != 0:
        first = (done.stderr or done.stdout).strip().splitlines()
        raise BackupFailed(f"{what} failed: {first[0] if first else f'exit {done.returncode}'}")


def _dump_postgres(app: App, target: Path) -> dict[str, int]:
    """pg_dump of an exported snapshot; rows counted inside that same snapshot."""
    dsn = _libpq(app.db.url)
    with psycopg.connect(dsn) as conn:
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        snapshot = conn.execute("SELECT pg_export_snapshot()").fetchone()[0]  # type: ignore[index]
        rows = {
            t: int(conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0])  # type: ignore[index]
            for t in _tables()
        }
        _run(["pg_dump", "--format=custom", f"--snapshot={snapshot}", f"--file={target}", dsn], "pg_dump")
        conn.execute("COMMIT")
    return rows


def _restore_postgres(dsn: str, path: Path) -> None:
    _run(
        [
            "pg_restore",
            "--clean",
            "--if-exists",
            "--no-owner",
            "--single-transaction",
            "--exit-on-error",
            f"--dbname={dsn}",
            str(path),
        ],
        "pg_restore",
    )


@contextlib.contextmanager
def _scratch_postgres(dsn: str) -> Iterator[str]:
    """A temporary database on the same server, dropped afterwards."""
    name = f"lf_verify_{uuid.uuid4().hex[:10]}"
    admin = make_url(dsn).set(database="postgres").render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')  # type: ignore[arg-type]
    try:
        yield make_url(dsn).set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')  # type: ignore[arg-type]


# ------------------------------------------------------------------ shared
def _verify(path: Path, backup: Backup, source_dsn: str) -> dict[str, int]:
    """Restore `path` into a scratch database (beside `source_dsn` for PostgreSQL) and count its rows."""
    if backup.backend == "sqlite":
        with tempfile.TemporaryDirectory(dir=path.parent, prefix=".lf-verify-") as tmp:
            scratch = Path(tmp) / "verify.db"
            _unpack(path, scratch)
            conn = sqlite3.connect(scratch)
            try:
                _check_integrity(conn)
                return _count_sqlite(conn)
            finally:
                conn.close()
    with _scratch_postgres(source_dsn) as scratch:
        _restore_postgres(scratch, path)
        with psycopg.connect(scratch) as conn:
            return {
                t: int(conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0])  # type: ignore[index]
                for t in _tables()
            }


def _tables() -> list[str]:
    return sorted(metadata.tables)


def _revision(app: App) -> str | None:
    from ledgerflow.db.migrate import current_revision

    return current_revision(app.db)


def _live_processes(app: App) -> int:
    with app.db.read() as conn:
        fresh = datetime.now(UTC) - timedelta(seconds=max(30.0, app.settings.lease_seconds * 3))
        return int(
            conn.execute(
                select(func.count()).where(workers.c.stopped_at.is_(None), workers.c.heartbeat_at > fresh)
            ).scalar_one()
        )


def _sha256(path: Path) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _fsync(path: Path) -> None:
    with path.open("rb") as fh:
        os.fsync(fh.fileno())


def _write_manifest(folder: Path, backup: Backup) -> None:
    manifest = folder / f"{backup.name}.json"
    staged = folder / f".{backup.name}.json.partial"
    staged.write_text(json.dumps({**asdict(backup)}, indent=2, sort_keys=True) + "\n")
    _fsync(staged)
    os.replace(staged, manifest)


def describe(backup: Backup) -> dict[str, Any]:
    """A backup as JSON-ready data (CLI and API)."""
    return {**asdict(backup), "total_rows": backup.total_rows}
