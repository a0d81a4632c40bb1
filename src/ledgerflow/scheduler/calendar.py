"""Business days for month-end closing: weekends, a country's public holidays, extra dates."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from functools import lru_cache
from typing import Literal
from zoneinfo import ZoneInfo

from ledgerflow.errors import BadInput

BusinessDayRule = Literal["next", "previous", "skip"]
RULES = ("next", "previous", "skip")


@lru_cache(maxsize=64)
def _country(code: str, year: int) -> frozenset[date]:
    import holidays  # imported when a calendar is used: it is a large package

    return frozenset(holidays.country_holidays(code, years=year).keys())


def check_country(code: str) -> str:
    import holidays

    code = code.upper()
    if code not in holidays.list_supported_countries():
        raise BadInput(f"unknown holiday calendar {code!r} (use an ISO country code such as TH or JP)")
    return code


@dataclass(frozen=True)
class BusinessCalendar:
    """Monday–Friday minus public holidays of `country` (via `holidays`) and `extra` dates."""

    country: str | None = None
    extra: frozenset[date] = field(default_factory=frozenset)

    def is_business_day(self, day: date) -> bool:
        if day.weekday() >= 5 or day in self.extra:
            return False
        return not (self.country and day in _country(self.country, day.year))

    def adjust(self, local: datetime, rule: BusinessDayRule, tz: ZoneInfo) -> datetime | None:
        """Move a fire that falls on a non-business day to the next/previous one (same wall
        time), or drop it (`skip` → None)."""
        day = local.date()
        if self.is_business_day(day):
            return local
        if rule == "skip":
            return None
        step = timedelta(days=1 if rule == "next" else -1)
        for _ in range(60):
            day += step
            if self.is_business_day(day):
                wall = datetime.combine(day, local.timetz().replace(tzinfo=None))
                return wall.replace(tzinfo=tz)
        raise BadInput(f"no business day within 60 days of {local.date()}")
