"""Limits on the JSON a job carries (args, kwargs, results), checked before anything is stored.

Every entry point (Python API, CLI, HTTP API, schedules) goes through `check_json`; the
worker uses `result_problem` so a return value the database cannot or must not hold (NaN,
NUL, too deep, over `LEDGERFLOW_RESULT_MAX_BYTES`) is recorded as a clear failure of the
attempt (the job goes dead, not retried: its work is done) instead of being lost silently.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from ledgerflow.errors import BadInput

#: Python strings may hold lone surrogates (e.g. from `surrogateescape`); UTF-8 cannot.
SURROGATES = re.compile("[\ud800-\udfff]")


@dataclass(frozen=True)
class PayloadLimits:
    """Nesting depth (containers, the outer list counts) and encoded size of one JSON value."""

    max_depth: int = 32
    max_bytes: int = 256 * 1024


DEFAULT_LIMITS = PayloadLimits()
_limits = DEFAULT_LIMITS


def configure(limits: PayloadLimits) -> None:
    """Set the limits checked by `JobSpec` (the App calls this from its settings)."""
    global _limits
    _limits = limits


def current_limits() -> PayloadLimits:
    return _limits


class PayloadError(BadInput):
    """A JSON value the database cannot or must not store; the message says why."""

    code = "bad_payload"


#: One encoder for every check (`json.dumps` with options builds a new one per call).
_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode
_PLAIN = frozenset({int, bool, type(None)})  # exact types: subclasses take the full checks below


def _problem(value: Any, max_depth: int) -> str | None:
    """Why `value` is not plain, storable JSON within `max_depth` (None if it is)."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        v, depth = stack.pop()
        if type(v) in _PLAIN:
            continue
        if isinstance(v, str):
            if "\x00" in v:
                return "text contains a NUL character (\\u0000), which cannot be stored"
            if not v.isascii() and SURROGATES.search(v):
                return "text contains a lone surrogate, which is not valid Unicode"
        elif isinstance(v, bool) or v is None or isinstance(v, int):
            continue
        elif isinstance(v, float):
            if not math.isfinite(v):
                return f"{v!r} is not a JSON number"
        elif isinstance(v, list | tuple):
            if depth + 1 > max_depth:
                return f"nested more than {max_depth} levels deep"
            stack.extend((x, depth + 1) for x in v)
        elif isinstance(v, dict):
            if depth + 1 > max_depth:
                return f"nested more than {max_depth} levels deep"
            for k, x in v.items():
                if not isinstance(k, str):
                    return f"object key {k!r} is not a string"
                stack.append((k, depth + 1))
                stack.append((x, depth + 1))
        else:
            return f"a {type(v).__name__} is not JSON"
    return None


def check_json(value: Any, what: str, limits: PayloadLimits | None = None) -> str:
    """Refuse `value` unless it is storable JSON within the limits; returns its encoding."""
    limits = limits or _limits
    if not value and type(value) in (list, dict) and limits.max_depth >= 1 and limits.max_bytes >= 2:
        return "[]" if type(value) is list else "{}"  # no arguments: the common case, nothing to walk
    problem = _problem(value, limits.max_depth)
    if problem is None:
        text = _encode(value)
        size = len(text) if text.isascii() else len(text.encode())
        if size <= limits.max_bytes:
            return text
        problem = f"{size} bytes encoded, over the limit of {limits.max_bytes}"
    raise PayloadError(f"{what}: {problem}")


def storable_result(value: Any, limits: PayloadLimits | None = None) -> tuple[Any, str | None]:
    """(value, None) when a task's return value can be stored, else (None, why not)."""
    if value is None:
        return None, None
    try:
        check_json(value, "result", limits)
    except PayloadError as exc:
        return None, str(exc)
    return value, None


def result_problem(value: Any, max_bytes: int, max_depth: int | None = None) -> str | None:
    """Why a task's return value cannot be stored (not JSON, too deep, over `max_bytes`
    encoded), or None when it can."""
    if value is None:
        return None
    try:
        check_json(value, "result", PayloadLimits(max_depth or _limits.max_depth, max_bytes))
    except PayloadError as exc:
        return str(exc)
    return None
