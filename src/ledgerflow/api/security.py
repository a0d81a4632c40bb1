"""Request guards as one ASGI middleware: Host allow-list, cross-origin writes, bearer tokens,
body size, and the security headers every response carries.

Order: a foreign `Host` (DNS rebinding) is refused first, then an unsafe request that a browser
sent from another origin without a bearer token (a form post from any web page), then a client
that guessed too many wrong tokens (they count with the sign-in form's wrong passwords: the
same secret), then a missing token, then an oversized body.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from ledgerflow.web.sessions import LoginThrottle

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Health checks and metrics: public unless LEDGERFLOW_METRICS_TOKEN is set.
PUBLIC_PATHS = ("/api/health", "/api/health/cron", "/metrics")
#: The OpenAPI document and its viewers (need the API token; they load their own scripts).
API_DOCS = ("/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc")
MAX_BODY_BYTES = 10 * 2**20
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")

#: Sent with every response. The dashboard uses no inline script or style, so `'self'` is enough.
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
]
CSP = (
    b"default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
    b"form-action 'self'; frame-ancestors 'none'"
)
DOCS_CSP = b"frame-ancestors 'none'"  # Swagger UI and ReDoc load scripts from a CDN


def error_body(code: str, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message}}).encode()


async def _reply(
    send: Send, status: int, code: str, message: str, headers: Iterable[tuple[bytes, bytes]] = ()
) -> None:
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


def default_allowed_hosts(bind_host: str) -> list[str]:
    """The bind address plus the loopback names (what `LEDGERFLOW_ALLOWED_HOSTS` defaults to)."""
    bound = f"[{bind_host}]" if ":" in bind_host and not bind_host.startswith("[") else bind_host
    return list(dict.fromkeys([bound.lower(), *LOOPBACK_HOSTS]))


def host_allowed(host: str, allowed: Iterable[str]) -> bool:
    """`host` is a Host header value (maybe with a port); `allowed` holds names, `*.domain` or `*`."""
    name = host.strip().lower()
    if name.startswith("["):
        name = name[: name.find("]") + 1] if "]" in name else ""
    else:
        name = name.rsplit(":", 1)[0] if name.count(":") == 1 else name
    name = name.rstrip(".")
    if not name:
        return False
    for pattern in allowed:
        pattern = pattern.rstrip(".")
        if pattern == "*" or pattern == name:
            return True
        if pattern.startswith("*.") and name.endswith(pattern[1:]):
            return True
    return False


class GuardMiddleware:
    """See the module docstring; `token` guards /api and the API docs, `metrics_token` (when set)
    the health checks and metrics."""

    def __init__(
        self,
        app: ASGIApp,
        token: str,
        allowed_hosts: list[str],
        throttle: LoginThrottle,
        metrics_token: str | None = None,
        max_body: int = MAX_BODY_BYTES,
    ) -> None:
        if not token:
            raise ValueError("the API always needs a token")
        self.app, self.token, self.metrics_token, self.throttle = app, token, metrics_token, throttle
        self.allowed_hosts, self.max_body = allowed_hosts, max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        csp = DOCS_CSP if path in API_DOCS else CSP

        async def secured_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                extra = [h for h in SECURITY_HEADERS if h[0] not in present]
                if b"content-security-policy" not in present:
                    extra.append((b"content-security-policy", csp))
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        headers: dict[bytes, bytes] = {}
        for name, value in scope.get("headers") or []:
            headers.setdefault(name, value)
        host = headers.get(b"host", b"").decode("latin-1")
        if not host_allowed(host, self.allowed_hosts):
            shown = host[:100] or "(none)"
            await _reply(
                secured_send,
                400,
                "host_not_allowed",
                f"Host {shown!r} is not allowed: add it to LEDGERFLOW_ALLOWED_HOSTS",
            )
            return
        presented = _bearer(headers.get(b"authorization"))
        if scope["method"] not in SAFE_METHODS and presented is None and _cross_origin(headers, host):
            await _reply(
                secured_send,
                403,
                "cross_origin",
                "a cross-origin request that changes something needs a bearer token",
            )
            return
        wanted = self._tokens_for(path)
        client = (scope.get("client") or ("?",))[0]
        if wanted and presented is not None:
            wait = self.throttle.retry_after(client, everyone=False)  # a flood elsewhere locks out no one
            if wait:
                await _reply(
                    secured_send,
                    429,
                    "too_many_attempts",
                    f"too many wrong tokens: try again in {wait} s",
                    [(b"retry-after", str(wait).encode())],
                )
                return
        if wanted and not any(
            presented is not None and hmac.compare_digest(presented.encode(), t.encode()) for t in wanted
        ):
            if presented is not None:
                self.throttle.failed(client)
            await _reply(
                secured_send,
                401,
                "unauthorized",
                "missing or invalid bearer token",
                [(b"www-authenticate", b'Bearer realm="ledgerflow"')],
            )
            return
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            await _reply(secured_send, 413, "payload_too_large", f"request body over {self.max_body} bytes")
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
            await self.app(scope, limited_receive, secured_send)
        except _BodyTooLarge:
            await _reply(secured_send, 413, "payload_too_large", f"request body over {self.max_body} bytes")

    def _tokens_for(self, path: str) -> tuple[str, ...]:
        """The tokens any of which opens `path` (empty: public)."""
        if path in PUBLIC_PATHS:
            return (self.metrics_token, self.token) if self.metrics_token else ()
        if path.startswith("/api/") or path in API_DOCS:
            return (self.token,)
        return ()  # dashboard pages check their own session


def _bearer(value: bytes | None) -> str | None:
    if value is None:
        return None
    scheme, _, presented = value.decode("latin-1").partition(" ")
    return presented.strip() if scheme.lower() == "bearer" and presented.strip() else None


def _cross_origin(headers: dict[bytes, bytes], host: str) -> bool:
    """True when a browser says the request comes from another site than `host`."""
    origin = headers.get(b"origin")
    if origin is not None:
        text = origin.decode("latin-1").strip()
        return text == "null" or urlsplit(text).netloc.lower() != host.strip().lower()
    return headers.get(b"sec-fetch-site", b"").lower() == b"cross-site"


class _BodyTooLarge(Exception):
    pass
