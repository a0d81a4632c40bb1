"""The one job state machine: states and the moves allowed between them."""

from __future__ import annotations

from enum import StrEnum


class JobState(StrEnum):
    SCHEDULED = "scheduled"  # waits for its time or for the jobs it depends on
    AVAILABLE = "available"  # may run now; a worker will claim it
    RUNNING = "running"  # a worker holds its lease
    RETRYABLE = "retryable"  # an attempt failed; waits for its backoff to pass
    COMPLETED = "completed"  # finished successfully (final)
    DEAD = "dead"  # attempts exhausted: the dead-letter queue
    CANCELLED = "cancelled"  # cancelled by a user or because a dependency died (final)


S = JobState

#: States a worker may claim from (when `scheduled_at` has passed).
CLAIMABLE = (S.SCHEDULED, S.AVAILABLE, S.RETRYABLE)
#: States in which a job still waits for, or is doing, work.
LIVE = (*CLAIMABLE, S.RUNNING)
#: States a job never leaves except by an explicit retry.
FINAL = (S.COMPLETED, S.DEAD, S.CANCELLED)

#: Allowed transitions. Every state change is a guarded UPDATE whose WHERE clause
#: lists the `from` states; zero rows updated means a lost race or an illegal move.
TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    S.SCHEDULED: frozenset({S.AVAILABLE, S.RUNNING, S.CANCELLED}),
    S.AVAILABLE: frozenset({S.RUNNING, S.CANCELLED}),
    S.RUNNING: frozenset({S.COMPLETED, S.RETRYABLE, S.DEAD, S.AVAILABLE, S.CANCELLED}),
    S.RETRYABLE: frozenset({S.AVAILABLE, S.RUNNING, S.CANCELLED}),
    S.COMPLETED: frozenset(),
    S.DEAD: frozenset({S.AVAILABLE, S.CANCELLED}),
    S.CANCELLED: frozenset({S.AVAILABLE}),
}


def sources(target: JobState) -> tuple[JobState, ...]:
    """The states from which `target` may be reached."""
    return tuple(s for s, targets in TRANSITIONS.items() if target in targets)
