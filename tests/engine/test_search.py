"""Search by text, error text and time, and bulk cancel/retry/delete by filter, on both backends."""

from __future__ import annotations

import random
import time
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select, update

from ledgerflow import BadInput, Conflict, JobFilter, JobSpec, JobState
from ledgerflow.db.tables import jobs
from ledgerflow.engine.search import ACTION_SOURCES, count_matching
from tests.conftest import count_runs, wait_until

S = JobState
FINAL_OF_RACE = (S.COMPLETED, S.CANCELLED)


def _ids(found) -> set[int]:
    return {j.id for j in found}


def test_search_by_args_kwargs_error_text_and_time_range(make_app):
    app = make_app()

    @app.task(name="invoice", max_attempts=1)
    def invoice(customer: str, amount: int = 0, fail: str | None = None) -> None:
        if fail:
            raise RuntimeError(fail)

    acme = invoice.enqueue("ACME Trading", amount=100)
    globex = invoice.enqueue("Globex", amount=250, fail="bank API said: Account FROZEN")
    kanji = invoice.enqueue("株式会社さくら商事", fail="timeout talking to the bank")
    app.run_worker(burst=True)

    assert _ids(app.find_jobs(JobFilter(text="acme"))) == {acme.id}  # any case
    assert _ids(app.find_jobs(JobFilter(text="さくら商"))) == {kanji.id}
    assert _ids(app.find_jobs(JobFilter(text="amount"))) == {acme.id, globex.id}  # kwargs keys too
    assert _ids(app.find_jobs(JobFilter(error="account frozen"))) == {globex.id}
    assert _ids(app.find_jobs(JobFilter(error="bank"))) == {globex.id, kanji.id}
    assert _ids(app.find_jobs(JobFilter(error="RuntimeError", states=(S.DEAD,)))) == {globex.id, kanji.id}
    assert _ids(app.find_jobs(JobFilter(text="ACME", error="bank"))) == set()
    assert app.find_jobs(JobFilter(text="100%_")) == []  # LIKE wildcards are plain text

    created = {j.id: j.created_at for j in app.find_jobs()}
    middle = created[globex.id]
    assert _ids(app.find_jobs(JobFilter(enqueued_after=middle))) == {globex.id, kanji.id}
    assert _ids(app.find_jobs(JobFilter(enqueued_before=middle))) == {acme.id}
    finished = app.get_job(acme.id).finished_at
    assert acme.id in _ids(app.find_jobs(JobFilter(finished_after=finished)))
    assert _ids(app.find_jobs(JobFilter(finished_before=finished))) == set()
    future = datetime.now(UTC) + timedelta(days=1)
    assert app.find_jobs(JobFilter(finished_after=future)) == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"text": "ab"}, "text to search for must be 3..200 characters"),
        ({"error": "x" * 201}, "error to search for must be 3..200 characters"),
        ({"states": ("sleeping",)}, "unknown state 'sleeping'"),
        ({"queue": "bad queue"}, "queue"),
        ({"enqueued_after": datetime(2026, 1, 1)}, "needs a UTC offset"),
        (
            {
                "finished_after": datetime(2026, 1, 2, tzinfo=UTC),
                "finished_before": datetime(2026, 1, 1, tzinfo=UTC),
            },
            "is not before finished_before",
        ),
    ],
)
def test_a_bad_filter_is_refused_with_one_clear_error(kwargs, message):
    with pytest.raises(BadInput, match=message):
        JobFilter(**kwargs)


WORDS = ["alpha", "Beta", "GAMMA", "デルタ", "eps ilon", "zeta-9", "ACME", "acme corp", "100%", "a_b"]


def test_generated_searches_agree_with_a_plain_substring_model(make_app):
    """Every substring of the stored values (and some strangers) finds exactly the jobs whose
    args or kwargs hold it, ignoring case: the trigram index never misses nor invents a match."""
    app = make_app()
    rng = random.Random(15)
    values: list[list[str]] = []
    specs = []
    for _ in range(120):
        picked = rng.sample(WORDS, rng.randint(0, 3))
        note = " ".join(picked[1:])
        specs.append(JobSpec(task="t", args=tuple(picked[:1]), kwargs={"note": note}))
        values.append([*picked[:1], note])
    ids = app.enqueue_many(specs)
    by_id = dict(zip(ids, values, strict=True))
    # the text stored is JSON: the values as written hold nothing JSON escapes
    terms = sorted({w[i : i + n] for w in WORDS for n in (3, 4, 6) for i in range(len(w) - n + 1)})
    # query syntax of either backend (FTS5 operators, LIKE wildcards) is plain text here
    strangers = ["zzz", "ACME CORP", "me b", "OR alpha", "ta*", "NEAR(a", "%_%", "a_%", "{note} : x", "^ac"]

    @settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.sampled_from(terms + strangers))
    def check(term: str) -> None:
        expected = {i for i, v in by_id.items() if any(term.casefold() in w.casefold() for w in v)}
        found = app.store.find(JobFilter(text=term, task="t"), limit=1000)
        assert _ids(found) == expected, term

    check()


def test_the_index_follows_inserts_updates_and_deletes(make_app):
    app = make_app()

    @app.task(name="flaky", max_attempts=2, retry_backoff=0.01)
    def flaky(tag: str) -> None:
        raise ValueError(f"broken {tag} widget")

    job = flaky.enqueue("kiwi")
    assert _ids(app.find_jobs(JobFilter(error="kiwi widget"))) == set()
    app.run_worker(burst=True)
    assert app.get_job(job.id).state == S.DEAD
    assert _ids(app.find_jobs(JobFilter(error="kiwi widget"))) == {job.id}
    app.store.retry(job.id)
    app.run_worker(burst=True)
    assert len(app.get_job(job.id).errors) == 3
    assert _ids(app.find_jobs(JobFilter(error="kiwi widget"))) == {job.id}
    app.store.delete(job.id)
    assert app.find_jobs(JobFilter(text="kiwi")) == []
    assert app.find_jobs(JobFilter(error="kiwi")) == []


# ------------------------------------------------------------------ bulk actions
def _one_job_per_state(app) -> dict[JobState, int]:
    """A job in each state (set directly: the legality of each bulk move is what is tested)."""
    ids = app.enqueue_many([JobSpec(task="t", queue="bulk", args=(str(s),)) for s in JobState])
    with app.db.begin() as conn:
        for job_id, state in zip(ids, JobState, strict=True):
            conn.execute(update(jobs).where(jobs.c.id == job_id).values(state=str(state)))
    return dict(zip(JobState, ids, strict=True))


@pytest.mark.parametrize("action", ["cancel", "retry", "delete"])
def test_each_bulk_action_moves_only_jobs_in_its_legal_source_states(make_app, action):
    app = make_app()
    by_state = _one_job_per_state(app)
    other_queue = app.enqueue(JobSpec(task="t", queue="elsewhere"))
    where = JobFilter(queue="bulk")

    dry = app.store.bulk(action, where, dry_run=True)
    assert (dry.matched, dry.count, dry.dry_run) == (7, len(ACTION_SOURCES[action]), True)
    assert {s: app.get_job(i).state for s, i in by_state.items()} == {s: s for s in by_state}

    done = app.store.bulk(action, where)
    assert done.count == len(ACTION_SOURCES[action])
    with app.db.read() as conn:
        after = dict(conn.execute(select(jobs.c.id, jobs.c.state)).all())
    for state, job_id in by_state.items():
        moved = state in ACTION_SOURCES[action]
        expected = {
            "cancel": S.CANCELLED if moved else state,
            "retry": S.AVAILABLE if moved else state,
            "delete": None if moved else state,
        }[action]
        assert after.get(job_id) == expected, (action, state)
    assert after[other_queue.id] == S.AVAILABLE
    assert S.RUNNING not in ACTION_SOURCES["retry"] and S.RUNNING not in ACTION_SOURCES["delete"]


def test_bulk_actions_need_a_filter_and_single_moves_refuse_illegal_ones(make_app):
    app = make_app()
    by_state = _one_job_per_state(app)
    with pytest.raises(BadInput, match="needs a filter"):
        app.cancel_jobs(JobFilter())
    with pytest.raises(Conflict, match="is running"):
        app.store.retry(by_state[S.RUNNING])
    with pytest.raises(Conflict, match="is running; only completed, dead or cancelled"):
        app.store.delete(by_state[S.RUNNING])
    with pytest.raises(Conflict, match="is completed and cannot be cancelled"):
        app.store.cancel(by_state[S.COMPLETED])


def test_bulk_cancel_also_cancels_dependents_and_keeps_the_reason(make_app):
    app = make_app()
    parent = app.enqueue(JobSpec(task="t", queue="a", args=("parent",)))
    child = app.enqueue(JobSpec(task="t", queue="b", depends_on=(parent.id,)))
    result = app.cancel_jobs(JobFilter(queue="a", text="parent"), reason="wrong batch")
    assert result.count == 1
    assert app.get_job(parent.id).state_reason == "wrong batch"
    assert app.get_job(child.id).state == S.CANCELLED


def test_bulk_age_filter_takes_only_older_jobs(make_app):
    app = make_app()
    old = app.enqueue(JobSpec(task="t", queue="q"))
    with app.db.begin() as conn:
        conn.execute(
            update(jobs).where(jobs.c.id == old.id).values(created_at=datetime.now(UTC) - timedelta(days=8))
        )
    new = app.enqueue(JobSpec(task="t", queue="q"))
    result = app.cancel_jobs(JobFilter(enqueued_before=datetime.now(UTC) - timedelta(days=7)))
    assert result.count == 1
    assert (app.get_job(old.id).state, app.get_job(new.id).state) == (S.CANCELLED, S.AVAILABLE)


def test_bulk_cancel_and_retry_race_real_workers_without_breaking_the_state_machine(
    make_app, workers, db_url
):
    """Three worker processes run a queue while it is cancelled in bulk, then its dead jobs
    are retried in bulk: every job ends in one final state, a cancelled job never completes
    afterwards, the counts returned are the jobs moved, and nothing runs twice at once."""
    app = make_app()
    ids = app.enqueue_many(
        [JobSpec(task="record", queue="race", kwargs={"sleep": 0.05, "label": f"r{i}"}) for i in range(240)]
    )
    procs = [workers(queues="race", concurrency=4, name=f"w{i}") for i in range(3)]
    done = select(func.count()).where(jobs.c.queue == "race", jobs.c.state == S.COMPLETED)
    wait_until(lambda: app.db.run(lambda c: c.execute(done).scalar_one()) >= 10, 120, message="10 done")
    cancelled = app.cancel_jobs(JobFilter(queue="race"), reason="race test")
    assert 0 < cancelled.count < len(ids)

    def settled() -> bool:
        with app.db.read() as conn:
            return not conn.execute(
                select(func.count()).where(
                    jobs.c.id.in_(ids), jobs.c.state.notin_([S.COMPLETED, S.CANCELLED])
                )
            ).scalar_one()

    wait_until(settled, 120, message="every job completed or cancelled")
    time.sleep(1.0)  # a fenced worker that finishes late must not overwrite the cancel
    states = {i: app.get_job(i).state for i in ids}
    assert sum(s == S.CANCELLED for s in states.values()) == cancelled.count
    assert all(s in (S.COMPLETED, S.CANCELLED) for s in states.values())
    runs = count_runs(db_url)
    assert all(runs.get(i, 0) == 1 for i, s in states.items() if s == S.COMPLETED)
    assert all(n == 1 for n in runs.values())  # no job started twice

    # fewer than the 25 failures in a row that would auto-stop the task
    dead = app.enqueue_many([JobSpec(task="fail_always", queue="race", max_attempts=1) for _ in range(10)])
    wait_until(lambda: all(app.get_job(i).state == S.DEAD for i in dead), 120, message="dead jobs")
    retried = app.retry_jobs(JobFilter(queue="race", task="fail_always"))
    assert retried.count == 10 and retried.matched == 10
    wait_until(
        lambda: all(app.get_job(i).state == S.DEAD and app.get_job(i).attempt == 2 for i in dead),
        120,
        message="retried jobs ran once more and died again",
    )
    deleted = app.delete_jobs(JobFilter(queue="race", states=(S.DEAD, S.CANCELLED)))
    assert deleted.count == 10 + cancelled.count
    for w in procs:
        w.stop()
    assert not app.find_jobs(JobFilter(queue="race", states=(S.DEAD, S.CANCELLED)))


def test_lists_page_through_every_match_and_counts_stop_at_the_cap(make_app, backend):
    app = make_app()
    ids = app.enqueue_many([JobSpec(task="t", args=(f"kiwi {i}",)) for i in range(12)])
    app.enqueue_many([JobSpec(task="t", args=("apple",)) for _ in range(5)])
    seen: list[int] = []
    before = None
    while page := app.store.find(JobFilter(text="kiwi"), limit=5, before_id=before):
        seen += [j.id for j in page]
        before = page[-1].id
    assert seen == sorted(ids, reverse=True)
    assert count_matching(app.db, JobFilter(text="kiwi"), cap=5) == 6  # "more than 5"
    assert count_matching(app.db, JobFilter(text="kiwi")) == 12
