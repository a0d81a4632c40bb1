"""Retry policy: exponential backoff with jitter, overridable per task."""

from __future__ import annotations

import random
from collections.abc import Callable

Backoff = Callable[[int], float]


def exponential_backoff(
    base: float = 15.0, factor: float = 3.0, cap: float = 3600.0, jitter: float = 0.2
) -> Backoff:
    """Delay after failed `attempt` (1-based): base * factor^(attempt-1), ± jitter."""

    def delay(attempt: int) -> float:
        raw = min(cap, base * factor ** max(0, attempt - 1))
        return max(0.0, raw * (1 + random.uniform(-jitter, jitter)))

    return delay


def fixed_schedule(*delays: float) -> Backoff:
    """Delays given explicitly (the export uses 300, 900, 2700 s); the last one repeats."""

    def delay(attempt: int) -> float:
        return delays[min(attempt, len(delays)) - 1]

    return delay


default_backoff = exponential_backoff()
