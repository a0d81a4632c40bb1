"""A small Google Drive v3 server on loopback, driven by the real google-api-python-client.

It implements what ledgerflow uses: files.generateIds, resumable files.create (409 when a
reserved id is reused), files.get (metadata, or the content with `alt=media`), files.list
(the `q` conditions ledgerflow sends: `'ID' in parents`, `trashed = false`, `name = '…'`,
`name contains '…'`) and files.delete, and can fail on demand (HTTP 500 or a hang longer
than the client's timeout). Like Drive, it reports md5Checksum and sha256Checksum.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse


class FakeDrive:
    def __init__(self) -> None:
        self.files: dict[str, dict[str, Any]] = {}
        self.sessions: dict[str, dict[str, Any]] = {}
        self.requests: list[tuple[str, str]] = []
        self.fail_mode: str | None = None  # None | "500" | "hang"
        self.hang_seconds = 5.0
        self.lock = threading.Lock()
        handler = _make_handler(self)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}/"

    def start(self) -> FakeDrive:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def in_folder(self, folder: str) -> list[dict[str, Any]]:
        return [f for f in self.files.values() if folder in f["parents"]]


def _make_handler(drive: FakeDrive) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def _send(self, status: int, body: Any = None, headers: dict[str, str] | None = None) -> None:
            data = b"" if body is None else json.dumps(body).encode()
            self.send_response(status)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _body(self) -> bytes:
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        def _failing(self) -> bool:
            if drive.fail_mode == "500":
                self._body()
                self._send(500, {"error": {"code": 500, "message": "backend error"}})
                return True
            if drive.fail_mode == "hang":
                self._body()
                time.sleep(drive.hang_seconds)
                self._send(503, {"error": {"code": 503, "message": "too late"}})
                return True
            return False

        def _public(self, f: dict[str, Any]) -> dict[str, Any]:
            return {
                "id": f["id"],
                "name": f["name"],
                "md5Checksum": f["md5"],
                "sha256Checksum": hashlib.sha256(f["content"]).hexdigest(),
                "size": str(len(f["content"])),
                "appProperties": f["appProperties"],
                "parents": f["parents"],
                "webViewLink": f"{drive.url}file/{f['id']}",
            }

        def do_POST(self) -> None:
            url = urlparse(self.path)
            query = parse_qs(url.query)
            drive.requests.append(("POST", url.path))
            if self._failing():
                return
            if url.path.endswith("/files/generateIds"):
                self._body()
                count = int(query.get("count", ["1"])[0])
                self._send(
                    200,
                    {
                        "ids": [secrets.token_urlsafe(24) for _ in range(count)],
                        "space": "drive",
                        "kind": "drive#generatedIds",
                    },
                )
                return
            if url.path.startswith("/upload/drive/v3/files") and query.get("uploadType") == ["resumable"]:
                meta = json.loads(self._body() or b"{}")
                with drive.lock:
                    if meta.get("id") and meta["id"] in drive.files:
                        self._send(
                            409,
                            {
                                "error": {
                                    "code": 409,
                                    "message": "A file already exists with the provided ID.",
                                }
                            },
                        )
                        return
                    session = secrets.token_hex(8)
                    drive.sessions[session] = {"meta": meta, "data": b""}
                self._send(
                    200,
                    {},
                    {
                        "Location": f"{drive.url}upload/drive/v3/files?uploadType=resumable"
                        f"&upload_id={session}"
                    },
                )
                return
            self._send(404, {"error": {"code": 404, "message": f"no route {url.path}"}})

        def do_PUT(self) -> None:
            url = urlparse(self.path)
            query = parse_qs(url.query)
            drive.requests.append(("PUT", url.path))
            if self._failing():
                return
            session = drive.sessions.get(query.get("upload_id", [""])[0])
            if session is None:
                self._send(404, {"error": {"code": 404, "message": "no such upload session"}})
                return
            session["data"] += self._body()
            total = (self.headers.get("Content-Range") or "").rsplit("/", 1)[-1]
            if total not in ("*", "") and len(session["data"]) < int(total):
                self.send_response(308)
                self.send_header("Range", f"bytes=0-{len(session['data']) - 1}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            meta = session["meta"]
            with drive.lock:
                file_id = meta.get("id") or secrets.token_urlsafe(24)
                if file_id in drive.files:
                    self._send(409, {"error": {"code": 409, "message": "exists"}})
                    return
                drive.files[file_id] = {
                    "id": file_id,
                    "name": meta.get("name"),
                    "mimeType": meta.get("mimeType"),
                    "parents": meta.get("parents", []),
                    "appProperties": meta.get("appProperties", {}),
                    "content": session["data"],
                    "md5": hashlib.md5(session["data"], usedforsecurity=False).hexdigest(),
                }
            self._send(200, self._public(drive.files[file_id]))

        def do_GET(self) -> None:
            url = urlparse(self.path)
            drive.requests.append(("GET", url.path))
            if self._failing():
                return
            if url.path.endswith("/files/generateIds"):
                count = int(parse_qs(url.query).get("count", ["1"])[0])
                self._send(
                    200,
                    {
                        "ids": [secrets.token_urlsafe(24) for _ in range(count)],
                        "space": "drive",
                        "kind": "drive#generatedIds",
                    },
                )
                return
            query = parse_qs(url.query)
            if url.path.endswith("/files"):
                try:
                    matching = [self._public(f) for f in drive.files.values() if _matches(f, query["q"][0])]
                except ValueError as exc:
                    self._send(400, {"error": {"code": 400, "message": str(exc)}})
                    return
                self._send(200, {"kind": "drive#fileList", "files": matching})
                return
            file_id = url.path.rsplit("/", 1)[-1]
            f = drive.files.get(file_id)
            if f is None:
                self._send(404, {"error": {"code": 404, "message": "File not found"}})
            elif query.get("alt") == ["media"]:
                self.send_response(200)
                self.send_header("Content-Type", f.get("mimeType") or "application/octet-stream")
                self.send_header("Content-Length", str(len(f["content"])))
                self.end_headers()
                self.wfile.write(f["content"])
            else:
                self._send(200, self._public(f))

        def do_DELETE(self) -> None:
            url = urlparse(self.path)
            drive.requests.append(("DELETE", url.path))
            if self._failing():
                return
            file_id = url.path.rsplit("/", 1)[-1]
            if drive.files.pop(file_id, None) is None:
                self._send(404, {"error": {"code": 404, "message": "File not found"}})
            else:
                self.send_response(204)
                self.send_header("Content-Length", "0")
                self.end_headers()

    return Handler


_CONDITION = re.compile(r"'([^']*)' in parents|trashed = false|name = '([^']*)'|name contains '([^']*)'")


def _matches(f: dict[str, Any], q: str) -> bool:
    """The `and`-joined conditions of a files.list query (an unknown one is an error, not a match)."""
    for condition in q.split(" and "):
        match = _CONDITION.fullmatch(condition.strip())
        if match is None:
            raise ValueError(f"the fake Drive does not understand {condition!r}")
        parent, name, prefix = match.groups()
        if parent is not None and parent not in f["parents"]:
            return False
        if name is not None and f["name"] != name:
            return False
        if prefix is not None and not f["name"].startswith(prefix):
            return False
    return True
