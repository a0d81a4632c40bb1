"""A real IMAP server for tests: Debian's Dovecot on a loopback port, with throwaway mailboxes.

With `oauth2=TokenServer(...)` it also takes XOAUTH2 and OAUTHBEARER logins: Dovecot's `oauth2`
passdb asks the token server's introspection endpoint (RFC 7662) whether a bearer token is
active and whose it is, as it would ask Google's or Microsoft's. The same users still log in
with their password (PLAIN), so tests deliver mail as before.
"""

from __future__ import annotations

import imaplib
import json
import os
import secrets
import shutil
import socket
import subprocess
import threading
import time
import uuid
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

CONFIG = """\
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
protocols = imap
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login{mechanisms}
auth_failure_delay = 0
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {root}/users
}}
{oauth2}userdb {{
  driver = static
  args = uid={uid} gid={gid} home={root}/home/%u
}}
mail_location = maildir:~/Maildir
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service stats {{
  unix_listener stats-writer {{
    mode = 0666
  }}
}}
"""


OAUTH2_PASSDB = """\
passdb {{
  driver = oauth2
  mechanisms = xoauth2 oauthbearer
  args = {root}/oauth2.conf.ext
}}
"""
OAUTH2_ARGS = """\
introspection_mode = post
introspection_url = {url}
username_attribute = username
active_attribute = active
active_value = true
"""


class TokenServer:
    """An OAuth 2.0 authorization server on loopback: the refresh-token grant (RFC 6749 §6) at
    /token, rotating refresh tokens as Microsoft does, and token introspection at /introspect.

    Every request's form is kept in `requests` (path, form) so tests can check what was sent.
    """

    def __init__(self, client_id: str = "ledgerflow-test", client_secret: str | None = "s3cret") -> None:
        self.client_id, self.client_secret = client_id, client_secret
        self.access: dict[str, str] = {}  # access token -> user
        self.refresh: dict[str, str] = {}  # refresh token -> user
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
                with server.lock:
                    server.requests.append((self.path, form))
                    status, body = server.answer(self.path, form)
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def grant(self, user: str) -> str:
        """A refresh token for `user`, as a first sign-in in a browser would give."""
        token = secrets.token_urlsafe(24)
        with self.lock:
            self.refresh[token] = user
        return token

    def revoke(self, *, access: bool = True, refresh: bool = False) -> None:
        with self.lock:
            if access:
                self.access.clear()
            if refresh:
                self.refresh.clear()

    def answer(self, path: str, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        if path == "/introspect":
            user = self.access.get(form.get("token", ""))
            return 200, {"active": True, "username": user} if user else {"active": False}
        if path != "/token" or form.get("grant_type") != "refresh_token":
            return 400, {"error": "unsupported_grant_type"}
        if form.get("client_id") != self.client_id or form.get("client_secret") != self.client_secret:
            return 401, {"error": "invalid_client", "error_description": "client authentication failed"}
        user = self.refresh.pop(form.get("refresh_token", ""), None)
        if user is None:
            return 400, {"error": "invalid_grant", "error_description": "Token has been expired or revoked."}
        access, rotated = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
        self.access[access] = user
        self.refresh[rotated] = user
        return 200, {
            "access_token": access,
            "expires_in": 3599,
            "token_type": "Bearer",
            "refresh_token": rotated,
        }

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def dovecot_binary() -> str | None:
    return shutil.which("dovecot") or next((p for p in ("/usr/sbin/dovecot",) if os.path.exists(p)), None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Dovecot:
    """`dovecot -F` with its own config, users file and mail folders under `root`."""

    def __init__(self, root: Path, oauth2: TokenServer | None = None) -> None:
        binary = dovecot_binary()
        if binary is None:
            raise RuntimeError("dovecot is not installed (apt-get install dovecot-imapd)")
        self.root = root
        self.port = _free_port()
        for sub in ("run", "state", "home"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        # mail is stored as an unprivileged user (Dovecot refuses uid 0 for mail)
        uid, gid = (65534, 65534) if os.getuid() == 0 else (os.getuid(), os.getgid())
        (root / "home").chmod(0o777)
        # the users are written once: Dovecot notices a changed passwd-file by its mtime (1 s steps)
        self._users = [(f"u{uuid.uuid4().hex[:10]}@example.test", uuid.uuid4().hex) for _ in range(200)]
        (root / "users").write_text("".join(f"{u}:{{PLAIN}}{p}\n" for u, p in self._users))
        extra = {"oauth2": "", "mechanisms": ""}
        if oauth2 is not None:
            (root / "oauth2.conf.ext").write_text(OAUTH2_ARGS.format(url=f"{oauth2.url}/introspect"))
            extra = {"oauth2": OAUTH2_PASSDB.format(root=root), "mechanisms": " xoauth2 oauthbearer"}
        config = CONFIG.format(root=root, uid=uid, gid=gid, port=self.port, **extra)
        (root / "dovecot.conf").write_text(config)
        self.proc = subprocess.Popen(
            [binary, "-F", "-c", str(root / "dovecot.conf")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"dovecot exited: {self.proc.stderr.read().decode() if self.proc.stderr else ''}"
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"dovecot did not listen on {self.port}")

    def add_user(self) -> tuple[str, str]:
        """A new empty mailbox: (user, password)."""
        return self._users.pop()

    def deliver(
        self, user: str, password: str, message: EmailMessage | bytes, mailbox: str = "INBOX"
    ) -> None:
        """APPEND a message (or its raw bytes, for headers no mail library would write)."""
        raw = message if isinstance(message, bytes) else message.as_bytes()
        conn = imaplib.IMAP4("127.0.0.1", self.port, timeout=10)
        try:
            conn.login(user, password)
            status, data = conn.append(mailbox, None, None, raw)
            assert status == "OK", data
        finally:
            conn.logout()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
