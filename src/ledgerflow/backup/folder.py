"""The backup folder: names, manifests, listing, rotation and the work folder of one `create`.

A backup is two files: `NAME` (the snapshot) and `NAME.json` (its manifest). Only plain names
of the form `ledgerflow-<UTC stamp>-<4 hex>.sqlite.gz|.pgdump` are read or deleted, so a forged
manifest can never point outside the folder. The manifest is moved into place last: a backup
without one does not exist.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import socket
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

from ledgerflow.backup.faults import crash_point
from ledgerflow.errors import BadInput

NAME_RE = re.compile(r"ledgerflow-\d{8}T\d{6}_\d{6}-[0-9a-f]{4}\.(?:sqlite\.gz|pgdump)")
_WORK_PREFIX = ".lf-backup-"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Backup:
    """One backup file and its manifest.

    `database` says whose backup it is (rotation keeps to it), `books` the watermark of the
    journal and the export audit chain at the snapshot (a restore compares it with the
    database it replaces). `problem` is not stored: listing sets it when the file is missing,
    truncated or (with a checksum check) altered.
    """

    name: str
    backend: str
    created_at: str
    bytes: int
    sha256: str
    revision: str | None
    rows: dict[str, int]
    verified_at: str | None
    verified_by: str | None = None  # "restore" (a scratch database) | "archive" (read back whole)
    database: str | None = None
    books: dict[str, Any] | None = None
    problem: str | None = field(default=None, compare=False)

    @property
    def total_rows(self) -> int:
        return sum(self.rows.values())

    @property
    def usable(self) -> bool:
        """Verified when made, and the file still matches its manifest."""
        return self.verified_at is not None and self.problem is None

    def manifest(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "problem"}


def new_name(stamp: datetime, backend: str) -> str:
    suffix = "sqlite.gz" if backend == "sqlite" else "pgdump"
    return f"ledgerflow-{stamp:%Y%m%dT%H%M%S_%f}-{uuid.uuid4().hex[:4]}.{suffix}"


def is_backup_name(name: str) -> bool:
    return NAME_RE.fullmatch(name) is not None


def database_identity(url: str) -> str:
    """Which database a backup is of: the SQLite file's absolute path, or PostgreSQL host/port/name."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return f"sqlite:///{Path(parsed.database or '').expanduser().resolve()}"
    return f"postgresql://{parsed.host or 'localhost'}:{parsed.port or 5432}/{parsed.database}"


def parse_manifest(name: str, data: bytes | str) -> Backup | None:
    """The backup a manifest file `NAME.json` describes, or None when it is not a valid one."""
    if not name.endswith(".json") or not is_backup_name(name[: -len(".json")]):
        return None
    try:
        document = json.loads(data)
        known = {f.name for f in fields(Backup)} - {"problem"}
        backup = Backup(**{k: v for k, v in document.items() if k in known})
    except (ValueError, TypeError):
        return None
    if backup.name != name[: -len(".json")] or not isinstance(backup.bytes, int):
        return None  # a manifest may only describe the file it is named after
    return backup


def manifest_bytes(backup: Backup) -> bytes:
    return (json.dumps(backup.manifest(), indent=2, sort_keys=True) + "\n").encode()


def list_backups(directory: str | Path, database: str | None = None, check: bool = False) -> list[Backup]:
    """Backups in `directory` (of `database` only, when given), newest first.

    Each file is compared with its manifest: a missing or truncated file (or, with `check`, a
    different sha256) sets `problem`, so it is never shown as a usable backup.
    """
    folder = Path(directory)
    if not folder.is_dir():
        return []
    found = []
    for manifest in folder.glob("ledgerflow-*.json"):
        with contextlib.suppress(OSError):
            backup = parse_manifest(manifest.name, manifest.read_bytes())
            if backup is None or (database is not None and backup.database != database):
                continue
            found.append(replace(backup, problem=file_problem(folder / backup.name, backup, check)))
    return sorted(found, key=lambda b: b.name, reverse=True)


def file_problem(path: Path, backup: Backup, check: bool = False) -> str | None:
    """Why `path` is not the file `backup` describes, or None."""
    if path.is_symlink() or not path.is_file():
        return "file missing"
    size = path.stat().st_size
    if size != backup.bytes:
        return f"file has {size:,} of {backup.bytes:,} bytes"
    if check and sha256_of(path)[0] != backup.sha256:
        return "sha256 differs from the manifest"
    return None


def rotate(directory: str | Path, keep: int, database: str | None, protect: str | None = None) -> list[str]:
    """Delete all but the `keep` newest usable backups of `database`; returns the names removed.

    `protect` (the backup just made) is never deleted, whatever other manifests claim.
    Backups of other databases, and files without a valid manifest, are left alone.
    """
    check_keep(keep)
    folder = Path(directory)
    removed = []
    usable = [b for b in list_backups(folder, database) if b.usable and b.name != protect]
    for old in usable[keep - 1 if protect else keep :]:
        (folder / f"{old.name}.json").unlink(missing_ok=True)  # the manifest first: never a half backup
        (folder / old.name).unlink(missing_ok=True)
        removed.append(old.name)
    return removed


def check_keep(keep: int) -> None:
    if keep < 1:
        raise BadInput(f"--keep must be at least 1 (got {keep}): the newest backup is always kept")


def sha256_of(path: Path) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ------------------------------------------------------------------ one `create`'s work folder
@contextlib.contextmanager
def work_folder(folder: Path) -> Iterator[Path]:
    """A hidden folder inside `folder` for one backup's temporary files, removed on any exit.

    Its name holds the host and pid, so a later `create` can tell a crashed run's leftovers
    from a running one (see `clean_stale`).
    """
    work = folder / f"{_WORK_PREFIX}{_host()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    work.mkdir()
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def publish(work: Path, folder: Path, backup: Backup) -> None:
    """Move a verified backup into `folder`: the file, then its manifest (the commit point)."""
    staged = work / f"{backup.name}.json"
    staged.write_bytes(manifest_bytes(backup))
    fsync(staged)
    fsync(work / backup.name)
    os.replace(work / backup.name, folder / backup.name)
    crash_point("between_file_and_manifest")
    os.replace(staged, folder / staged.name)
    fsync(folder)


def clean_stale(folder: Path) -> list[str]:
    """Finish or remove what a `create` killed on this host left behind; returns what was removed.

    A run killed between moving its file and its manifest is finished (the manifest was written
    after verification); anything else it left is deleted.
    """
    removed = []
    for work in folder.glob(f"{_WORK_PREFIX}*"):
        host, _, pid = work.name.removeprefix(_WORK_PREFIX).rpartition("-")[0].rpartition("-")
        if host != _host() or not pid.isdigit() or _alive(int(pid)):
            continue
        for manifest in work.glob("ledgerflow-*.json"):
            backup = parse_manifest(manifest.name, manifest.read_bytes())
            if backup and file_problem(folder / backup.name, backup, check=True) is None:
                os.replace(manifest, folder / manifest.name)
        shutil.rmtree(work, ignore_errors=True)
        removed.append(work.name)
    return removed


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname())


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
