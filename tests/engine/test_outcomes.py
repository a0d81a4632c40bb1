"""Outcomes the database cannot store never wedge a worker (real worker processes, both backends)."""

from __future__ import annotations

import json
import signal

from sqlalchemy import create_engine, text

from ledgerflow import JobState
from ledgerflow.db.database import Database
from ledgerflow.engine.states import FINAL
from tests.apps import outcomes
from tests.conftest import run_rows, wait_until

BAD = ("nan", "inf", "nul", "surrogate", "object")


def _final(app, ids):
    return all(app.get_job(i).state in FINAL for i in ids)


def _said(job) -> str:
    """Everything the job's record says about its outcome (result and error messages), as text."""
    return json.dumps({"result": job.result, "errors": [e.message for e in job.errors]}, ensure_ascii=False)


def _check_bad_jobs(app, bad: dict[str, int], raised: int) -> None:
    jobs = {kind: app.get_job(job_id) for kind, job_id in bad.items()}
    for kind in ("nan", "inf"):
        assert jobs[kind].state in FINAL and "is not a JSON number" in _said(jobs[kind]), kind
    for kind in ("nul", "surrogate"):  # kept readable (U+FFFD) or refused with the reason
        assert jobs[kind].state in FINAL and "before" in _said(jobs[kind]), kind
    assert jobs["object"].state in FINAL  # not stored (the results policy says how it is shown)
    for job in jobs.values():
        said = _said(job)
        assert "\x00" not in said and "\udc80" not in said
    failed = app.get_job(raised)
    assert failed.state == JobState.DEAD and failed.errors[-1].type == "RuntimeError"
    assert failed.errors[-1].message == "bad \ufffd message \ufffd from the task"


def test_unstorable_outcomes_end_their_job_and_never_block_the_worker_or_a_restart(db_url, make_app, workers):
    app = make_app()
    bad = {kind: app.enqueue(outcomes.returns.prepare(kind)).id for kind in BAD}
    raised = app.enqueue(outcomes.raises_nul.prepare()).id
    good = app.enqueue_many([outcomes.returns.prepare("fine") for _ in range(10)])
    first = workers(app="tests.apps.outcomes:app", concurrency=4, name="first")
    wait_until(lambda: _final(app, [*bad.values(), raised, *good]), 60, 0.2, "every job ends")
    _check_bad_jobs(app, bad, raised)
    assert {app.get_job(i).state for i in good} == {JobState.COMPLETED}
    assert [app.get_job(i).result for i in good] == [{"ok": True}] * 10

    # the worker keeps claiming; then one job that fails to store is running when it is killed
    later = app.enqueue_many([outcomes.returns.prepare("fine") for _ in range(5)])
    wait_until(lambda: _final(app, later), 60, 0.2, "the worker keeps claiming")
    held = app.enqueue(outcomes.returns.configure(max_attempts=2).prepare("nan", sleep=3)).id
    wait_until(lambda: any(r["job_id"] == held for r in run_rows(db_url)), 60, 0.2, "the slow job starts")
    first.signal(signal.SIGKILL)
    first.wait(10)

    bad2 = {kind: app.enqueue(outcomes.returns.prepare(kind)).id for kind in BAD}
    raised2 = app.enqueue(outcomes.raises_nul.prepare()).id
    good2 = app.enqueue_many([outcomes.returns.prepare("fine") for _ in range(10)])
    workers(app="tests.apps.outcomes:app", concurrency=4, name="second")
    wait_until(lambda: _final(app, [*bad2.values(), raised2, *good2, held]), 90, 0.2, "every job ends")
    _check_bad_jobs(app, bad2, raised2)
    assert {app.get_job(i).state for i in good2} == {JobState.COMPLETED}
    rescued = app.get_job(held)  # rescued from the killed worker, then run to a clear end
    assert rescued.attempt == 2 and rescued.state in FINAL and "is not a JSON number" in _said(rescued)


_TRIGGERS = {
    "sqlite": [
        """CREATE TRIGGER refuse_poison BEFORE UPDATE OF state ON jobs
           WHEN NEW.state = 'completed' AND NEW.result LIKE '%poison%'
           BEGIN SELECT RAISE(ABORT, 'value refused by a check of the test'); END""",
    ],
    "postgresql": [
        """CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN
             IF NEW.state = 'completed' AND NEW.result::text LIKE '%poison%' THEN
               RAISE EXCEPTION 'value refused by a check of the test' USING ERRCODE = '22000';
             END IF;
             RETURN NEW;
           END $$""",
        """CREATE TRIGGER refuse_poison BEFORE UPDATE ON jobs
           FOR EACH ROW EXECUTE FUNCTION refuse_poison()""",
    ],
}


def test_an_outcome_the_database_refuses_fails_alone_and_the_batch_is_written(
    db_url, backend, make_app, workers
):
    engine = create_engine(Database(db_url).url)
    with engine.begin() as conn:
        for statement in _TRIGGERS[backend]:
            conn.execute(text(statement))
    engine.dispose()
    app = make_app()
    poison = app.enqueue(outcomes.returns.prepare("poison")).id
    good = app.enqueue_many([outcomes.returns.prepare("fine") for _ in range(20)])
    worker = workers(app="tests.apps.outcomes:app", concurrency=4, name="poisoned")
    wait_until(lambda: _final(app, [poison, *good]), 60, 0.2, "every job ends")
    assert {app.get_job(i).state for i in good} == {JobState.COMPLETED}
    refused = app.get_job(poison)
    assert refused.state == JobState.DEAD and refused.result is None
    error = refused.errors[-1]
    assert error.type == "unstorable_outcome"
    assert error.message.startswith("the database could not store the outcome of this attempt (completed): ")
    assert "value refused by a check of the test" in error.message
    execution = app.store.executions(poison)[-1]
    assert (execution["status"], execution["error_type"]) == ("failed", "unstorable_outcome")
    assert "outcome_batch_refused" in worker.log()
    more = app.enqueue_many([outcomes.returns.prepare("fine") for _ in range(5)])
    wait_until(lambda: _final(app, more), 60, 0.2, "the worker keeps claiming")


_STUBBORN = {  # refuse every outcome of an attempt that was not rescued (the rescue's error says so)
    "sqlite": [
        """CREATE TRIGGER refuse_stubborn BEFORE UPDATE OF state ON jobs
           WHEN OLD.state = 'running' AND NEW.state != 'running' AND NEW.args LIKE '%stubborn%'
                AND NEW.errors NOT LIKE '%lease_expired%'
           BEGIN SELECT RAISE(ABORT, 'outcome refused by a check of the test'); END""",
    ],
    "postgresql": [
        """CREATE FUNCTION refuse_stubborn() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN
             IF OLD.state = 'running' AND NEW.state != 'running' AND NEW.args::text LIKE '%stubborn%'
                AND NEW.errors::text NOT LIKE '%lease_expired%' THEN
               RAISE EXCEPTION 'outcome refused by a check of the test' USING ERRCODE = '22000';
             END IF;
             RETURN NEW;
           END $$""",
        """CREATE TRIGGER refuse_stubborn BEFORE UPDATE ON jobs
           FOR EACH ROW EXECUTE FUNCTION refuse_stubborn()""",
    ],
}


def test_a_job_whose_every_outcome_is_refused_is_not_held_for_ever(db_url, backend, make_app, workers):
    """Even the failure record refused: the worker drops the outcome, stops renewing the lease,
    and the rescue takes the job back; its second attempt is stored."""
    engine = create_engine(Database(db_url).url)
    with engine.begin() as conn:
        for statement in _STUBBORN[backend]:
            conn.execute(text(statement))
    engine.dispose()
    app = make_app()
    stubborn = app.enqueue(outcomes.returns.configure(max_attempts=2).prepare("stubborn")).id
    good = app.enqueue_many([outcomes.returns.prepare("fine") for _ in range(10)])
    worker = workers(app="tests.apps.outcomes:app", concurrency=4, name="stubborn")
    wait_until(lambda: _final(app, [stubborn, *good]), 90, 0.2, "every job ends")
    assert {app.get_job(i).state for i in good} == {JobState.COMPLETED}
    job = app.get_job(stubborn)
    assert (job.state, job.attempt, job.result) == (JobState.COMPLETED, 2, "stubborn")
    assert [e.type for e in job.errors] == ["lease_expired"]
    assert "outcome_not_written" in worker.log()
