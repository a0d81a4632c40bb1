"""Deleting a dead or cancelled job never lets a retried dependent run without it: every
delete (one job, bulk by filter, dead-letter purge, retention prune) leaves a finished job an
unfinished job still waits on, and a dry run counts what is then done."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from ledgerflow import JobFilter, JobSpec, JobState, NotAllowed
from ledgerflow.cleanup import Retention, prune

S = JobState


def test_a_job_a_retried_dependent_waits_on_is_never_deleted(make_app):
    app = make_app()

    @app.task(name="parent", max_attempts=1)
    def parent(fail: bool = True) -> None:
        if fail:
            raise RuntimeError("bank down")

    @app.task(name="child")
    def child() -> None:
        pass

    dead = parent.enqueue()
    waiting = app.enqueue(JobSpec(task="child", depends_on=(dead.id,)))
    other = parent.enqueue()  # dead, nobody waits on it
    later = app.enqueue(JobSpec(task="parent", kwargs={"fail": False}, delay=3600))
    waiting_later = app.enqueue(JobSpec(task="child", depends_on=(later.id,)))
    app.store.cancel(later.id)  # cancels its dependent too
    assert app.store.retry(waiting_later.id).state == S.AVAILABLE
    app.run_worker(burst=True)
    assert app.get_job(waiting.id).state == S.CANCELLED  # its dependency died
    assert app.store.retry(waiting.id)  # the operator retries the dependent alone
    app.run_worker(burst=True)
    assert app.get_job(waiting.id).state == S.AVAILABLE  # waits for its dependency

    with pytest.raises(NotAllowed, match=rf"unfinished jobs wait on it \({waiting.id}\)"):
        app.store.delete(dead.id)
    dry = app.store.bulk("delete", JobFilter(states=(S.DEAD,)), dry_run=True)
    done = app.store.bulk("delete", JobFilter(states=(S.DEAD,)))
    assert (dry.matched, dry.count) == (done.matched, done.count) == (2, 1)
    assert app.store.purge_dead() == 0
    prune(
        app,
        Retention(**{k: timedelta(0) for k in Retention.__dataclass_fields__}),
        now=datetime.now(UTC) + timedelta(days=1),
    )
    assert app.get_job(dead.id).state == S.DEAD
    assert app.get_job(later.id).state == S.CANCELLED  # prune kept it: a dependent waits on it
    assert {j.id for j in app.find_jobs(JobFilter(states=(S.DEAD,)))} == {dead.id} != {other.id}

    app.run_worker(burst=True)
    assert app.get_job(waiting.id).state == S.AVAILABLE, "the dependent ran without its dependency"
    assert app.get_job(waiting_later.id).state == S.AVAILABLE
    app.store.retry(dead.id)
    app.run_worker(burst=True)  # the dependency dies again: its dependent is cancelled again
    assert app.get_job(waiting.id).state == S.CANCELLED
    app.store.delete(dead.id)  # nobody waits on it any more
    app.store.delete(waiting.id)
