"""Fire-time computation, pure: DST exactly as classic cron, `L`, business days."""

from __future__ import annotations

from datetime import date, datetime
from zoneinfo import ZoneInfo

import pytest

from ledgerflow import BadInput
from ledgerflow.scheduler.cron import parse_cron
from ledgerflow.scheduler.schedules import Schedule

NY = ZoneInfo("America/New_York")


def next_times(cron: str, tz: str, after: str, n: int, **options) -> list[str]:
    schedule = Schedule(name="t", cron_expression=cron, job_type="x", timezone=tz, **options)
    start = datetime.fromisoformat(after)
    return [t.isoformat(timespec="seconds") for t in schedule.next_times(start, n)]


class TestDstTransitions:
    def test_spring_forward_runs_skipped_slot_once_at_the_first_instant_after_the_gap(self):
        assert next_times("30 2 * * *", "America/New_York", "2026-03-07T12:00:00-05:00", 3) == [
            "2026-03-08T03:00:00-04:00",
            "2026-03-09T02:30:00-04:00",
            "2026-03-10T02:30:00-04:00",
        ]

    def test_fall_back_runs_repeated_time_once_at_its_first_occurrence(self):
        assert next_times("30 1 * * *", "America/New_York", "2026-10-31T12:00:00-04:00", 3) == [
            "2026-11-01T01:30:00-04:00",
            "2026-11-02T01:30:00-05:00",
            "2026-11-03T01:30:00-05:00",
        ]

    def test_step_in_the_hour_follows_absolute_time_through_the_repeated_hour(self):
        assert next_times("*/30 * * * *", "America/New_York", "2026-11-01T00:50:00-04:00", 5) == [
            "2026-11-01T01:00:00-04:00",
            "2026-11-01T01:30:00-04:00",
            "2026-11-01T01:00:00-05:00",
            "2026-11-01T01:30:00-05:00",
            "2026-11-01T02:00:00-05:00",
        ]

    def test_london_spring_forward_and_fall_back(self):
        assert next_times("30 1 * * *", "Europe/London", "2026-03-28T12:00:00+00:00", 2) == [
            "2026-03-29T02:00:00+01:00",
            "2026-03-30T01:30:00+01:00",
        ]
        assert next_times("30 1 * * *", "Europe/London", "2026-10-24T12:00:00+01:00", 2) == [
            "2026-10-25T01:30:00+01:00",
            "2026-10-26T01:30:00+00:00",
        ]


def test_last_day_of_month_in_tokyo_across_leap_and_non_leap_february():
    assert next_times("0 1 L * *", "Asia/Tokyo", "2028-01-31T12:00:00+09:00", 2) == [
        "2028-02-29T01:00:00+09:00",
        "2028-03-31T01:00:00+09:00",
    ]
    assert next_times("0 1 L * *", "Asia/Tokyo", "2027-01-31T12:00:00+09:00", 2) == [
        "2027-02-28T01:00:00+09:00",
        "2027-03-31T01:00:00+09:00",
    ]


def test_daily_export_at_1800_bangkok():
    assert next_times("0 18 * * *", "Asia/Bangkok", "2026-11-26T18:00:00+07:00", 2) == [
        "2026-11-27T18:00:00+07:00",
        "2026-11-28T18:00:00+07:00",
    ]


def test_names_ranges_steps_and_lists():
    assert next_times("15 9 * JAN MON-FRI", "UTC", "2027-01-01T00:00:00+00:00", 3) == [
        "2027-01-01T09:15:00+00:00",
        "2027-01-04T09:15:00+00:00",
        "2027-01-05T09:15:00+00:00",
    ]
    assert next_times("0 8,12 */10 * *", "UTC", "2026-11-30T23:00:00+00:00", 3) == [
        "2026-12-01T08:00:00+00:00",
        "2026-12-01T12:00:00+00:00",
        "2026-12-11T08:00:00+00:00",
    ]


@pytest.mark.parametrize(
    ("expression", "problem"),
    [
        ("* * *", "expected 5 fields"),
        ("0 0 * * * *", "expected 5 fields"),
        ("61 * * * *", "Bad minute"),
        ("0 0 15W * *", "Bad day-of-month"),
        ("", "expected 5 fields"),
    ],
)
def test_invalid_cron_is_refused_with_the_reason(expression, problem):
    with pytest.raises(BadInput, match=problem):
        parse_cron(expression)


def test_unknown_zone_and_calendar_are_refused():
    with pytest.raises(BadInput, match="unknown time zone"):
        Schedule(name="t", cron_expression="0 0 * * *", job_type="x", timezone="Mars/Olympus")
    with pytest.raises(BadInput, match="unknown holiday calendar"):
        Schedule(
            name="t", cron_expression="0 0 * * *", job_type="x", holiday_calendar="XX", business_day="next"
        )


class TestBusinessDays:
    def test_last_business_day_of_the_month_at_1800_bangkok_is_one_schedule(self):
        times = next_times(
            "0 18 L * *",
            "Asia/Bangkok",
            "2026-01-01T00:00:00+07:00",
            12,
            holiday_calendar="TH",
            business_day="previous",
        )
        assert times[0] == "2026-01-30T18:00:00+07:00"  # 31 Jan is a Saturday
        assert times[1] == "2026-02-27T18:00:00+07:00"  # 28 Feb is a Saturday
        assert times[4] == "2026-05-29T18:00:00+07:00"  # 31 May: Sunday and Visakha Bucha
        assert times[11] == "2026-12-30T18:00:00+07:00"  # 31 Dec: New Year's Eve holiday in Thailand

    def test_next_business_day_and_extra_holidays(self):
        assert next_times(
            "0 9 1 * *",
            "Asia/Tokyo",
            "2026-10-15T00:00:00+09:00",
            2,
            business_day="next",
            extra_holidays=(date(2026, 12, 1),),
        ) == [
            "2026-11-02T09:00:00+09:00",  # 1 Nov 2026 is a Sunday
            "2026-12-02T09:00:00+09:00",  # 1 Dec is an extra holiday
        ]

    def test_skip_drops_non_business_days(self):
        times = next_times("0 18 * * *", "Asia/Bangkok", "2026-11-27T00:00:00+07:00", 3, business_day="skip")
        assert times == [
            "2026-11-27T18:00:00+07:00",
            "2026-11-30T18:00:00+07:00",
            "2026-12-01T18:00:00+07:00",
        ]


def test_next_times_stops_scanning_once_it_has_enough():
    """Regression: the stop test compared a fire with itself, so every call scanned 20,000 fires."""
    from datetime import UTC, datetime

    from ledgerflow.scheduler.schedules import Schedule

    scanned = []
    schedule = Schedule(name="daily", cron_expression="0 18 * * *", job_type="t", timezone="Asia/Bangkok")
    original = Schedule.fires

    def counting(self, after):
        for fire in original(self, after):
            scanned.append(fire)
            yield fire

    Schedule.fires = counting  # type: ignore[method-assign]
    try:
        times = schedule.next_times(datetime(2026, 11, 26, 12, tzinfo=UTC), 3)
    finally:
        Schedule.fires = original  # type: ignore[method-assign]
    assert [t.isoformat() for t in times] == [
        "2026-11-27T18:00:00+07:00",
        "2026-11-28T18:00:00+07:00",
        "2026-11-29T18:00:00+07:00",
    ]
    assert len(scanned) == 4
