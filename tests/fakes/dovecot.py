"""A real IMAP server for tests: Debian's Dovecot on a loopback port, with throwaway mailboxes."""

from __future__ import annotations

import imaplib
import os
import shutil
import socket
import subprocess
import time
import uuid
from email.message import EmailMessage
from pathlib import Path

CONFIG = """\
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
protocols = imap
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {root}/users
}}
userdb {{
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


def dovecot_binary() -> str | None:
    return shutil.which("dovecot") or next((p for p in ("/usr/sbin/dovecot",) if os.path.exists(p)), None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Dovecot:
    """`dovecot -F` with its own config, users file and mail folders under `root`."""

    def __init__(self, root: Path) -> None:
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
        (root / "dovecot.conf").write_text(CONFIG.format(root=root, uid=uid, gid=gid, port=self.port))
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
