"""One database snapshot as a file: made, verified and restored.

SQLite: the backup API copies the whole database in one step (a read transaction: workers
keep writing, and no write can make it start over), `PRAGMA integrity_check` runs on the
copy, then it is gzip-compressed. PostgreSQL: `pg_dump -Fc` of a snapshot exported by a
repeatable-read transaction in which the rows are counted too.

Verification restores the file into a scratch database (a temporary SQLite file, or a
temporary PostgreSQL database when the role may create one) and counts its rows; a role
without CREATEDB gets the archive read back whole by `pg_restore` instead, its rows counted
table by table. Restoring checks first that the file is a ledgerflow database of the right
kind, so garbage is refused before anything is touched.
"""

from __future__ import annotations

import contextlib
import gzip
import re
import shutil
import sqlite3
import subprocess
import tempfile
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from sqlalchemy.engine import make_url

from ledgerflow.backup.books import watermark
from ledgerflow.backup.folder import fsync
from ledgerflow.db.tables import SEARCH_TABLES, metadata
from ledgerflow.errors import BadInput, LedgerflowError

_CHUNK = 1 << 20
#: A table every ledgerflow schema has; a database without it is someone else's.
_MARKER_TABLE = "jobs"
_COPY = re.compile(rb'^COPY (?:"?\w+"?\.)?"?(\w+)"? \(.*\) FROM stdin;$')


class BackupFailed(LedgerflowError):
    """A backup could not be made, did not verify, or could not be restored."""


@dataclass(frozen=True)
class Snapshot:
    rows: dict[str, int]
    books: dict[str, Any]


def dump(url: str, work: Path, target: Path, busy_timeout: float) -> Snapshot:
    """Write a consistent snapshot of the database at `url` to `target`."""
    if _is_sqlite(url):
        return _dump_sqlite(sqlite_file(url), work, target, busy_timeout)
    return _dump_postgres(libpq(url), target)


def verify(url: str, path: Path, work: Path) -> tuple[dict[str, int], str]:
    """Rows per table read back from the file, and how: "restore" or "archive"."""
    if _is_sqlite(url):
        return _verify_sqlite(path, work), "restore"
    dsn = libpq(url)
    with psycopg.connect(dsn, autocommit=True) as conn:
        allowed = conn.execute(
            "SELECT rolcreatedb OR rolsuper FROM pg_roles WHERE rolname = current_user"
        ).fetchone()
    if not (allowed and allowed[0]):
        return _archive_rows(path, "pg_restore could not read the archive back"), "archive"
    with _scratch_postgres(dsn) as scratch_dsn:
        _pg_restore(scratch_dsn, path, path.name)
        with psycopg.connect(scratch_dsn) as conn:
            return _count(conn, _postgres_tables(conn)), "restore"


def restore(url: str, path: Path, name: str) -> None:
    """Replace the database at `url` with backup file `path`, after checking what it holds."""
    if _is_sqlite(url):
        _restore_sqlite(sqlite_file(url), path, name)
    else:
        listing = _run(
            ["pg_restore", "--list", str(path)], f"backup {name} is not a pg_dump archive", BadInput
        )
        if not re.search(rf"^\d+; \d+ \d+ TABLE \S+ {_MARKER_TABLE} ", listing, re.M):
            raise BadInput(f"backup {name} is a pg_dump archive but not of a ledgerflow database")
        _archive_rows(path, f"backup {name} cannot be read back whole", BadInput)  # before anything changes
        _pg_restore(libpq(url), path, name)


# ------------------------------------------------------------------ SQLite
def sqlite_file(url: str) -> Path:
    database = make_url(url).database
    if not database or database == ":memory:":
        raise BadInput("an in-memory SQLite database cannot be backed up")
    return Path(database)


def _dump_sqlite(source_file: Path, work: Path, target: Path, busy_timeout: float) -> Snapshot:
    copy = work / "snapshot.db"
    with (
        contextlib.closing(sqlite3.connect(source_file, timeout=busy_timeout)) as source,
        contextlib.closing(sqlite3.connect(copy)) as dest,
    ):
        source.backup(dest, pages=-1)  # one step: a write by another process cannot restart it
    with contextlib.closing(_open_checked(copy, "the snapshot")) as conn:
        conn.execute("PRAGMA journal_mode=DELETE")  # one self-contained file, no -wal beside it
        snapshot = Snapshot(_count(conn, _sqlite_tables(conn)), watermark(conn))
    with copy.open("rb") as raw, gzip.open(target, "wb", compresslevel=3) as packed:
        shutil.copyfileobj(raw, packed, _CHUNK)
    copy.unlink()
    return snapshot


def _verify_sqlite(path: Path, work: Path) -> dict[str, int]:
    scratch = work / "verify.db"
    _unpack(path, scratch, path.name)
    with contextlib.closing(_open_checked(scratch, path.name)) as conn:
        rows = _count(conn, _sqlite_tables(conn))
    scratch.unlink()
    return rows


def _open_checked(path: Path, what: str) -> sqlite3.Connection:
    """A connection to `path` once it is known to be a sound ledgerflow SQLite database."""
    conn = sqlite3.connect(path)
    try:
        result = conn.execute("PRAGMA integrity_check").fetchone()[0]
        tables = _sqlite_tables(conn)
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise BadInput(f"{what} is not a SQLite database ({exc})") from None
    if result != "ok":
        conn.close()
        raise BadInput(f"{what} fails SQLite's integrity check: {result}")
    if _MARKER_TABLE not in tables:
        conn.close()
        raise BadInput(f"{what} is a SQLite database but not a ledgerflow one (no {_MARKER_TABLE} table)")
    return conn


def _sqlite_tables(conn: sqlite3.Connection) -> set[str]:
    return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def _unpack(path: Path, target: Path, name: str) -> None:
    try:
        with gzip.open(path, "rb") as packed, target.open("wb") as raw:
            shutil.copyfileobj(packed, raw, _CHUNK)
    except (OSError, EOFError, zlib.error) as exc:
        target.unlink(missing_ok=True)
        raise BadInput(f"backup {name} is not a readable gzip file ({exc})") from None


def _restore_sqlite(target: Path, path: Path, name: str) -> None:
    staged = target.with_name(f".{target.name}.restore-{uuid.uuid4().hex[:6]}")
    try:
        _unpack(path, staged, name)
        with contextlib.closing(_open_checked(staged, f"backup {name}")) as conn:
            conn.execute("PRAGMA journal_mode=WAL")
        fsync(staged)
        for stale in (target.with_name(target.name + "-wal"), target.with_name(target.name + "-shm")):
            stale.unlink(missing_ok=True)
        staged.replace(target)
    finally:
        staged.unlink(missing_ok=True)


# ------------------------------------------------------------------ PostgreSQL
def libpq(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _run(args: list[str], what: str, error: type[LedgerflowError] = BackupFailed) -> str:
    """Run a PostgreSQL client tool; its first error line becomes `error` prefixed by `what`."""
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=3600, check=False)
    except FileNotFoundError:
        raise BackupFailed(
            f"{args[0]} is not installed (Debian: apt-get install postgresql-client)"
        ) from None
    if done.returncode != 0:
        first = (done.stderr or done.stdout).strip().splitlines()
        raise error(f"{what}: {first[0] if first else f'exit {done.returncode}'}")
    return done.stdout


def _dump_postgres(dsn: str, target: Path) -> Snapshot:
    """pg_dump of an exported snapshot; rows and the books' watermark taken in that same snapshot."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        snapshot_id = conn.execute("SELECT pg_export_snapshot()").fetchone()[0]  # type: ignore[index]
        snapshot = Snapshot(_count(conn, _postgres_tables(conn)), watermark(conn))
        _run(
            ["pg_dump", "--format=custom", f"--snapshot={snapshot_id}", f"--file={target}", dsn],
            "pg_dump failed",
        )
        conn.execute("COMMIT")
    return snapshot


def _pg_restore(dsn: str, path: Path, name: str) -> None:
    """Restore the archive into `dsn`, replacing what it holds, but not its extensions: they are
    made if missing and never dropped (`--clean` would drop pg_trgm, which the search side
    tables of a later schema, not in an older archive, depend on)."""
    listing = _run(["pg_restore", "--list", str(path)], f"backup {name} is not a pg_dump archive", BadInput)
    extensions = re.findall(r"^\d+; \d+ \d+ EXTENSION - (\S+)", listing, re.M)
    with psycopg.connect(dsn, autocommit=True) as conn:
        for extension in extensions:
            conn.execute(sql.SQL("CREATE EXTENSION IF NOT EXISTS {}").format(sql.Identifier(extension)))
    with tempfile.NamedTemporaryFile("w", suffix=".list") as entries:
        entries.write("\n".join(line for line in listing.splitlines() if " EXTENSION " not in line))
        entries.flush()
        _run(
            [
                "pg_restore",
                "--clean",
                "--if-exists",
                "--no-owner",
                "--no-acl",
                "--single-transaction",
                "--exit-on-error",
                f"--use-list={entries.name}",
                f"--dbname={dsn}",
                str(path),
            ],
            f"pg_restore of {name} failed (nothing was changed)",
        )


def drop_tables_not_in(url: str, kept: set[str]) -> list[str]:
    """After a restore: drop the ledgerflow tables the backup did not have (PostgreSQL only).

    `pg_restore --clean` replaces only what the archive holds, so the tables a later schema
    added would survive with the replaced database's rows, and upgrading the restored schema
    would then fail on them (the search side tables would also describe the replaced jobs).
    SQLite's restore replaces the whole file: nothing to drop.
    """
    if _is_sqlite(url):
        return []
    with psycopg.connect(libpq(url)) as conn:  # one transaction
        extra = sorted((_postgres_tables(conn) & (set(metadata.tables) | SEARCH_TABLES)) - kept)
        for table in extra:
            conn.execute(f'DROP TABLE IF EXISTS "{table}" CASCADE')  # type: ignore[arg-type]
    return extra


def _postgres_tables(conn: psycopg.Connection[Any]) -> set[str]:
    return {r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")}


@contextlib.contextmanager
def _scratch_postgres(dsn: str) -> Iterator[str]:
    """A temporary database on the same server, dropped afterwards."""
    name = f"lf_verify_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(dsn).set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _archive_rows(path: Path, what: str, error: type[LedgerflowError] = BackupFailed) -> dict[str, int]:
    """Rows per table in a pg_dump archive, read back whole by pg_restore (no database needed).

    In COPY text format every row is one line (line breaks in values are escaped), so the
    lines between `COPY … FROM stdin;` and `\\.` are the rows.
    """
    rows: dict[str, int] = {}
    table: str | None = None
    with subprocess.Popen(
        ["pg_restore", "--data-only", "--file=-", str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        for line in proc.stdout:
            if table is None:
                if match := _COPY.match(line.rstrip(b"\n")):
                    table = match.group(1).decode()
                    rows[table] = 0
            elif line == b"\\.\n":
                table = None
            else:
                rows[table] += 1
        problem = proc.stderr.read().decode(errors="replace").strip()
    if proc.returncode != 0 or table is not None:
        raise error(f"{what}: {problem.splitlines()[0] if problem else 'cut short'}")
    return {t: n for t, n in sorted(rows.items()) if t in metadata.tables}


# ------------------------------------------------------------------ shared
def _is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def _count(conn: Any, present: set[str]) -> dict[str, int]:
    """Rows of every ledgerflow table the database has (an older schema may lack some)."""
    return {
        t: int(conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0])
        for t in sorted(metadata.tables)
        if t in present
    }
