"""The one job state machine: states, and every move between them with its allowed sources.

`MOVES` is the single source of truth. Every guarded UPDATE of `jobs.state` (engine/leases.py,
engine/store.py) takes its `WHERE state IN (...)` from the move it makes, and zero rows
updated means a lost race or an illegal move. Internal moves are the engine's own (claim,
complete, release, rescue...); user moves are what a person may ask for (retry, cancel,
delete). The internal running → available edge (release, rescue) is not a user retry.
"""

from __future__ import annotations

from dataclasses import dataclass
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
#: States in which a worker holds the job's lease (renewed, expired, fenced).
LEASED = (S.RUNNING,)


@dataclass(frozen=True)
class Move:
    """One kind of state change: the states it may start from and the state it leads to."""

    name: str
    sources: tuple[JobState, ...]
    target: JobState | None  # None: the job is deleted
    user: bool  # asked for by a person (API, CLI, dashboard), not made by the engine


def _move(name: str, sources: tuple[JobState, ...], target: JobState | None, user: bool = False) -> Move:
    return Move(name, sources, target, user)


# internal moves, made by workers and the maintenance loop
STAGE = _move("stage", (S.SCHEDULED, S.RETRYABLE), S.AVAILABLE)  # due, dependencies met
CLAIM = _move("claim", CLAIMABLE, S.RUNNING)
COMPLETE = _move("complete", (S.RUNNING,), S.COMPLETED)
FAIL = _move("fail", (S.RUNNING,), S.RETRYABLE)  # attempts left: retried after a backoff
BURY = _move("bury", (S.RUNNING,), S.DEAD)  # last attempt failed
SNOOZE = _move("snooze", (S.RUNNING,), S.SCHEDULED)  # the task asked to run later
RELEASE = _move("release", (S.RUNNING,), S.AVAILABLE)  # shutdown: the attempt is given back
RETURN = _move("return", (S.RUNNING,), S.AVAILABLE)  # prefetched, never started
RESCUE = _move("rescue", (S.RUNNING,), S.AVAILABLE)  # its worker stopped renewing the lease
RESCUE_DEAD = _move("rescue_dead", (S.RUNNING,), S.DEAD)  # ... and it had no attempt left
CANCEL_DEPENDENT = _move("cancel_dependent", CLAIMABLE, S.CANCELLED)  # a dependency died
PRUNE = _move("prune", (S.COMPLETED, S.CANCELLED), None)  # history past its retention

# user moves
RETRY = _move("retry", (S.DEAD, S.CANCELLED, S.RETRYABLE, S.SCHEDULED), S.AVAILABLE, user=True)
CANCEL = _move("cancel", LIVE, S.CANCELLED, user=True)  # a running job's worker is fenced off
PURGE = _move("purge", (S.DEAD,), None, user=True)  # delete from the dead-letter queue

MOVES: dict[str, Move] = {
    m.name: m
    for m in (
        STAGE,
        CLAIM,
        COMPLETE,
        FAIL,
        BURY,
        SNOOZE,
        RELEASE,
        RETURN,
        RESCUE,
        RESCUE_DEAD,
        CANCEL_DEPENDENT,
        PRUNE,
        RETRY,
        CANCEL,
        PURGE,
    )
}

#: The transitions the moves allow (derived: MOVES is the table).
TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    state: frozenset(m.target for m in MOVES.values() if state in m.sources and m.target is not None)
    for state in JobState
}


def describe(states: tuple[JobState, ...]) -> str:
    """'dead, cancelled, retryable or scheduled'."""
    names = [str(s) for s in states]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"
