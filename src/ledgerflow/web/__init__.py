"""The web dashboard: server-rendered pages over the same services as the JSON API.

Sessions: the login form takes the API token; the cookie holds `expiry.signature`, an HMAC
of the expiry keyed by the token (HttpOnly, SameSite=Strict, Secure on HTTPS and loopback).
Every form carries a CSRF token derived from the session cookie and checked on POST.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fastapi import FastAPI

    from ledgerflow.app import App

SESSION_COOKIE = "ledgerflow_session"
SESSION_SECONDS = 12 * 3600
TEMPLATES = Path(__file__).parent / "templates"
STATIC = Path(__file__).parent / "static"


def _sign(secret: str, message: str) -> str:
    return hmac.new(secret.encode(), message.encode(), hashlib.sha256).hexdigest()


def new_session(secret: str, now: float | None = None) -> str:
    expiry = int((now or time.time()) + SESSION_SECONDS)
    return f"{expiry}.{_sign(secret, f'session:{expiry}')}"


def valid_session(secret: str, cookie: str | None, now: float | None = None) -> bool:
    if not cookie or "." not in cookie:
        return False
    expiry, _, signature = cookie.partition(".")
    if not expiry.isdigit() or int(expiry) < (now or time.time()):
        return False
    return hmac.compare_digest(signature, _sign(secret, f"session:{expiry}"))


def csrf_token(secret: str, cookie: str) -> str:
    return _sign(secret, f"csrf:{cookie}")


def mount_dashboard(api: FastAPI, app: App) -> None:
    from ledgerflow.web.pages import register

    register(api, app)
