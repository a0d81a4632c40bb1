"""A worker whose lease was lost writes no outcome and renews nothing, whatever the outcome's kind.

The completion and the renewal find a held job by primary key (`ids`) beside its (id, token) pair;
these tests hold them to the fence: a job rescued and claimed again by another worker, then the
first worker's late outcome, and a job in a state no outcome may leave with its token unchanged.
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select, update

from ledgerflow.db.tables import jobs
from ledgerflow.engine import leases
from ledgerflow.engine.jobs import JobSpec
from ledgerflow.engine.leases import Claim, LeaseSQL, Outcome
from tests.conftest import wait_until

#: Every kind of outcome a worker writes: (kind, extra fields).
KINDS: list[tuple[str, dict[str, Any]]] = [
    ("completed", {}),  # plain: the batched completion by primary key
    ("completed", {"result": {"total": 42}}),
    ("completed", {"metadata": {"m": 1}}),
    ("failed", {"error": {"type": "E", "message": "m"}, "retry_in": 1.0}),
    ("failed", {"error": {"type": "E", "message": "m"}, "retry_in": None}),  # dead
    ("snoozed", {"retry_in": 1.0}),
    ("returned", {}),
    ("released", {}),
    ("left_running", {}),
]
IDS = ["plain", "result", "metadata", "retry", "dead", "snoozed", "returned", "released", "left_running"]


def _row(app, job_id: int) -> dict[str, Any]:
    with app.db.begin() as conn:
        return dict(conn.execute(select(jobs).where(jobs.c.id == job_id)).mappings().one())


def _claim(app, sql: LeaseSQL, worker: str) -> Claim:
    with app.db.begin() as conn:
        (claim,) = sql.claim(conn, worker_id=worker, queues=["default"], tasks=["anything"], limit=1)
    return claim


@pytest.mark.parametrize(("kind", "extra"), KINDS, ids=IDS)
def test_a_late_outcome_after_a_rescue_and_a_new_claim_is_refused(make_app, kind, extra):
    app = make_app()
    job = app.enqueue(JobSpec("anything", max_attempts=5))
    first = _claim(app, LeaseSQL(app.db, 0.0), "w1")  # a lease over as soon as it is taken
    wait_until(lambda: app.db.run(lambda c: leases.rescue(app.db, c, [first.key])), 30, message="rescue")
    sql = LeaseSQL(app.db, 60)
    second = _claim(app, sql, "w2")
    assert second.token != first.token
    before = _row(app, job.id)
    late = Outcome(first, kind, 0.01, **extra)  # type: ignore[arg-type]
    with app.db.begin() as conn:
        assert sql.apply_outcomes(conn, [late]) == [late], "refused: the lease is gone"
        assert sql.heartbeat(conn, worker_id="w1", held=[first.key]) == set(), "nothing renewed"
    assert _row(app, job.id) == before, "the second worker's attempt is untouched"
    # the holder's own outcome of the same kind is still written
    mine = Outcome(second, kind, 0.01, **extra)  # type: ignore[arg-type]
    with app.db.begin() as conn:
        assert sql.apply_outcomes(conn, [mine]) == []


@pytest.mark.parametrize(("kind", "extra"), KINDS, ids=IDS)
@pytest.mark.parametrize("state", ["completed", "cancelled", "dead", "available", "retryable"])
def test_an_outcome_for_a_job_no_longer_running_is_refused_even_with_its_token(make_app, kind, extra, state):
    app = make_app()
    job = app.enqueue(JobSpec("anything", max_attempts=5))
    sql = LeaseSQL(app.db, 60)
    claim = _claim(app, sql, "w1")
    with app.db.begin() as conn:  # the token is kept: only the state guard stands between
        conn.execute(update(jobs).where(jobs.c.id == job.id).values(state=state))
    before = _row(app, job.id)
    outcome = Outcome(claim, kind, 0.01, **extra)  # type: ignore[arg-type]
    with app.db.begin() as conn:
        assert sql.apply_outcomes(conn, [outcome]) == [outcome]
        assert sql.heartbeat(conn, worker_id="w1", held=[claim.key]) == set()
    assert _row(app, job.id) == before


def test_a_claim_given_back_unstarted_then_really_dead_is_still_alerted(make_app, capsys):
    """Giving a prefetched claim back is not a death (not alerted); the same job failing its only
    attempt afterwards is one: logged `job_dead` and alerted once."""
    app = make_app(log_level="INFO")

    @app.task(name="doomed", max_attempts=1)
    def doomed() -> None:
        raise RuntimeError("destination down")

    (job_id,) = app.enqueue_many([doomed.prepare()])
    worker = app.worker(concurrency=1)
    claims, _, _ = worker._cycle([], {"*": 1})
    worker._buffer.extend(claims)
    worker._return_buffer()
    worker._cycle(worker._outcomes, {})
    assert (app.get_job(job_id).state, app.get_job(job_id).attempt) == ("available", 0), "given back"
    assert not app.alerts.is_open("job_dead:doomed")
    assert "job_dead" not in capsys.readouterr().out
    app.run_worker(concurrency=1, burst=True)
    assert app.get_job(job_id).state == "dead"
    assert app.alerts.is_open("job_dead:doomed"), "the real death is alerted"
    logged = capsys.readouterr()
    assert "job_dead" in logged.out + logged.err
