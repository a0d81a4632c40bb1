"""Review (branch review3) of the limited claim of a worker of several queues: the claim order's
ties (equal priority and `scheduled_at`, where the id decides, which SQLite's later rounds read on
from by a row comparison), rate and concurrency limits together, a queue named twice and a worker
of some of the tasks, against a reference walk in claim order."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete

from ledgerflow import JobSpec
from ledgerflow.db.tables import job_executions, job_limits, jobs, pauses
from ledgerflow.engine.leases import LeaseSQL

QUEUES, TASKS = ["q1", "q2", "q3"], ["t1", "t2", "t3"]
limit = st.one_of(st.none(), st.integers(1, 3))
scenario = st.fixed_dictionaries(
    {
        "concurrency": st.fixed_dictionaries({k: limit for k in [*QUEUES, *TASKS]}),
        "rate": st.fixed_dictionaries({k: limit for k in [*QUEUES, *TASKS]}),
        # two instants and two priorities only: many ties, the id decides; some jobs not due yet
        # or waiting for an unfinished job
        "jobs": st.lists(
            st.tuples(
                st.sampled_from(QUEUES),
                st.sampled_from(TASKS),
                st.integers(0, 1),
                st.integers(0, 1),
                st.sampled_from(["due", "due", "due", "later", "waiting"]),
            ),
            max_size=40,
        ),
        "paused": st.lists(st.sampled_from([*QUEUES, *TASKS]), max_size=2, unique=True),
        "want": st.integers(1, 12),
        "queues": st.lists(st.sampled_from(QUEUES), min_size=1, max_size=4),
        "tasks": st.lists(st.sampled_from(TASKS), min_size=1, max_size=3, unique=True),
        "local_caps": st.fixed_dictionaries({q: st.one_of(st.none(), st.integers(0, 3)) for q in QUEUES}),
    }
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(s=scenario)
def test_the_limited_claim_with_ties_takes_what_a_walk_in_claim_order_takes(make_app, s):
    """Each limited job of the worker's queues and tasks, due, not waiting for another job and not
    paused, in (priority, scheduled_at, id) order, is taken while every concurrency limit, rate
    limit and local cap it falls under has room."""
    app = make_app()
    with app.db.begin() as conn:
        for table in (job_executions, jobs, job_limits, pauses):  # one database for every example
            conn.execute(delete(table))
    room: dict[tuple[str, str], float] = {}
    for name in [*QUEUES, *TASKS]:
        kind = "queue" if name in QUEUES else "task"
        concurrency, rate = s["concurrency"][name], s["rate"][name]
        if concurrency is None and rate is None:
            continue
        app.limits.set(kind, name, concurrency=concurrency, rate=None if rate is None else (rate, 3600.0))
        room[(kind, name)] = min(
            math.inf if concurrency is None else concurrency, math.inf if rate is None else rate
        )
    limited = set(room)
    for name in s["paused"]:
        app.store.pause("queue" if name in QUEUES else "task", name)
    (parent,) = app.enqueue_many([JobSpec(task="t1", queue="unclaimed")])  # never finishes here
    at = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
    ids = app.enqueue_many(
        [
            JobSpec(
                task=t,
                queue=q,
                priority=p,
                scheduled_at=at
                - timedelta(seconds=d)
                + (timedelta(hours=1) if kind == "later" else timedelta()),
                depends_on=[parent] if kind == "waiting" else [],
            )
            for q, t, p, d, kind in s["jobs"]
        ]
    )
    caps = {q: c for q, c in s["local_caps"].items() if c is not None}
    for q, cap in caps.items():
        room[("queue", q)] = min(room.get(("queue", q), math.inf), cap)
    order = sorted(
        (p, -d, job_id, q, t, kind) for job_id, (q, t, p, d, kind) in zip(ids, s["jobs"], strict=True)
    )
    expected: list[int] = []
    for _, _, job_id, q, t, kind in order:
        if q not in s["queues"] or t not in s["tasks"] or kind != "due" or {q, t} & set(s["paused"]):
            continue
        keys = [k for k in (("queue", q), ("task", t)) if k in room]
        if (
            (("queue", q) in limited or ("task", t) in limited)
            and len(expected) < s["want"]
            and all(room[k] > 0 for k in keys)
        ):
            for k in keys:
                room[k] -= 1
            expected.append(job_id)
    sql = LeaseSQL(app.db, 60)
    try:
        with app.db.begin() as conn:
            claims, _ = sql.claim_limited(
                conn, worker_id="w", queues=s["queues"], tasks=s["tasks"], limit=s["want"], local_caps=caps
            )
            conn.rollback()
    finally:
        app.close()
    assert [c.job.id for c in claims] == expected
