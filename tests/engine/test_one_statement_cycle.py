"""The worker's cycle that completes finished jobs and claims the next ones (one transaction), and
on PostgreSQL the cycles that only claim or only complete (one statement in autocommit each). Same
guarantees either way: fenced outcomes refused, one execution row per attempt, a dependent of a
parent completed in the cycle claimed by it, claimed rows decoded as the stored job."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select, update

from ledgerflow.db.tables import job_executions, jobs
from ledgerflow.engine import leases
from ledgerflow.engine.jobs import JobSpec
from ledgerflow.engine.leases import Claim, LeaseSQL, Outcome
from tests.conftest import wait_until
from tests.faults import StatementFaults


def _worker(app: Any) -> Any:
    @app.task(name="anything")
    def anything() -> None: ...

    return app.worker(concurrency=4)


def _executions(app: Any, job_id: int) -> list[tuple[int, str]]:
    with app.db.begin() as conn:
        rows = conn.execute(
            select(job_executions.c.attempt, job_executions.c.status, job_executions.c.duration_seconds)
            .where(job_executions.c.job_id == job_id)
            .order_by(job_executions.c.attempt)
        )
        return [(r[0], r[1]) for r in rows]


def test_a_cycle_completes_and_claims_in_one_transaction_and_completes_alone_in_one_statement(
    make_app, backend
):
    app = make_app()
    worker = _worker(app)
    first = app.enqueue_many([JobSpec("anything") for _ in range(3)])
    claims, _, _ = worker._cycle([], {"*": 3})
    assert sorted(c.job.id for c in claims) == first
    nxt = app.enqueue_many([JobSpec("anything") for _ in range(2)])
    faults = StatementFaults().install(app.db.engine)
    try:
        done = [Outcome(c, "completed", 0.25) for c in claims]
        more, refused, unwritten = worker._cycle(done, {"*": 5})
        both = [(s.kind, s.autocommit) for s in faults.log]
        faults.log.clear()
        _, last_refused, last_unwritten = worker._cycle([Outcome(c, "completed", 0.5) for c in more], {})
        alone = [(s.kind, s.autocommit) for s in faults.log]
    finally:
        faults.uninstall()
    assert (refused, unwritten, last_refused, last_unwritten) == ([], [], [], [])
    assert sorted(c.job.id for c in more) == nxt
    assert ("commit", False) in both and len(both) > 2, both
    if backend == "postgresql":
        assert alone == [("execute", True)], alone
    else:
        assert ("commit", False) in alone, alone
    for job_id in first:
        assert app.get_job(job_id).state == "completed"
        assert _executions(app, job_id) == [(1, "completed")]
    with app.db.begin() as conn:
        durations = conn.execute(
            select(job_executions.c.duration_seconds).where(job_executions.c.job_id.in_(first))
        ).scalars()
        assert set(durations) == {0.25}
    for job_id in nxt:
        assert app.get_job(job_id).state == "completed"
        assert _executions(app, job_id) == [(1, "completed")]


def test_a_late_outcome_in_the_cycle_is_refused_and_its_claim_still_taken(make_app):
    """A runner frozen past its lease: its job was rescued and claimed again by another worker.
    Its completion, carried by a cycle that also claims, is refused; the claim is taken and the
    other worker's attempt (and its execution row) is untouched."""
    app = make_app()
    worker = _worker(app)
    (late_id,) = app.enqueue_many([JobSpec("anything", max_attempts=5)])
    with app.db.begin() as conn:
        (first,) = LeaseSQL(app.db, 0.0).claim(
            conn, worker_id=worker.id, queues=["default"], tasks=["anything"], limit=1
        )
    wait_until(lambda: app.db.run(lambda c: leases.rescue(app.db, c, [first.key])), 30, message="rescue")
    with app.db.begin() as conn:
        (second,) = LeaseSQL(app.db, 60).claim(
            conn, worker_id="other", queues=["default"], tasks=["anything"], limit=1
        )
    (fresh,) = app.enqueue_many([JobSpec("anything")])
    late = Outcome(first, "completed", 0.01)
    claims, refused, unwritten = worker._cycle([late], {"*": 2})
    assert refused == [late] and unwritten == []
    assert [c.job.id for c in claims] == [fresh]
    job = app.get_job(late_id)
    assert (job.state, job.attempt, job.worker_id) == ("running", 2, "other")
    rows = _executions(app, late_id)
    assert [attempt for attempt, _ in rows] == [1, 2], "one execution row per attempt"
    assert rows[-1] == (2, "running"), rows
    with app.db.begin() as conn:
        token = conn.execute(select(jobs.c.lease_token).where(jobs.c.id == late_id)).scalar()
    assert token == second.token


def test_a_dependent_of_a_parent_completed_by_the_cycle_is_claimed_by_that_cycle(make_app):
    app = make_app()
    worker = _worker(app)
    parent = app.enqueue(JobSpec("anything"))
    child = app.enqueue(JobSpec("anything", depends_on=(parent.id,)))
    claims, _, _ = worker._cycle([], {"*": 2})
    assert [c.job.id for c in claims] == [parent.id], "the child waits for its parent"
    claims, refused, _ = worker._cycle([Outcome(claims[0], "completed", 0.01)], {"*": 2})
    assert refused == []
    assert [c.job.id for c in claims] == [child.id]


def test_a_dependent_of_a_parent_whose_completion_is_refused_is_not_claimed(make_app):
    """The parent's lease was lost (rescued, now available again): the cycle's completion of it
    is refused, so its dependent must not be claimed by that cycle."""
    app = make_app()
    worker = _worker(app)
    parent = app.enqueue(JobSpec("anything", max_attempts=5))
    child = app.enqueue(JobSpec("anything", depends_on=(parent.id,)))
    claims, _, _ = worker._cycle([], {"*": 1})
    with app.db.begin() as conn:  # rescued: available again, the token gone
        conn.execute(update(jobs).where(jobs.c.id == parent.id).values(state="available", lease_token=None))
    late = Outcome(claims[0], "completed", 0.01)
    claims, refused, _ = worker._cycle([late], {"*": 1})
    assert refused == [late]
    assert child.id not in [c.job.id for c in claims]
    assert app.get_job(child.id).state == "scheduled", "still waiting for its parent"


def test_claimed_rows_decode_as_the_stored_job(make_app):
    app = make_app()
    worker = _worker(app)
    parent = app.enqueue(JobSpec("anything", args=(1, "two"), kwargs={"k": [3.5, None]}, priority=3))
    spec = JobSpec("anything", kwargs={"nested": {"a": "é"}}, depends_on=(parent.id,), max_attempts=7)
    child = app.enqueue(spec)
    with app.db.begin() as conn:  # an earlier failed attempt kept on the job
        conn.execute(
            update(jobs)
            .where(jobs.c.id == child.id)
            .values(
                errors=[{"attempt": 1, "type": "E", "message": "m", "traceback": None, "at": "2026-01-01"}],
                trace_context={"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
                has_dependencies=False,
            )
        )
    claims: list[Claim] = worker._cycle([], {"*": 2})[0]
    assert len(claims) == 2
    for claim in claims:
        assert claim.job == app.get_job(claim.job.id)
    with app.db.begin() as conn:
        again = worker._sql.reclaim(conn, worker_id=worker.id, token=claims[0].token)
    assert [c.job for c in again] == [c.job for c in claims]


def test_a_stale_and_the_current_completion_of_one_job_in_one_batch_are_told_apart(make_app):
    """A worker frozen past its lease claimed the same job again: its batch holds the stale
    attempt's completion and the current one's. The current one is written, the stale one is
    reported refused (by its token, not only its job id), through the one-statement cycle and
    through the transaction's completion."""
    app = make_app()
    worker = _worker(app)
    (job_id,) = app.enqueue_many([JobSpec("anything", max_attempts=5)])
    with app.db.begin() as conn:
        (stale,) = LeaseSQL(app.db, 0.0).claim(
            conn, worker_id=worker.id, queues=["default"], tasks=["anything"], limit=1
        )
    wait_until(lambda: app.db.run(lambda c: leases.rescue(app.db, c, [stale.key])), 30, message="rescue")
    (current,) = worker._cycle([], {"*": 1})[0]
    assert current.job.id == job_id and current.token != stale.token
    old, new = Outcome(stale, "completed", 0.01), Outcome(current, "completed", 0.02)
    claims, refused, unwritten = worker._cycle([old, new], {"*": 1})
    assert (claims, refused, unwritten) == ([], [old], [])
    job = app.get_job(job_id)
    assert (job.state, job.attempt) == ("completed", 2)
    assert _executions(app, job_id)[-1] == (2, "completed")
    # the same through apply_outcomes (the transaction's completion), the older attempt last
    (second_id,) = app.enqueue_many([JobSpec("anything", max_attempts=5)])
    with app.db.begin() as conn:
        (stale,) = LeaseSQL(app.db, 0.0).claim(
            conn, worker_id=worker.id, queues=["default"], tasks=["anything"], limit=1
        )
    wait_until(lambda: app.db.run(lambda c: leases.rescue(app.db, c, [stale.key])), 30, message="rescue")
    (current,) = worker._cycle([], {"*": 1})[0]
    new, old = Outcome(current, "completed", 0.02), Outcome(stale, "completed", 0.01)
    with app.db.begin() as conn:
        assert worker._sql.apply_outcomes(conn, [new, old]) == [old]
    assert app.get_job(second_id).state == "completed"
