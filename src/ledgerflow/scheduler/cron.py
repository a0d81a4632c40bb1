"""Cron expressions: 5 fields, ranges, steps, lists, names, `L`; classic-cron DST behaviour.

Built on cronsim, which behaves like Debian cron across daylight-saving changes: with a
fixed minute and hour, a local time skipped by spring-forward fires once at the first
instant after the gap, and a repeated local time fires once, at its first occurrence;
with `*` or a step in the hour, fires follow absolute time.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

from cronsim import CronSim, CronSimError

from ledgerflow.errors import BadInput


@dataclass(frozen=True)
class Cron:
    expression: str

    def iter_after(self, after: datetime, tz: ZoneInfo) -> Iterator[datetime]:
        """Fire times strictly after `after` (aware), as aware datetimes in `tz`."""
        if after.tzinfo is None:
            raise ValueError("after must be timezone-aware")
        return iter(CronSim(self.expression, after.astimezone(tz)))

    def next_after(self, after: datetime, tz: ZoneInfo) -> datetime:
        return next(self.iter_after(after, tz))

    def explain(self) -> str:
        """Human-readable form, e.g. 'At 18:00 every day'."""
        try:
            return str(CronSim(self.expression, datetime(2000, 1, 1)).explain())
        except Exception:
            return self.expression


def parse_cron(expression: str) -> Cron:
    """Validate a 5-field cron expression, raising `BadInput` that names it and the problem."""
    expr = " ".join(str(expression).split())
    fields = expr.split(" ") if expr else []
    if len(fields) != 5:
        raise BadInput(f"invalid cron expression {expression!r}: expected 5 fields, got {len(fields)}")
    try:
        CronSim(expr, datetime(2000, 1, 1))
    except CronSimError as exc:
        raise BadInput(f"invalid cron expression {expression!r}: {exc}") from None
    return Cron(expr)
