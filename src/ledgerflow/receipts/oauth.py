"""OAuth 2.0 for IMAP (XOAUTH2): an access token from a token file, refreshed when it expires.

The token file is JSON written once by the sign-in steps in docs/receipts.md (Gmail, Microsoft
365) and then kept by ledgerflow: `token_uri`, `client_id`, `client_secret` (omitted for
Microsoft's public clients), `refresh_token`, `scope`, and the current `access_token` with its
`expires_at`. google-auth's authorized-user files (`token`, `expiry`, `scopes`) are read too.

The refresh is the standard refresh-token grant (RFC 6749 §6) over HTTP: google-auth would send
`client_secret=None` for a public client, and MSAL speaks to Microsoft only. A rotated refresh
token (Microsoft rotates them) is saved with the new access token, atomically, mode 0600, under
an exclusive lock so two processes never lose each other's update.
"""

from __future__ import annotations

import fcntl
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from ledgerflow.errors import BadInput, LedgerflowError

SETTING = "LEDGERFLOW_IMAP_OAUTH2_TOKEN_FILE"
GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"
#: A token this close to its expiry is refreshed before use.
EARLY = timedelta(seconds=60)


class TokenEndpointUnavailable(LedgerflowError):
    """The token endpoint could not be reached or failed (5xx): the scan retries later."""


def xoauth2(user: str, access_token: str) -> bytes:
    """The SASL XOAUTH2 initial response (Google's and Microsoft's IMAP format)."""
    return f"user={user}\x01auth=Bearer {access_token}\x01\x01".encode()


class TokenFile:
    """The token file named by LEDGERFLOW_IMAP_OAUTH2_TOKEN_FILE."""

    def __init__(self, path: str | Path, timeout: float = 30.0) -> None:
        self.path = Path(path).expanduser()
        self.timeout = timeout

    def access_token(self, force_refresh: bool = False) -> str:
        """A current access token: the stored one while it is valid, else a refreshed one."""
        info = self._read()
        if not force_refresh and _valid(info):
            return str(info.get("access_token") or info["token"])
        with open(self.path, "rb+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)  # one refresh at a time; the others reread
            info = self._read()
            if not force_refresh and _valid(info):
                return str(info.get("access_token") or info["token"])
            info = self._refresh(info)
            self._write(info)
        return str(info["access_token"])

    def _read(self) -> dict[str, Any]:
        try:
            info = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise BadInput(f"{SETTING}: no token file at {self.path} (see docs/receipts.md)") from None
        except (OSError, ValueError) as exc:
            raise BadInput(f"{SETTING}: cannot read {self.path} as JSON: {exc}") from None
        if not isinstance(info, dict):
            raise BadInput(f"{SETTING}: {self.path} must hold a JSON object")
        missing = [k for k in ("client_id", "refresh_token") if not isinstance(info.get(k), str)]
        if missing:
            raise BadInput(f"{SETTING}: {self.path} has no {' or '.join(missing)}")
        return info

    def _refresh(self, info: dict[str, Any]) -> dict[str, Any]:
        """The refresh-token grant; the response's tokens replace the stored ones."""
        uri = str(info.get("token_uri") or GOOGLE_TOKEN_URI)
        form = {"grant_type": "refresh_token", "refresh_token": info["refresh_token"]}
        form["client_id"] = info["client_id"]
        if info.get("client_secret"):
            form["client_secret"] = info["client_secret"]
        scope = info.get("scope") or " ".join(info.get("scopes") or [])
        if scope:
            form["scope"] = scope
        request = urllib.request.Request(
            uri,
            data=urllib.parse.urlencode(form).encode(),
            headers={"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                body = json.loads(response.read().decode("utf-8"))
        except urllib.error.HTTPError as exc:
            detail = _oauth_error(exc)
            if exc.code >= 500 or exc.code == 429:
                raise TokenEndpointUnavailable(f"token endpoint {uri} failed: HTTP {exc.code}") from None
            raise BadInput(
                f"{SETTING}: the token endpoint refused the refresh token ({detail}); "
                f"sign in again to write a new token file (docs/receipts.md)"
            ) from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise TokenEndpointUnavailable(f"token endpoint {uri} unreachable: {exc}") from None
        token = body.get("access_token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise TokenEndpointUnavailable(f"token endpoint {uri} returned no access_token")
        lifetime = body.get("expires_in")
        expires = datetime.now(UTC) + timedelta(seconds=int(lifetime) if lifetime else 3600)
        fresh = {k: v for k, v in info.items() if k not in ("token", "expiry")}
        fresh.update(access_token=token, expires_at=expires.isoformat(timespec="seconds"))
        if isinstance(body.get("refresh_token"), str) and body["refresh_token"]:
            fresh["refresh_token"] = body["refresh_token"]  # rotated
        return fresh

    def _write(self, info: dict[str, Any]) -> None:
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(info, out, indent=2)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, self.path)


def _valid(info: dict[str, Any]) -> bool:
    token = info.get("access_token") or info.get("token")
    expires = info.get("expires_at") or info.get("expiry")
    if not token or not expires:
        return False
    try:
        when = datetime.fromisoformat(str(expires).replace("Z", "+00:00"))
    except ValueError:
        return False
    when = when if when.tzinfo else when.replace(tzinfo=UTC)  # google-auth writes naive UTC
    return datetime.now(UTC) < when - EARLY


def _oauth_error(exc: urllib.error.HTTPError) -> str:
    """`invalid_grant: Token has been expired or revoked` from an OAuth error response."""
    try:
        body = json.loads(exc.read().decode("utf-8"))
        said = ": ".join(str(body[k]) for k in ("error", "error_description") if body.get(k))
    except (OSError, ValueError, AttributeError, TypeError):
        said = ""
    return said or f"HTTP {exc.code}"
