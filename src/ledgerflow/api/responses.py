"""JSON responses of the API, and its one error shape `{"error": {"code", "message"}}`."""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse

from ledgerflow.payload import SURROGATES, dumps_strict


class SafeJSONResponse(JSONResponse):
    """JSON whose text is valid UTF-8 even when it echoes a lone surrogate from a request (as U+FFFD).

    Rendered by the C encoder without FastAPI's recursive `jsonable_encoder` (callers pass
    JSON-ready values)."""

    def render(self, content: Any) -> bytes:
        text = dumps_strict(content, ensure_ascii=False, separators=(",", ":"))
        return SURROGATES.sub("\ufffd", text).encode()


def error(status: int, code: str, message: str) -> JSONResponse:
    return SafeJSONResponse({"error": {"code": code, "message": message}}, status_code=status)
