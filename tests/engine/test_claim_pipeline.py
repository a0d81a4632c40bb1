"""The worker's pipeline of short jobs: a cycle that writes outcomes also claims once a slot's
worth of its capacity is free, so a claim never waits behind a write-only cycle while the
prefetched jobs run out (two PostgreSQL worker processes idled that way: docs/benchmarks.md,
"Two PostgreSQL worker processes")."""

from __future__ import annotations

from typing import Any

from ledgerflow.engine.jobs import JobSpec
from ledgerflow.engine.leases import Outcome


def test_no_write_only_cycle_while_a_slot_is_free_and_jobs_wait(make_app):
    app = make_app()

    @app.task(name="noop")
    def noop() -> None: ...

    app.enqueue_many([JobSpec("noop") for _ in range(3000)])
    worker = app.worker(concurrency=4, burst=True, prefetch=128)  # a capacity that stays put
    cycles: list[tuple[int, int]] = []  # (outcomes written, jobs asked for) per cycle, backlog left
    backlog_left = [True]
    cycle = worker._cycle

    def recorded(outcomes: list[Outcome], slots: dict[str, int]) -> Any:
        asked = sum(slots.values())
        result = cycle(outcomes, slots)
        if backlog_left[0]:
            cycles.append((len(outcomes), asked))
            backlog_left[0] = not asked or len(result[0]) >= asked  # a short claim: the backlog ran out
        return result

    worker._cycle = recorded
    worker.run()

    counts = app.store.counts()
    assert counts[("default", "noop", "completed")] == 3000
    write_only = [n for n, asked in cycles if n >= worker.opts.concurrency and not asked]
    assert len(cycles) > 10, cycles
    assert write_only == [], cycles
