"""The web dashboard: server-rendered pages over the same services as the JSON API.

Sign-in takes the API token (there is always one); a session lives in the database until it
expires or the user logs out (see `sessions`). Cookies are HttpOnly, SameSite=Strict, Secure on
HTTPS and loopback. Every form carries a CSRF token derived from the session cookie.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fastapi import FastAPI

    from ledgerflow.app import App
    from ledgerflow.web.sessions import LoginThrottle

SESSION_COOKIE = "ledgerflow_session"
TEMPLATES = Path(__file__).parent / "templates"
STATIC = Path(__file__).parent / "static"


def mount_dashboard(api: FastAPI, app: App, token: str, throttle: LoginThrottle) -> None:
    """The dashboard's pages; wrong passwords count in `throttle` (shared with the API's tokens)."""
    from ledgerflow.web.pages import register

    register(api, app, token, throttle)
