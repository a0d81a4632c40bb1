"""Wake-ups elect one idle worker (advisory lock / lock file) without losing one: real processes."""

from __future__ import annotations

import signal

from tests.apps import basic
from tests.conftest import count_runs, run_rows, wait_until


def _started(db_url: str, job_id: int) -> list[dict]:
    return [r for r in run_rows(db_url) if r["job_id"] == job_id and r["phase"] == "start"]


def _ended(db_url: str, job_id: int) -> bool:
    return any(r["job_id"] == job_id and r["phase"] == "end" for r in run_rows(db_url))


def _wait_ready(db_url: str, make_app, n: int) -> None:
    """Both workers are up and listening: each has run a warm-up job of its own."""
    app = make_app()
    pids: set[int] = set()
    for _ in range(40):
        job = app.enqueue(basic.record.prepare(sleep=0.3))
        wait_until(lambda j=job: _started(db_url, j.id), 90, 0.02)
        pids |= {r["pid"] for r in _started(db_url, job.id)}
        if len(pids) >= n:
            return
    raise AssertionError(f"only {len(pids)} of {n} workers ever ran a job")


def test_a_job_enqueued_while_the_elected_worker_is_busy_starts_on_another(db_url, make_app, workers):
    app = make_app()
    workers(concurrency=1, name="a")
    workers(concurrency=1, name="b")
    _wait_ready(db_url, make_app, 2)
    wait_until(lambda: app.store.counts().get(("default", "record", "completed"), 0) >= 2, 20)
    long = app.enqueue(basic.record.prepare(sleep=4.0))
    busy = wait_until(lambda: _started(db_url, long.id), 20, 0.02)[0]["pid"]
    short = app.enqueue(basic.record.prepare())
    other = wait_until(lambda: _started(db_url, short.id), 20, 0.02)[0]["pid"]
    assert other != busy, "the busy worker's wake-up was not handed over"
    assert not _ended(db_url, long.id), "the second job waited for the first to finish"
    wait_until(lambda: _ended(db_url, long.id), 20)
    assert set(count_runs(db_url).values()) == {1}


def test_jobs_still_start_after_the_elected_worker_is_killed(db_url, make_app, workers):
    app = make_app()
    procs = {}
    for name in ("a", "b"):
        w = workers(concurrency=2, name=name)
        procs[w.pid] = w
    _wait_ready(db_url, make_app, 2)
    first = app.enqueue(basic.record.prepare())
    leader = wait_until(lambda: _started(db_url, first.id), 20, 0.02)[0]["pid"]
    wait_until(lambda: _ended(db_url, first.id), 20)
    procs[leader].signal(signal.SIGKILL)
    procs[leader].wait(10)
    later = [app.enqueue(basic.record.prepare()) for _ in range(5)]
    for job in later:
        rows = wait_until(lambda j=job: _started(db_url, j.id), 90, 0.02)
        assert rows[0]["pid"] != leader
    assert set(count_runs(db_url).values()) == {1}


def test_one_at_a_time_jobs_each_run_once_with_idle_workers(db_url, make_app, workers):
    app = make_app()
    for name in ("a", "b", "c"):
        workers(concurrency=4, name=name)
    _wait_ready(db_url, make_app, 1)
    ids = []
    for _ in range(30):
        job = app.enqueue(basic.record.prepare())
        ids.append(job.id)
        wait_until(lambda j=job: _ended(db_url, j.id), 20, 0.01)
    runs = count_runs(db_url)
    assert all(runs[i] == 1 for i in ids)
