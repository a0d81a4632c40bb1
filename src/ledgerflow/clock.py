"""Clocks: time is injected into the scheduler (tests never sleep to let time pass)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

Clock = Callable[[], datetime]


def system_clock() -> datetime:
    return datetime.now(UTC)


class FixedClock:
    """A clock that only moves when told to (unit tests)."""

    def __init__(self, start: datetime) -> None:
        self.now = start.astimezone(UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> datetime:
        self.now += timedelta(**delta)
        return self.now

    def set(self, when: datetime) -> None:
        self.now = when.astimezone(UTC)


class AcceleratedClock:
    """Simulated time running `speed`× faster from `start`, anchored at a real instant.

    Several processes given the same anchor agree on the simulated time, so a minute-level
    schedule can be exercised by real scheduler processes in seconds.
    """

    def __init__(self, start: datetime, anchor: float, speed: float) -> None:
        self.start, self.anchor, self.speed = start.astimezone(UTC), anchor, speed

    def __call__(self) -> datetime:
        return self.start + timedelta(seconds=(time.time() - self.anchor) * self.speed)


def clock_from_env() -> Clock | None:
    """`LEDGERFLOW_CLOCK=accelerated:START_ISO,ANCHOR_EPOCH,SPEED` (a testing and demo aid)."""
    value = os.environ.get("LEDGERFLOW_CLOCK", "")
    if not value.startswith("accelerated:"):
        return None
    start, anchor, speed = value.removeprefix("accelerated:").split(",")
    return AcceleratedClock(datetime.fromisoformat(start), float(anchor), float(speed))
