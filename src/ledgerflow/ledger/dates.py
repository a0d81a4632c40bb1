"""Dates enter the books as `YYYY-MM-DD` and nothing else (no `20261129`, no week dates)."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from typing import Any
from zoneinfo import ZoneInfo

from ledgerflow.errors import BadInput

_ISO_DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def parse_day(value: Any, what: str = "date") -> date:
    """`YYYY-MM-DD` text (or a `date`, not a `datetime`, from Python callers) → `date`."""
    if isinstance(value, date) and not isinstance(value, datetime):
        return value
    if isinstance(value, str) and _ISO_DAY.fullmatch(value):
        try:
            return date.fromisoformat(value)
        except ValueError:
            pass
    shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:36] + "…"
    raise BadInput(f"{what} {shown} is not a date (expected YYYY-MM-DD)")


def today_in(zone: str) -> date:
    """Today's date on the wall clocks of `zone` (an IANA name)."""
    return datetime.now(UTC).astimezone(ZoneInfo(zone)).date()


def check_not_after_today(day: date, zone: str, what: str) -> date:
    """Refuse a day that has not begun yet in `zone`: a batch of tomorrow would sweep up entries early."""
    today = today_in(zone)
    if day > today:
        raise BadInput(f"{what} {day.isoformat()} is after today ({today.isoformat()} in {zone})")
    return day
