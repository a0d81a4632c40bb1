"""Bearer-token auth and request-size limits, as ASGI middleware (one place for both)."""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Reachable without a token: load balancers and Prometheus must not need one.
PUBLIC_PATHS = ("/api/health", "/api/health/cron", "/metrics")
#: What the bearer token guards; dashboard pages check their own session cookie.
API_DOCS = ("/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc")
MAX_BODY_BYTES = 10 * 2**20


def error_body(code: str, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message}}).encode()


async def _reply(
    send: Send, status: int, code: str, message: str, headers: list[tuple[bytes, bytes]] = ()
) -> None:  # type: ignore[assignment]
    body = error_body(code, message)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class GuardMiddleware:
    """Refuse requests without the bearer token (when one is configured) and oversized bodies."""

    def __init__(self, app: ASGIApp, token: str | None, max_body: int = MAX_BODY_BYTES) -> None:
        self.app, self.token, self.max_body = app, token, max_body

    @staticmethod
    def _guarded(path: str) -> bool:
        return (path.startswith("/api/") or path in API_DOCS) and path not in PUBLIC_PATHS

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.token and self._guarded(scope["path"]) and not self._authorised(scope):
            await _reply(
                send,
                401,
                "unauthorized",
                "missing or invalid bearer token",
                [(b"www-authenticate", b'Bearer realm="ledgerflow"')],
            )
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            await _reply(send, 413, "payload_too_large", f"request body over {self.max_body} bytes")
            return
        received = 0

        async def limited_receive() -> Message:  # chunked bodies have no Content-Length
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    raise _BodyTooLarge
            return message

        try:
            await self.app(scope, limited_receive, send)
        except _BodyTooLarge:
            await _reply(send, 413, "payload_too_large", f"request body over {self.max_body} bytes")

    def _authorised(self, scope: Scope) -> bool:
        for name, value in scope.get("headers") or []:
            if name == b"authorization":
                scheme, _, presented = value.decode("latin-1").partition(" ")
                return scheme.lower() == "bearer" and hmac.compare_digest(
                    presented.strip().encode(), str(self.token).encode()
                )
        return False


class _BodyTooLarge(Exception):
    pass
