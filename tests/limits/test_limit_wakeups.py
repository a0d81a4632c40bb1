"""Workers waiting on a global limit are woken when it frees, not left to poll (real processes)."""

from __future__ import annotations

import itertools
import statistics
import time
from datetime import UTC, datetime

import psutil
from sqlalchemy import select, update

from ledgerflow import JobState
from ledgerflow.db.tables import job_executions, jobs
from ledgerflow.db.tables import workers as workers_table
from ledgerflow.engine import leases
from ledgerflow.engine.leases import Claim, LeaseSQL, Outcome
from tests.apps import limited
from tests.conftest import wait_until
from tests.limits.test_global_limits import _finished, _prepare, _starts, runs


def slot_latencies(recorded: list[tuple[float, float, int]]) -> list[float]:
    """Seconds from the end of each run to the start of the next (one run at a time)."""
    ordered = sorted(recorded)
    return [later[0] - earlier[1] for earlier, later in itertools.pairwise(ordered)]


def test_a_freed_slot_is_taken_at_once_by_a_waiting_worker(db_url, make_app, workers):
    app = _prepare(make_app)
    app.limits.set("queue", "mail", concurrency=1)
    ids = app.enqueue_many([limited.send.prepare(sleep=0.05) for _ in range(21)])
    procs = [workers(app="tests.apps.limited:app", queues="mail", concurrency=2) for _ in range(2)]
    wait_until(lambda: _finished(app, ids), 240, message="all mail jobs completed")
    latencies = slot_latencies(runs(app, "mail.send"))
    assert len(latencies) == 20 and min(latencies) >= 0, "runs overlapped beyond the limit of 1"
    with app.db.read() as conn:  # the database's own record: attempt ended -> next attempt started
        rows = conn.execute(
            select(job_executions.c.started_at, job_executions.c.completed_at).order_by(
                job_executions.c.started_at
            )
        ).all()
    claimed = [(b.started_at - a.completed_at).total_seconds() for a, b in itertools.pairwise(rows)]
    assert len(claimed) == 20 and min(claimed) >= -1e-3, "an attempt started before the previous ended"
    backend, median = db_url.split(":")[0], statistics.median(claimed)
    print(
        f"{backend}: slot free -> next claim: median {median * 1000:.1f} ms (database clock); "
        f"-> next task start: median {statistics.median(latencies) * 1000:.1f} ms (task stamps)"
    )
    # polling (every 1 s, 0.25 s after an empty try) gave 0.15-0.45 s from end to next task start
    assert median < 0.05, f"the next limited job was claimed {median:.3f} s after the slot freed (median)"
    for p in procs:
        p.stop()


def test_a_worker_held_by_a_rate_limit_starts_when_the_window_opens(db_url, make_app, workers):
    app = _prepare(make_app)
    app.limits.set("queue", "mail", rate="2/1s")
    ids = app.enqueue_many([limited.send.prepare(sleep=0.0) for _ in range(10)])
    proc = workers(app="tests.apps.limited:app", queues="mail", concurrency=4)
    wait_until(lambda: _finished(app, ids), 240, message="all mail jobs completed")
    starts = _starts(app, ids)  # the database clock, as the rate windows see it
    gaps = [later - first for first, later in zip(starts, starts[2:], strict=False)]
    assert min(gaps) >= 1.0 - 1e-3, "a third start happened inside a 1 s window"
    late = statistics.median(gaps) - 1.0
    print(f"{db_url.split(':')[0]}: window open -> next start: median {late * 1000:.1f} ms")
    assert late < 0.25, f"a held-back job started {late:.3f} s after its window opened (median)"
    proc.stop()


def test_idle_workers_waiting_on_a_limit_do_not_spin(db_url, make_app, workers):
    """Two workers wait on a queue whose only slot a long job holds: they use no more CPU than
    a worker with nothing to do at all (measured beside them, so the machine's load cancels out)."""
    app = _prepare(make_app)
    app.limits.set("queue", "mail", concurrency=1, rate="1/10s")
    first = app.enqueue(limited.send.prepare(sleep=30))
    waiting = app.enqueue_many([limited.send.prepare(sleep=0.0) for _ in range(5)])
    procs = [workers(app="tests.apps.limited:app", queues="mail", concurrency=2) for _ in range(2)]
    control = workers(app="tests.apps.limited:app", queues="nothing-here", concurrency=2)
    wait_until(lambda: app.get_job(first.id).state == JobState.RUNNING, 60, message="first job running")
    time.sleep(1.0)  # past start-up
    handles = [psutil.Process(p.pid) for p in [*procs, control]]
    before = [sum(h.cpu_times()[:2]) for h in handles]
    time.sleep(4.0)
    *used, idle = [sum(h.cpu_times()[:2]) - b for h, b in zip(handles, before, strict=True)]
    print(f"{db_url.split(':')[0]}: CPU over 4 s, waiting: {[round(u, 3) for u in used]}, idle: {idle:.3f}")
    assert all(app.get_job(i).state == JobState.AVAILABLE for i in waiting)
    # A worker polling its limited claim in a loop burns seconds of CPU in 4 s; waiting costs
    # what idling costs (heartbeat, waker, maintenance), give or take the machine's noise.
    assert max(used) < 1.5 * idle + 0.3, f"waiting on a limit: {max(used):.2f} s of CPU, idle: {idle:.2f} s"
    for p in [*procs, control]:
        p.stop()


def _registered(app) -> bool:
    with app.db.read() as conn:
        return conn.execute(select(workers_table.c.id)).first() is not None


def _hold(app, n: int) -> tuple[LeaseSQL, list[Claim]]:
    """Claim `n` mail jobs under the limits, as a worker that then never starts them."""
    sql = LeaseSQL(app.db, 30)
    with app.db.begin() as conn:
        claims, _ = sql.claim_limited(
            conn, worker_id="holder", queues=["mail"], tasks=["mail.send"], limit=n, local_caps={}
        )
    assert len(claims) == n
    return sql, claims


def test_claims_handed_back_unstarted_give_their_place_in_the_rate_window_back(db_url, make_app):
    app = _prepare(make_app)
    app.limits.set("queue", "mail", rate="4/60s")  # a window a loaded CI machine cannot outlast
    app.enqueue_many([limited.send.prepare() for _ in range(12)])
    sql, held = _hold(app, 4)
    claim = dict(worker_id="w", queues=["mail"], tasks=["mail.send"], local_caps={})
    with app.db.begin() as conn:
        assert sql.claim_limited(conn, limit=4, **claim)[0] == [], "the window holds 4 starts"
        refused = sql.apply_outcomes(conn, [Outcome(c, "returned", 0.0) for c in held])
        assert refused == []
        again, opens_in = sql.claim_limited(conn, limit=8, **claim)
    assert len(again) == 4, "the starts handed back still filled the rate window"
    assert opens_in is not None and 30.0 < opens_in <= 60.0
    assert next(r for r in app.limits.list() if r.name == "mail").rate == "4/minute"


def test_rescued_and_snoozed_attempts_did_start_and_keep_their_place(db_url, make_app):
    app = _prepare(make_app)
    app.limits.set("queue", "mail", rate="4/60s")  # a window a loaded CI machine cannot outlast
    app.enqueue_many([limited.send.prepare() for _ in range(8)])
    sql, held = _hold(app, 4)
    claim = dict(worker_id="w", queues=["mail"], tasks=["mail.send"], local_caps={})
    with app.db.begin() as conn:  # two were snoozed by their task, two lost their worker
        sql.apply_outcomes(conn, [Outcome(c, "snoozed", 0.1, retry_in=0.0) for c in held[:2]])
        conn.execute(
            update(jobs)
            .where(jobs.c.id.in_([c.job.id for c in held[2:]]))
            .values(lease_expires_at=datetime(2000, 1, 1, tzinfo=UTC))
        )
    with app.db.begin() as conn:
        rescued = leases.rescue(app.db, conn, [c.key for c in held[2:]])
    assert len(rescued) == 2
    with app.db.begin() as conn:
        conn.execute(update(jobs).where(jobs.c.state == "snoozed").values(state="available"))
        assert sql.claim_limited(conn, limit=8, **claim)[0] == [], "a started attempt left the window"


def test_a_worker_starts_at_once_the_places_a_holder_hands_back(db_url, make_app, workers):
    """A holder fills a 4/10s window and hands its claims back unstarted: a worker process starts
    4 jobs at once (not when the window would have opened) and never 5 real starts in 10 s."""
    app = _prepare(make_app)
    app.limits.set("queue", "mail", rate="4/10s")
    ids = app.enqueue_many([limited.send.prepare(sleep=0.0) for _ in range(8)])
    sql, held = _hold(app, 4)
    proc = workers(app="tests.apps.limited:app", queues="mail", concurrency=4)
    wait_until(lambda: _registered(app), 60, message="worker registered")
    time.sleep(0.5)  # the worker has tried, and waits on the full window
    assert runs(app, "mail.send") == []
    with app.db.begin() as conn:
        sql.apply_outcomes(conn, [Outcome(c, "returned", 0.0) for c in held])
        handed_back = datetime.now(UTC).timestamp()
    wait_until(lambda: _finished(app, ids), 240, message="all mail jobs completed")
    starts = _starts(app, ids)
    assert len(starts) == 8, "a job started twice, or a returned claim counted as a run"
    assert all(later - first >= 10.0 - 1e-3 for first, later in zip(starts, starts[4:], strict=False))
    assert starts[3] - handed_back < 0.9, "the worker waited for the window instead of the places given back"
    proc.stop()
