"""Where export files go: a local folder, Google Drive or S3 — each upload idempotent.

Every destination creates a file only if absent and, when the name is taken, compares
checksums: equal means "already delivered" (success), different is an `ExportConflict`
(never overwrite accounting data). Sources: research/domain.md §3.
"""

from __future__ import annotations

import base64
import hashlib
import mimetypes
import os
import secrets
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

from ledgerflow.errors import BadInput, ConfigError, LedgerflowError


class DestinationError(LedgerflowError):
    """The destination failed or could not be reached; retrying later may work."""

    code = "destination_error"

    def __init__(self, message: str, error_type: str = "unknown") -> None:
        super().__init__(message)
        self.error_type = error_type


class ExportConflict(LedgerflowError):
    """A different file already has our deterministic name: never overwritten."""

    code = "export_conflict"


@dataclass(frozen=True)
class Remote:
    file_id: str
    link: str


class Destination(Protocol):
    key: str  # identifies it for the circuit breaker
    error_type: str  # google_drive | s3 | unknown (the metric label)

    def reserve(self, count: int) -> list[str]: ...
    def remote_id_for(self, name: str) -> str | None:
        """The id `upload(name)` gives the file when the name alone decides it (None: Drive)."""
        ...

    def upload(
        self,
        path: Path,
        name: str,
        *,
        sha256: str,
        md5: str,
        size: int,
        batch_key: str,
        reserved_id: str | None,
    ) -> Remote: ...
    def delete(self, remote_id: str, *, batch_key: str, sha256: str) -> bool: ...
    def content_digests(self, remote_id: str) -> Digests | None:
        """The checksums the service itself keeps of the file's content (None: no such file)."""
        ...


@dataclass(frozen=True)
class Digests:
    """Checksums of a stored file's content as the service computed them (hex; None: not kept)."""

    sha256: str | None = None
    md5: str | None = None


def same_content(
    destination: Destination, remote_id: str, *, sha256: str, md5: str | None = None
) -> bool | None:
    """Does the destination hold `remote_id` with exactly this content? None: the file is missing.

    Decided by the service's own content checksum (a folder's bytes, S3 `ChecksumSHA256`,
    Drive `sha256Checksum` or `md5Checksum`), never by a label the uploader wrote; when the
    service keeps none that can be compared, the file is downloaded and hashed.
    """
    kept = destination.content_digests(remote_id)
    if kept is None:
        return None
    if kept.sha256:
        return kept.sha256 == sha256
    if kept.md5 and md5:
        return kept.md5 == md5
    with tempfile.TemporaryDirectory(prefix="ledgerflow-verify-") as folder:
        target = Path(folder) / "file"
        download(destination, remote_id, target)
        return file_sha256(target) == sha256


def file_sha256(path: Path) -> str:
    """A file's SHA-256 (hex) alone: what a delivery and a resumed batch are checked by."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def file_digests(path: Path) -> tuple[str, str, int]:
    sha, md5, size = hashlib.sha256(), hashlib.md5(usedforsecurity=False), 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            sha.update(chunk)
            md5.update(chunk)
            size += len(chunk)
    return sha.hexdigest(), md5.hexdigest(), size


def _mimetype(name: str) -> str:
    """By extension: CSV and manifests, and the receipts (PDF, JPEG, PNG) and reports (HTML) filed."""
    known = {".csv": "text/csv", ".json": "application/json", ".html": "text/html; charset=utf-8"}
    suffix = Path(name).suffix.lower()
    return known.get(suffix) or mimetypes.guess_type(name)[0] or "application/octet-stream"


class LocalFolder:
    """Temp file fsynced, then hard-linked to its final name (fails if the name exists)."""

    error_type = "unknown"

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory).expanduser().resolve()
        self.key = self.directory.as_uri()

    def reserve(self, count: int) -> list[str]:
        return []

    def remote_id_for(self, name: str) -> str:
        return str(self.directory / name)

    def upload(
        self,
        path: Path,
        name: str,
        *,
        sha256: str,
        md5: str,
        size: int,
        batch_key: str,
        reserved_id: str | None,
    ) -> Remote:
        try:
            final = self.directory / name  # a name may hold folders: 2026/11/receipt.pdf
            if self.directory not in final.resolve().parents:
                raise DestinationError(f"refusing to write {name!r} outside {self.directory}")
            final.parent.mkdir(parents=True, exist_ok=True)
            if not final.exists():
                tmp = final.parent / f".{final.name}.{secrets.token_hex(4)}.tmp"
                with open(path, "rb") as src, open(tmp, "wb") as dst:
                    while chunk := src.read(1 << 20):
                        dst.write(chunk)
                    dst.flush()
                    os.fsync(dst.fileno())
                try:
                    os.link(tmp, final)
                except FileExistsError:
                    pass  # a concurrent writer won: compared below
                finally:
                    tmp.unlink(missing_ok=True)
                fd = os.open(final.parent, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            if file_sha256(final) != sha256:
                raise ExportConflict(f"{final} exists with different content; not overwritten")
        except OSError as exc:
            raise DestinationError(f"cannot write {name} to {self.directory}: {exc}") from exc
        return Remote(str(final), final.as_uri())

    def delete(self, remote_id: str, *, batch_key: str, sha256: str) -> bool:
        path = Path(remote_id)
        if path.exists() and file_sha256(path) == sha256:
            path.unlink()
            return True
        return False

    def content_digests(self, remote_id: str) -> Digests | None:
        path = Path(remote_id)
        if not path.is_file():
            return None
        sha256, md5, _size = file_digests(path)
        return Digests(sha256, md5)


class GoogleDrive:
    """Drive v3 through google-api-python-client: a file id reserved with `files.generateIds`
    (stored on the batch before uploading) makes a retried create answer 409, not a copy."""

    error_type = "google_drive"

    def __init__(self, folder_id: str, service: Any) -> None:
        self.folder_id = folder_id
        self.service = service
        self.key = f"gdrive://{folder_id}"

    @classmethod
    def from_settings(cls, folder_id: str, endpoint: str | None = None, timeout: float = 30.0) -> GoogleDrive:
        return cls(folder_id, drive_service(endpoint, timeout))

    def _call(self, request: Any, what: str, *, missing_ok: bool = False) -> Any:
        """Execute `request`; with `missing_ok`, a 404 (no such file) returns None."""
        from googleapiclient.errors import HttpError

        try:
            return request.execute(num_retries=0)
        except HttpError as exc:
            if exc.resp.status == 404 and missing_ok:
                return None
            if exc.resp.status == 409:
                raise
            raise DestinationError(
                f"Google Drive {what} failed: HTTP {exc.resp.status}", "google_drive"
            ) from exc
        except (OSError, TimeoutError) as exc:
            raise DestinationError(f"Google Drive {what} failed: {exc}", "google_drive") from exc

    def reserve(self, count: int) -> list[str]:
        result = self._call(
            self.service.files().generateIds(count=count, space="drive", type="files"), "generateIds"
        )
        return list(result["ids"])

    def remote_id_for(self, name: str) -> None:
        return None  # Drive ids are reserved (`reserve`), never derived from the name

    def upload(
        self,
        path: Path,
        name: str,
        *,
        sha256: str,
        md5: str,
        size: int,
        batch_key: str,
        reserved_id: str | None,
    ) -> Remote:
        from googleapiclient.errors import HttpError
        from googleapiclient.http import MediaFileUpload

        body = {
            "name": name,
            "parents": [self.folder_id],
            "mimeType": _mimetype(name),
            "appProperties": {"lf_batch": batch_key, "lf_sha256": sha256[:32]},
        }
        if reserved_id:
            body["id"] = reserved_id
        fields = "id,webViewLink,md5Checksum,size,appProperties"
        media = MediaFileUpload(str(path), mimetype=_mimetype(name), resumable=True, chunksize=8 << 20)
        request = self.service.files().create(
            body=body, media_body=media, fields=fields, supportsAllDrives=True
        )
        try:
            response = None
            while response is None:
                _status, response = request.next_chunk()
        except HttpError as exc:
            if exc.resp.status != 409 or not reserved_id:
                raise DestinationError(
                    f"Google Drive upload of {name} failed: HTTP {exc.resp.status}", "google_drive"
                ) from exc
            response = self._call(
                self.service.files().get(fileId=reserved_id, fields=fields, supportsAllDrives=True), "get"
            )
        except (OSError, TimeoutError) as exc:
            raise DestinationError(f"Google Drive upload of {name} failed: {exc}", "google_drive") from exc
        if response.get("md5Checksum") != md5 or int(response.get("size", -1)) != size:
            props = response.get("appProperties") or {}
            if props.get("lf_batch") == batch_key and props.get("lf_sha256") == sha256[:32]:
                raise DestinationError(
                    f"Google Drive reports a different checksum for {name}", "google_drive"
                )
            raise ExportConflict(f"Drive file {response.get('id')} ({name}) differs from the batch file")
        return Remote(
            response["id"], response.get("webViewLink") or f"https://drive.google.com/file/d/{response['id']}"
        )

    def delete(self, remote_id: str, *, batch_key: str, sha256: str) -> bool:
        from googleapiclient.errors import HttpError

        try:
            meta = (
                self.service.files()
                .get(fileId=remote_id, fields="id,appProperties", supportsAllDrives=True)
                .execute()
            )
        except HttpError as exc:
            if exc.resp.status == 404:
                return False
            raise DestinationError(
                f"Google Drive get {remote_id} failed: HTTP {exc.resp.status}", "google_drive"
            ) from exc
        if (meta.get("appProperties") or {}).get("lf_batch") != batch_key:
            return False  # not ours: never delete
        self._call(self.service.files().delete(fileId=remote_id, supportsAllDrives=True), "delete")
        return True

    def content_digests(self, remote_id: str) -> Digests | None:
        meta = self._call(
            self.service.files().get(
                fileId=remote_id, fields="md5Checksum,sha256Checksum,trashed", supportsAllDrives=True
            ),
            "get",
            missing_ok=True,
        )
        if meta is None or meta.get("trashed"):
            return None
        return Digests(meta.get("sha256Checksum"), meta.get("md5Checksum"))


def drive_service(endpoint: str | None = None, timeout: float = 30.0) -> Any:
    """A Drive v3 client: service-account credentials from GOOGLE_APPLICATION_CREDENTIALS, or,
    with `endpoint` (LEDGERFLOW_GDRIVE_ENDPOINT), anonymous requests to a Drive-compatible server."""
    try:
        import httplib2
        from googleapiclient import discovery
    except ImportError:
        raise ConfigError("Google Drive needs the gdrive extra: pip install 'ledgerflow[gdrive]'") from None
    if endpoint:
        import json

        from google.auth.credentials import AnonymousCredentials
        from google_auth_httplib2 import AuthorizedHttp

        document = json.loads(_bundled_drive_document())
        document["rootUrl"] = endpoint.rstrip("/") + "/"
        http = httplib2.Http(timeout=timeout)
        http.redirect_codes = http.redirect_codes - {308}  # resumable uploads answer 308
        return discovery.build_from_document(document, http=AuthorizedHttp(AnonymousCredentials(), http=http))
    credentials_file = os.environ.get("GOOGLE_APPLICATION_CREDENTIALS")
    if not credentials_file:
        raise ConfigError(
            "GOOGLE_APPLICATION_CREDENTIALS: set it to a service-account JSON file for gdrive://"
        )
    from google.oauth2 import service_account
    from google_auth_httplib2 import AuthorizedHttp

    credentials = service_account.Credentials.from_service_account_file(
        credentials_file, scopes=["https://www.googleapis.com/auth/drive.file"]
    )
    http = httplib2.Http(timeout=timeout)
    http.redirect_codes = http.redirect_codes - {308}
    return discovery.build("drive", "v3", http=AuthorizedHttp(credentials, http=http), cache_discovery=False)


def _bundled_drive_document() -> str:
    from pathlib import Path as _Path

    import googleapiclient

    return (
        _Path(googleapiclient.__file__).parent / "discovery_cache" / "documents" / "drive.v3.json"
    ).read_text()


class S3:
    """S3 (or compatible) through boto3: `PutObject` with `If-None-Match: *` creates only if absent."""

    error_type = "s3"

    def __init__(self, bucket: str, prefix: str, client: Any) -> None:
        self.bucket, self.prefix, self.client = bucket, prefix.strip("/"), client
        self.key = f"s3://{bucket}/{self.prefix}"

    @classmethod
    def from_settings(
        cls, bucket: str, prefix: str, endpoint: str | None = None, timeout: float = 30.0
    ) -> S3:
        try:
            import boto3
            from botocore.config import Config
        except ImportError:
            raise ConfigError("S3 needs the s3 extra: pip install 'ledgerflow[s3]'") from None
        client = boto3.client(
            "s3",
            endpoint_url=endpoint or None,
            config=Config(connect_timeout=timeout, read_timeout=timeout, retries={"max_attempts": 2}),
        )
        return cls(bucket, prefix, client)

    def _key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def reserve(self, count: int) -> list[str]:
        return []

    def remote_id_for(self, name: str) -> str:
        return self._key(name)

    def upload(
        self,
        path: Path,
        name: str,
        *,
        sha256: str,
        md5: str,
        size: int,
        batch_key: str,
        reserved_id: str | None,
    ) -> Remote:
        from botocore.exceptions import BotoCoreError, ClientError

        key = self._key(name)
        try:
            with open(path, "rb") as body:
                self.client.put_object(
                    Bucket=self.bucket,
                    Key=key,
                    Body=body,
                    IfNoneMatch="*",
                    ChecksumAlgorithm="SHA256",  # S3 refuses a body that does not match, and keeps it
                    ChecksumSHA256=base64.b64encode(bytes.fromhex(sha256)).decode(),
                    ContentType=_mimetype(name),
                    Metadata={"lf-sha256": sha256, "lf-batch": batch_key},
                )
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code not in ("PreconditionFailed", "412"):
                raise DestinationError(f"S3 upload of {key} failed: {code}", "s3") from exc
        except (BotoCoreError, OSError) as exc:
            raise DestinationError(f"S3 upload of {key} failed: {exc}", "s3") from exc
        same = same_content(self, key, sha256=sha256, md5=md5)
        if same is None:
            raise DestinationError(f"S3 upload of {key}: the object is not there after its upload", "s3")
        if not same:
            raise ExportConflict(f"s3://{self.bucket}/{key} exists with different content; not overwritten")
        return Remote(key, f"s3://{self.bucket}/{key}")

    def _head(self, key: str) -> dict[str, Any] | None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return self.client.head_object(Bucket=self.bucket, Key=key)  # type: ignore[no-any-return]
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise DestinationError(f"S3 head of {key} failed", "s3") from exc
        except BotoCoreError as exc:
            raise DestinationError(f"S3 head of {key} failed: {exc}", "s3") from exc

    def content_digests(self, remote_id: str) -> Digests | None:
        head = _s3_head_with_checksum(self, remote_id)
        if head is None:
            return None
        checksum = head.get("ChecksumSHA256")
        # a multipart object's checksum is of its parts ("...-N"): not comparable, so downloaded
        return Digests(base64.b64decode(checksum).hex() if checksum and "-" not in checksum else None)

    def delete(self, remote_id: str, *, batch_key: str, sha256: str) -> bool:
        head = self._head(remote_id)
        if head is None or head.get("Metadata", {}).get("lf-batch") != batch_key:
            return False
        self.client.delete_object(Bucket=self.bucket, Key=remote_id)
        return True


def open_destination(
    url: str, *, gdrive_endpoint: str | None = None, s3_endpoint: str | None = None, timeout: float = 30.0
) -> Destination:
    """`file://DIR`, `gdrive://FOLDER_ID` or `s3://BUCKET/PREFIX`."""
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return LocalFolder((parsed.netloc + parsed.path) or ".")
    if parsed.scheme == "gdrive":
        return GoogleDrive.from_settings(parsed.netloc, gdrive_endpoint, timeout)
    if parsed.scheme == "s3":
        return S3.from_settings(parsed.netloc, parsed.path, s3_endpoint, timeout)
    raise BadInput(f"unsupported destination {url!r}")


def destination_for(settings: Any, url: str | None = None) -> Destination:
    """`url` (default: the export destination) with the Drive/S3 endpoints and timeout of `settings`."""
    return open_destination(
        url or settings.export_destination,
        gdrive_endpoint=settings.gdrive_endpoint,
        s3_endpoint=settings.s3_endpoint_url,
        timeout=settings.destination_timeout,
    )


# ---------------------------------------------------------------- read helpers (used by backups)
@dataclass(frozen=True)
class StoredFile:
    """A file directly in a destination folder, with the checksums the service itself keeps (hex).

    `sha256`/`md5` are None when the service keeps none (or a listing does not return them).
    """

    name: str
    file_id: str
    size: int
    sha256: str | None = None
    md5: str | None = None


def list_files(destination: Destination, prefix: str) -> list[StoredFile]:
    """Files directly in the destination folder whose names start with `prefix`."""
    if isinstance(destination, LocalFolder):
        folder = destination.directory
        if not folder.is_dir():
            return []
        return [
            StoredFile(p.name, str(p), p.stat().st_size)
            for p in sorted(folder.glob(f"{prefix}*"))
            if p.is_file() and not p.is_symlink()
        ]
    if isinstance(destination, S3):
        from botocore.exceptions import BotoCoreError, ClientError

        base = destination._key("")
        found = []
        try:
            pages = destination.client.get_paginator("list_objects_v2").paginate(
                Bucket=destination.bucket, Prefix=base + prefix
            )
            for page in pages:
                for obj in page.get("Contents", []):
                    name = obj["Key"][len(base) :]
                    if "/" not in name:
                        found.append(StoredFile(name, obj["Key"], int(obj["Size"])))
        except (BotoCoreError, ClientError) as exc:
            raise DestinationError(f"S3 listing of {destination.key} failed: {exc}", "s3") from exc
        return found
    if isinstance(destination, GoogleDrive):
        return [
            f for f in _drive_query(destination, f"name contains '{prefix}'") if f.name.startswith(prefix)
        ]
    raise TypeError(f"cannot list {destination!r}")


def stored_file(destination: Destination, name: str) -> StoredFile | None:
    """The file called `name` directly in the destination folder, with the service's checksums."""
    if isinstance(destination, LocalFolder):
        path = destination.directory / name
        if not path.is_file() or path.is_symlink() or path.parent != destination.directory:
            return None
        sha256, md5, size = file_digests(path)
        return StoredFile(name, str(path), size, sha256, md5)
    if isinstance(destination, S3):
        key = destination._key(name)
        head = _s3_head_with_checksum(destination, key)
        if head is None:
            return None
        checksum = head.get("ChecksumSHA256")
        kept = base64.b64decode(checksum).hex() if checksum and "-" not in checksum else None
        return StoredFile(name, key, int(head["ContentLength"]), kept)
    if isinstance(destination, GoogleDrive):
        found = _drive_query(destination, f"name = '{name}'")
        return found[0] if found else None
    raise TypeError(f"cannot read {destination!r}")


def download(destination: Destination, file_id: str, target: Path) -> None:
    """Copy a stored file to `target`."""
    try:
        if isinstance(destination, LocalFolder):
            with open(file_id, "rb") as src, open(target, "wb") as dst:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
        elif isinstance(destination, S3):
            from botocore.exceptions import BotoCoreError, ClientError

            try:
                destination.client.download_file(destination.bucket, file_id, str(target))
            except (BotoCoreError, ClientError) as exc:
                raise DestinationError(f"S3 download of {file_id} failed: {exc}", "s3") from exc
        elif isinstance(destination, GoogleDrive):
            from googleapiclient.http import MediaIoBaseDownload

            with open(target, "wb") as dst:
                request = destination.service.files().get_media(fileId=file_id, supportsAllDrives=True)
                fetcher, done = MediaIoBaseDownload(dst, request, chunksize=8 << 20), False
                while not done:
                    _status, done = _drive_chunk(fetcher)
        else:
            raise TypeError(f"cannot download from {destination!r}")
    except OSError as exc:
        raise DestinationError(f"cannot download {file_id}: {exc}") from exc


def _s3_head_with_checksum(destination: S3, key: str) -> dict[str, Any] | None:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return destination.client.head_object(  # type: ignore[no-any-return]
            Bucket=destination.bucket, Key=key, ChecksumMode="ENABLED"
        )
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return None
        raise DestinationError(f"S3 head of {key} failed", "s3") from exc
    except BotoCoreError as exc:
        raise DestinationError(f"S3 head of {key} failed: {exc}", "s3") from exc


def _drive_query(destination: GoogleDrive, condition: str) -> list[StoredFile]:
    found: list[StoredFile] = []
    token: str | None = None
    while True:
        page = destination._call(
            destination.service.files().list(
                q=f"'{destination.folder_id}' in parents and trashed = false and {condition}",
                fields="nextPageToken, files(id, name, size, md5Checksum, sha256Checksum)",
                pageSize=1000,
                pageToken=token,
                supportsAllDrives=True,
                includeItemsFromAllDrives=True,
            ),
            "list",
        )
        found += [
            StoredFile(
                f["name"], f["id"], int(f.get("size", 0)), f.get("sha256Checksum"), f.get("md5Checksum")
            )
            for f in page.get("files", [])
        ]
        token = page.get("nextPageToken")
        if not token:
            return found


def _drive_chunk(fetcher: Any) -> tuple[Any, bool]:
    from googleapiclient.errors import HttpError

    try:
        return fetcher.next_chunk(num_retries=0)  # type: ignore[no-any-return]
    except HttpError as exc:
        raise DestinationError(
            f"Google Drive download failed: HTTP {exc.resp.status}", "google_drive"
        ) from exc
