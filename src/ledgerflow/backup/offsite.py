"""Backups off the machine: `LEDGERFLOW_BACKUP_DESTINATION` (`file://`, `gdrive://`, `s3://`).

The export's destination clients carry the files. Each upload creates the file only if it is
absent (a retry finds it and compares), then the service's own checksum must equal the
backup's: S3's ChecksumSHA256 (sent with the upload, so S3 also checks the body on receipt),
Drive's sha256Checksum or md5Checksum, a re-read for a folder. The manifest goes up last:
without it a file at the destination is not a backup. Rotation there keeps the newest
`keep` backups of this database, and a restore fetches a backup it cannot find locally.
"""

from __future__ import annotations

import base64
import os
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from ledgerflow.backup.faults import crash_point
from ledgerflow.backup.folder import Backup, is_backup_name, parse_manifest, publish, sha256_of
from ledgerflow.backup.snapshot import BackupFailed
from ledgerflow.errors import BadInput, NotFound
from ledgerflow.export.destinations import (
    S3,
    Destination,
    DestinationError,
    ExportConflict,
    StoredFile,
    destination_for,
    download,
    file_digests,
    list_files,
    stored_file,
)

if TYPE_CHECKING:
    from ledgerflow.config import Settings


def backup_destination(settings: Settings) -> Destination | None:
    """The configured off-machine destination, or None."""
    url = settings.backup_destination
    return destination_for(settings, url) if url else None


def push(destination: Destination, folder: Path, backup: Backup) -> None:
    """Put a verified local backup and then its manifest at the destination, each checked there."""
    _put(destination, folder / backup.name, backup.name)
    crash_point("between_upload_and_manifest")
    _put(destination, folder / f"{backup.name}.json", f"{backup.name}.json")


def _put(destination: Destination, path: Path, name: str) -> None:
    sha256, md5, size = file_digests(path)
    there = stored_file(destination, name)
    if there is None:
        if isinstance(destination, S3):
            _put_s3(destination, path, name, sha256)
        else:
            destination.upload(
                path, name, sha256=sha256, md5=md5, size=size, batch_key=_key(name), reserved_id=None
            )
        there = stored_file(destination, name)
    if there is None:
        raise DestinationError(f"{name} is not at {destination.key} after its upload")
    if there.size != size or (there.sha256 or there.md5) is None:
        raise BackupFailed(f"{destination.key} keeps no checksum for {name}: cannot verify the upload")
    if (there.sha256 and there.sha256 != sha256) or (not there.sha256 and there.md5 != md5):
        raise ExportConflict(f"{name} at {destination.key} differs from the local backup; not overwritten")


def _put_s3(destination: S3, path: Path, name: str, sha256: str) -> None:
    """PutObject if absent, with ChecksumSHA256: S3 refuses a body that does not match it."""
    from botocore.exceptions import BotoCoreError, ClientError

    key = destination._key(name)
    try:
        with path.open("rb") as body:
            destination.client.put_object(
                Bucket=destination.bucket,
                Key=key,
                Body=body,
                IfNoneMatch="*",
                ChecksumAlgorithm="SHA256",
                ChecksumSHA256=base64.b64encode(bytes.fromhex(sha256)).decode(),
                ContentType="application/json" if name.endswith(".json") else "application/octet-stream",
                Metadata={"lf-sha256": sha256, "lf-batch": _key(name)},
            )
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code not in ("PreconditionFailed", "412"):
            raise DestinationError(f"S3 upload of {key} failed: {code}", "s3") from exc
    except (BotoCoreError, OSError) as exc:
        raise DestinationError(f"S3 upload of {key} failed: {exc}", "s3") from exc


def _key(name: str) -> str:
    """What marks a file at the destination as ours, for `Destination.delete`."""
    return f"backup:{name}"


def list_remote(destination: Destination, work: Path, database: str | None = None) -> list[Backup]:
    """Backups at the destination (of `database` only, when given), newest first.

    A file missing or of another size than its manifest says sets `problem`.
    """
    files = {f.name: f for f in list_files(destination, "ledgerflow-")}
    found = []
    for name, manifest in files.items():
        if not name.endswith(".json") or not is_backup_name(name[: -len(".json")]):
            continue
        backup = _read_manifest(destination, manifest, work)
        if backup is None or (database is not None and backup.database != database):
            continue
        data = files.get(backup.name)
        problem = (
            "file missing"
            if data is None
            else f"file has {data.size:,} of {backup.bytes:,} bytes"
            if data.size != backup.bytes
            else None
        )
        found.append(replace(backup, problem=problem))
    return sorted(found, key=lambda b: b.name, reverse=True)


def _read_manifest(destination: Destination, manifest: StoredFile, work: Path) -> Backup | None:
    target = work / f"remote-{manifest.name}"
    download(destination, manifest.file_id, target)
    try:
        return parse_manifest(manifest.name, target.read_bytes())
    finally:
        target.unlink(missing_ok=True)


def rotate_remote(
    destination: Destination, work: Path, keep: int, database: str, protect: str | None = None
) -> list[str]:
    """Delete all but the `keep` newest usable backups of `database` at the destination."""
    files = {f.name: f for f in list_files(destination, "ledgerflow-")}
    usable = [b for b in list_remote(destination, work, database) if b.usable and b.name != protect]
    removed = []
    for old in usable[keep - 1 if protect else keep :]:
        manifest = files[f"{old.name}.json"]
        destination.delete(
            manifest.file_id, batch_key=_key(manifest.name), sha256=_digest_of(destination, manifest, work)
        )
        destination.delete(files[old.name].file_id, batch_key=_key(old.name), sha256=old.sha256)
        removed.append(old.name)
    return removed


def _digest_of(destination: Destination, stored: StoredFile, work: Path) -> str:
    target = work / f"remote-{stored.name}"
    download(destination, stored.file_id, target)
    try:
        return sha256_of(target)[0]
    finally:
        target.unlink(missing_ok=True)


def fetch(destination: Destination, name: str, folder: Path, work: Path) -> Backup:
    """Download backup `name` and its manifest into `folder`, checked against the manifest's sha256."""
    manifest, data = stored_file(destination, f"{name}.json"), stored_file(destination, name)
    if manifest is None or data is None:
        raise NotFound(f"no backup {name!r} in {folder} or at {destination.key}")
    backup = _read_manifest(destination, manifest, work)
    if backup is None:
        raise NotFound(f"{name}.json at {destination.key} is not a ledgerflow backup manifest")
    download(destination, data.file_id, work / name)
    digest, size = sha256_of(work / name)
    if digest != backup.sha256 or size != backup.bytes:
        os.unlink(work / name)
        raise BadInput(f"backup {name} at {destination.key} is damaged: sha256 {digest} != {backup.sha256}")
    publish(work, folder, backup)
    return backup
