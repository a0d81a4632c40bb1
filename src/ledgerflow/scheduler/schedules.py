"""Schedules: what runs when, and the pure computation of their fire times.

A *nominal* fire time is a cron occurrence; it identifies the fire (the unique
`schedule_fires` row). Its *adjusted* time is when the job runs: the same, or moved to a
business day (`next`/`previous`), or None when a non-business day is skipped.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from ledgerflow.config import check_timezone
from ledgerflow.errors import BadInput
from ledgerflow.names import check_name
from ledgerflow.payload import check_json
from ledgerflow.scheduler.calendar import RULES, BusinessCalendar, check_country
from ledgerflow.scheduler.cron import Cron, parse_cron

MISFIRE_POLICIES = ("skip", "all")
PREVIEW_COUNT = 5  # fire times shown when a schedule is added, edited or previewed
DEFAULT_MISFIRE_MAX = 24
#: Most occurrences examined in one pass (a long outage of a per-minute schedule).
MAX_SCAN = 20_000


@dataclass(frozen=True)
class Fire:
    nominal: datetime  # the cron occurrence, aware, in the schedule's zone
    adjusted: datetime | None  # when it runs; None: skipped (not a business day)


@dataclass(frozen=True)
class Schedule:
    """A stored (or about to be stored) schedule."""

    name: str
    cron_expression: str
    job_type: str
    timezone: str = "Asia/Bangkok"
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    queue: str = "default"
    priority: int = 5
    enabled: bool = True
    misfire_policy: str = "skip"
    misfire_max: int = DEFAULT_MISFIRE_MAX
    allow_overlap: bool = False
    holiday_calendar: str | None = None
    extra_holidays: tuple[date, ...] = ()
    business_day: str | None = None
    disabled_reason: str | None = None
    standard: bool = False
    id: int | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    last_fire_time: datetime | None = None
    next_fire_time: datetime | None = None

    def __post_init__(self) -> None:
        validate(self)

    # ----------------------------------------------------------- derived
    @property
    def cron(self) -> Cron:
        return parse_cron(self.cron_expression)

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def calendar(self) -> BusinessCalendar:
        return BusinessCalendar(self.holiday_calendar, frozenset(self.extra_holidays))

    def describe(self) -> str:
        """Human-readable, e.g. 'At 18:00 every day, Asia/Bangkok'."""
        text = f"{self.cron.explain()}, {self.timezone}"
        if self.business_day:
            where = f" ({self.holiday_calendar} holidays)" if self.holiday_calendar else ""
            text += f"; on non-business days{where}: {self.business_day}"
        return text

    # ----------------------------------------------------------- fire times
    def fires(self, after: datetime) -> Iterator[Fire]:
        """Fires with a nominal time strictly after `after`, in nominal order (endless)."""
        tz = self.tz
        for nominal in self.cron.iter_after(after, tz):
            adjusted: datetime | None = nominal
            if self.business_day:
                adjusted = self.calendar.adjust(nominal, self.business_day, tz)  # type: ignore[arg-type]
            yield Fire(nominal, adjusted)

    def due(self, after: datetime, now: datetime) -> list[Fire]:
        """Fires after `after` whose run time has come by `now` (skipped ones included)."""
        horizon = now + (timedelta(days=62) if self.business_day == "previous" else timedelta(0))
        out = []
        for count, fire in enumerate(self.fires(after)):
            if fire.nominal > horizon or count >= MAX_SCAN:
                break
            when = fire.adjusted if fire.adjusted is not None else fire.nominal
            if when <= now:
                out.append(fire)
        return out

    def next_times(self, after: datetime, count: int) -> list[datetime]:
        """The next `count` run times strictly after `after`, in the schedule's zone."""
        start = after - (timedelta(days=62) if self.business_day == "next" else timedelta(0))
        # keyed by UTC: aware datetimes of one zone compare as wall times, so 01:30 EDT would
        # equal 01:30 EST on the day the clocks go back
        times: dict[datetime, datetime] = {}
        # a later nominal fire can still run earlier than those found only by moving back to a
        # previous business day, and by at most this much
        reach = timedelta(days=62) if self.business_day == "previous" else timedelta(0)
        for scanned, fire in enumerate(self.fires(start)):
            if fire.adjusted is not None and fire.adjusted > after:
                times[fire.adjusted.astimezone(UTC)] = fire.adjusted
            if len(times) >= count:
                kth = sorted(times)[count - 1]
                if fire.nominal.astimezone(UTC) - reach > kth:
                    break
            if scanned >= MAX_SCAN:
                break
        return [times[k] for k in sorted(times)][:count]

    def preview(self, count: int = PREVIEW_COUNT, after: datetime | None = None) -> list[str]:
        """The next `count` run times after `after` (default now), ISO 8601 in the schedule's zone."""
        start = after or datetime.now(UTC)
        return [t.astimezone(self.tz).isoformat(timespec="seconds") for t in self.next_times(start, count)]

    def to_row(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "cron_expression": self.cron_expression,
            "timezone": self.timezone,
            "job_type": self.job_type,
            "args": list(self.args),
            "kwargs": dict(self.kwargs),
            "queue": self.queue,
            "priority": self.priority,
            "enabled": self.enabled,
            "misfire_policy": self.misfire_policy,
            "misfire_max": self.misfire_max,
            "allow_overlap": self.allow_overlap,
            "holiday_calendar": self.holiday_calendar,
            "extra_holidays": [d.isoformat() for d in self.extra_holidays],
            "business_day": self.business_day,
            "disabled_reason": self.disabled_reason,
            "standard": self.standard,
        }

    @classmethod
    def from_row(cls, row: Any) -> Schedule:
        m = dict(row._mapping)
        m["extra_holidays"] = tuple(date.fromisoformat(d) for d in (m.get("extra_holidays") or []))
        m["args"] = list(m.get("args") or [])
        m["kwargs"] = dict(m.get("kwargs") or {})
        return cls(**m)

    def to_dict(self) -> dict[str, Any]:
        out = self.to_row()
        out.update(
            id=self.id,
            description=self.describe(),
            created_at=_iso(self.created_at),
            updated_at=_iso(self.updated_at),
            last_fire_time=_iso(self.last_fire_time, self.tz),
            next_fire_time=_iso(self.next_fire_time, self.tz),
        )
        return out


def _iso(value: datetime | None, tz: ZoneInfo | None = None) -> str | None:
    if value is None:
        return None
    return (value.astimezone(tz) if tz else value).isoformat()


def validate(s: Schedule) -> None:
    """Refuse a schedule that could never fire correctly, naming the bad value."""
    check_name(s.name, "schedule")
    parse_cron(s.cron_expression)
    try:
        check_timezone(s.timezone)
    except ValueError as exc:
        raise BadInput(str(exc)) from None
    check_name(s.job_type, "task")
    check_name(s.queue, "queue")
    if not 0 <= s.priority <= 9:
        raise BadInput(f"priority must be 0..9, got {s.priority}")
    if s.misfire_policy not in MISFIRE_POLICIES:
        raise BadInput(f"misfire policy must be skip or all, got {s.misfire_policy!r}")
    if s.misfire_max < 1:
        raise BadInput(f"misfire max must be >= 1, got {s.misfire_max}")
    if s.business_day is not None and s.business_day not in RULES:
        raise BadInput(f"business_day must be next, previous or skip, got {s.business_day!r}")
    if s.holiday_calendar:
        check_country(s.holiday_calendar)
    if (s.holiday_calendar or s.extra_holidays) and not s.business_day:
        raise BadInput("a holiday calendar needs business_day: next, previous or skip")
    check_json(list(s.args), f"args of schedule {s.name!r}")
    check_json(dict(s.kwargs), f"kwargs of schedule {s.name!r}")
