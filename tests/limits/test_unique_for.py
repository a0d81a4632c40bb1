"""Uniqueness for a period: `unique_for` also covers jobs of the key completed within the window."""

from __future__ import annotations

import multiprocessing
from datetime import timedelta

import pytest
from sqlalchemy import func, select, update

from ledgerflow import App, JobSpec, JobState
from ledgerflow.db.tables import jobs
from ledgerflow.errors import BadInput


def _enqueue_at_once(url: str, barrier, out, rounds: int, spec_kwargs) -> None:
    """Enqueue the spec `rounds` times; with several rounds, complete each job it gets at once."""
    app = App(database_url=url, log_level="WARNING")
    try:
        barrier.wait(60)
        for _ in range(rounds):
            job = app.enqueue(JobSpec(**spec_kwargs))
            if rounds > 1:
                _complete(app, job.id)
            out.put(job.id)
    finally:
        app.close()


def _race(db_url: str, processes: int, rounds: int = 1, **spec_kwargs) -> list[int]:
    """`processes` processes enqueue the same spec at the same moment; the ids they got.

    The processes are forked by multiprocessing's fork server, a clean process (no threads)
    that has imported this module once: real processes without an interpreter start each."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([__name__])
    barrier, out = ctx.Barrier(processes), ctx.Queue()
    procs = [
        ctx.Process(target=_enqueue_at_once, args=(db_url, barrier, out, rounds, spec_kwargs))
        for _ in range(processes)
    ]
    for p in procs:
        p.start()
    ids = [out.get(timeout=120) for _ in range(processes * rounds)]
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    return ids


def _count(app: App, key: str) -> int:
    with app.db.read() as conn:
        return int(conn.execute(select(func.count()).where(jobs.c.unique_key == key)).scalar_one())


def _complete(app: App, job_id: int) -> None:
    with app.db.begin() as conn:
        conn.execute(update(jobs).where(jobs.c.id == job_id).values(state=JobState.COMPLETED))


def _age(app: App, job_id: int, seconds: float) -> None:
    """Move the job's creation back in time (instead of waiting for the window to pass)."""
    with app.db.begin() as conn:
        created = conn.execute(select(jobs.c.created_at).where(jobs.c.id == job_id)).scalar_one()
        conn.execute(
            update(jobs).where(jobs.c.id == job_id).values(created_at=created - timedelta(seconds=seconds))
        )


def test_processes_racing_on_one_key_get_one_job_and_the_window_covers_it_once_completed(db_url, make_app):
    app = make_app()
    spec = {"task": "report.daily", "unique_key": "report:2026-11-30", "unique_for": 3600.0}
    ids = _race(db_url, 6, **spec)
    assert len(set(ids)) == 1 and _count(app, "report:2026-11-30") == 1
    _complete(app, ids[0])
    again = _race(db_url, 6, **spec)
    assert set(again) == set(ids), "an enqueue within the window made a second job"
    assert _count(app, "report:2026-11-30") == 1
    _age(app, ids[0], 3601)
    after = _race(db_url, 6, **spec)
    assert len(set(after)) == 1 and set(after) != set(ids), "after the window, one new job"
    assert _count(app, "report:2026-11-30") == 2


def test_enqueues_racing_with_the_completion_of_the_key_still_make_one_job(db_url, make_app):
    """Each process completes what it enqueued at once: without serialising the window check, an
    enqueue that found nothing would insert a second job after the first had completed."""
    app = make_app()
    ids = _race(db_url, 6, rounds=40, task="t", unique_key="hot", unique_for=3600.0)
    assert len(set(ids)) == 1 and _count(app, "hot") == 1


def test_without_unique_for_a_completed_key_is_enqueued_again(db_url, make_app):
    app = make_app()
    first = app.enqueue(JobSpec(task="t", unique_key="k"))
    _complete(app, first.id)
    assert app.enqueue(JobSpec(task="t", unique_key="k")).id != first.id


@pytest.mark.parametrize("state", [JobState.DEAD, JobState.CANCELLED])
def test_dead_or_cancelled_jobs_do_not_hold_the_window(db_url, make_app, state):
    app = make_app()
    first = app.enqueue(JobSpec(task="t", unique_key="k", unique_for=timedelta(hours=1)))
    with app.db.begin() as conn:
        conn.execute(update(jobs).where(jobs.c.id == first.id).values(state=state))
    assert app.enqueue(JobSpec(task="t", unique_key="k", unique_for=3600)).id != first.id


def test_task_option_and_bad_windows(db_url, make_app):
    app = make_app()

    @app.task(name="sync.bank")
    def sync() -> None: ...

    job = sync.configure(unique_key="bank", unique_for=timedelta(minutes=10)).enqueue()
    _complete(app, job.id)
    assert sync.configure(unique_key="bank", unique_for=600).enqueue().id == job.id
    for bad, message in [
        ({"unique_for": 60}, "unique_for needs a unique_key"),
        ({"unique_key": "k", "unique_for": 0}, "unique_for must be"),
        ({"unique_key": "k", "unique_for": -5}, "unique_for must be"),
        ({"unique_key": "k", "unique_for": "60"}, "unique_for must be"),
    ]:
        with pytest.raises(BadInput, match=message):
            JobSpec(task="t", **bad)
