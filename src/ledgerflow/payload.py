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
import secrets
import sys
from collections.abc import Callable
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


def _refuse(value: Any) -> Any:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _compact_encoder() -> Callable[[Any], str]:
    """Compact JSON, non-ASCII kept, NaN and infinities refused (ValueError), by the C encoder
    made once: `JSONEncoder.encode` makes it again on every call (0.87 against 0.17 us for
    `["1"]`). No check for circular values (they raise RecursionError): a shared set of marks
    would be left dirty by an error. Without the C module, `JSONEncoder.encode` itself."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode
    encode = make(None, _refuse, json.encoder.encode_basestring, None, ":", ",", False, False, False)
    return lambda value: "".join(encode(value, 0))


def dumps_strict(value: Any, **options: Any) -> str:
    """`json.dumps` whose output is always JSON: an infinite float (read back from a SQLite
    number past a float's range, stored before migration 0017) is written `1e999` / `-1e999`,
    which reads as that value again, never `Infinity`, which no strict parser takes."""
    try:
        return json.dumps(value, allow_nan=False, **options)
    except ValueError:
        pass
    mark = f"ledgerflow-infinity-{secrets.token_hex(8)}"

    def finite(v: Any) -> Any:
        if isinstance(v, float) and math.isinf(v):
            return f"{mark}{'+' if v > 0 else '-'}"
        if isinstance(v, dict):
            return {k: finite(item) for k, item in v.items()}
        if isinstance(v, list | tuple):
            return [finite(item) for item in v]
        return v

    text = json.dumps(finite(value), allow_nan=False, **options)
    return text.replace(f'"{mark}+"', "1e999").replace(f'"{mark}-"', "-1e999")


#: One encoder for every check and every JSON column (see `_compact_encoder`).
compact_json = _compact_encoder()
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
    text, problem = encoded(value, limits)
    if text is None:
        raise PayloadError(f"{what}: {problem}")
    return text


def encoded(value: Any, limits: PayloadLimits | None = None) -> tuple[str, None] | tuple[None, str]:
    """(`value`'s encoding, None) when it is storable JSON within the limits, else (None, why
    not): `check_json` without the error, for callers that name the value only when refused."""
    limits = limits or _limits
    kind = type(value)
    if not value and kind in _EMPTY and limits.max_depth >= 1 and limits.max_bytes >= 2:
        return _EMPTY[kind], None  # no arguments: the common case, nothing to walk
    try:
        text: str | None = compact_json(value)
    except (ValueError, TypeError, RecursionError):  # NaN, not JSON, too deep: the walk says which
        text = None
    if text is None or not _plainly_storable(value, kind, text, limits.max_depth):
        problem = _problem(value, limits.max_depth)
        if problem is not None:
            return None, problem
        if text is None:  # what the walk accepts and the encoder refuses: an integer too long
            try:
                text = compact_json(value)
            except ValueError:
                return None, _TOO_LONG_INT.format(sys.get_int_max_str_digits())
    size = len(text) if text.isascii() else len(text.encode())
    if size <= limits.max_bytes:
        return text, None
    return None, f"{size} bytes encoded, over the limit of {limits.max_bytes}"


#: Python converts no int of more digits to text or back (`sys.set_int_max_str_digits`):
#: one could be neither encoded nor read back.
_TOO_LONG_INT = "an integer of more than {} digits cannot be converted to JSON and back"

#: An empty container's encoding, by its exact type.
_EMPTY: dict[type, str] = {list: "[]", tuple: "[]", dict: "{}"}


def _plainly_storable(value: Any, kind: type, text: str, max_depth: int) -> bool:
    """Whether `value`, which encoded to `text`, is certainly what `_problem` accepts, read from
    the text (3x faster than the walk for a job's usual flat arguments): no NUL escape or lone
    surrogate, no more brackets than `max_depth` levels, and no dict but a top-level one with
    text keys (the encoder turns number keys into text). False only means "walk it"."""
    if "\\u0000" in text or (not text.isascii() and SURROGATES.search(text)):
        return False
    braces = text.count("{")
    if braces + text.count("[") > max_depth:
        return False
    if kind is dict:
        return braces == 1 and all(type(k) is str for k in value)
    return braces == 0


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
