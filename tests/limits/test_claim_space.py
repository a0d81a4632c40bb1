"""Generated limits, jobs and worker caps against the real database: the limited claim never
passes a limit and leaves nothing claimable behind that a limit did not hold back."""

from __future__ import annotations

from collections import Counter

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete, select, update

from ledgerflow import JobSpec, JobState
from ledgerflow.db.tables import job_executions, job_limits, jobs
from ledgerflow.engine.leases import LeaseSQL

QUEUES = ["q1", "q2"]
TASKS = ["t1", "t2", "t3"]

limit_value = st.one_of(st.none(), st.integers(1, 3))
scenario = st.fixed_dictionaries(
    {
        "queue_limits": st.fixed_dictionaries({q: limit_value for q in QUEUES}),
        "task_limits": st.fixed_dictionaries({t: limit_value for t in TASKS}),
        "queue_rates": st.fixed_dictionaries({q: limit_value for q in QUEUES}),
        "jobs": st.lists(st.tuples(st.sampled_from(QUEUES), st.sampled_from(TASKS)), max_size=14),
        "already_running": st.integers(0, 4),
        "want": st.integers(1, 8),
        "local_caps": st.fixed_dictionaries({q: st.one_of(st.none(), st.integers(0, 2)) for q in QUEUES}),
    }
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(s=scenario)
def test_limited_claim_respects_every_limit_and_takes_all_it_may(make_app, s):
    app = make_app()
    with app.db.begin() as conn:
        for table in (job_executions, jobs, job_limits):
            conn.execute(delete(table))
    for q in QUEUES:
        if s["queue_limits"][q] or s["queue_rates"][q]:
            rate = f"{s['queue_rates'][q]}/hour" if s["queue_rates"][q] else None
            app.limits.set("queue", q, concurrency=s["queue_limits"][q], rate=rate)
    for t in TASKS:
        if s["task_limits"][t]:
            app.limits.set("task", t, concurrency=s["task_limits"][t])
    app.enqueue_many([JobSpec(task=t, queue=q) for q, t in s["jobs"]])
    sql = LeaseSQL(app.db, 60)
    worker = {"queues": QUEUES, "tasks": TASKS}
    caps = {q: c for q, c in s["local_caps"].items() if c is not None}
    with app.db.begin() as conn:  # some jobs already running elsewhere (claimed without the limits)
        ids = [r.id for r in conn.execute(select(jobs.c.id).order_by(jobs.c.id).limit(s["already_running"]))]
        conn.execute(update(jobs).where(jobs.c.id.in_(ids)).values(state=JobState.RUNNING))
    with app.db.begin() as conn:
        claimed, _ = sql.claim_limited(conn, worker_id="w", limit=s["want"], local_caps=caps, **worker)
    with app.db.read() as conn:
        rows = conn.execute(select(jobs.c.id, jobs.c.queue, jobs.c.task, jobs.c.state)).all()
    running = [r for r in rows if r.state == JobState.RUNNING]
    by_queue = Counter(r.queue for r in running)
    by_task = Counter(r.task for r in running)
    mine = Counter(c.job.queue for c in claimed)
    assert len(claimed) <= s["want"]
    for c in claimed:
        q, t = c.job.queue, c.job.task
        assert s["queue_limits"][q] or s["queue_rates"][q] or s["task_limits"][t], (
            "an unlimited job was taken"
        )
    for q in QUEUES:
        if s["queue_limits"][q] and mine[q]:
            assert by_queue[q] <= s["queue_limits"][q], f"queue {q}: {by_queue[q]} running"
        if s["queue_rates"][q]:
            assert mine[q] <= s["queue_rates"][q], f"queue {q}: more starts than its rate"
        if q in caps:
            assert mine[q] <= caps[q], f"queue {q}: more than the worker's own cap"
    for t in TASKS:
        if s["task_limits"][t] and any(c.job.task == t for c in claimed):
            assert by_task[t] <= s["task_limits"][t], f"task {t}: {by_task[t]} running"
    if len(claimed) < s["want"]:  # whatever is left waiting was held back by a limit
        for r in rows:
            if r.state != JobState.AVAILABLE:
                continue
            if not (s["queue_limits"][r.queue] or s["queue_rates"][r.queue] or s["task_limits"][r.task]):
                continue
            held = [
                s["queue_limits"][r.queue] is not None and by_queue[r.queue] >= s["queue_limits"][r.queue],
                s["queue_rates"][r.queue] is not None and mine[r.queue] >= s["queue_rates"][r.queue],
                s["task_limits"][r.task] is not None and by_task[r.task] >= s["task_limits"][r.task],
                r.queue in caps and mine[r.queue] >= caps[r.queue],
            ]
            assert any(held), f"job {r.id} ({r.queue}, {r.task}) was left although no limit held it"
