"""Delivery guarantees with real worker processes racing, killed, stopped and frozen."""

from __future__ import annotations

import json
import signal
import time

from ledgerflow import JobState
from tests.apps import basic
from tests.conftest import count_runs, race_workers, run_rows, wait_until


def _states(app, ids):
    return {app.get_job(i).state for i in ids}


def _all_completed(app, ids):
    return _states(app, ids) == {JobState.COMPLETED}


def test_four_worker_processes_run_1000_jobs_exactly_once(db_url, make_app, workers):
    """The four race from the first job: the jobs are enqueued once every worker has started
    (larger runs, 10,000 jobs over 2 x 4, count duplicate executions in `make bench`: bench/fair.py)."""
    app = make_app()
    procs = [workers(concurrency=4, name=f"w{i}") for i in range(4)]
    done = {("default", "record", "completed"): 1000}
    race_workers(
        db_url, app, procs, lambda: app.enqueue_many([basic.record.prepare() for _ in range(1000)]), done
    )
    assert app.store.counts() == {("default", "record", "completed"): 1000}
    pids = {r["pid"] for r in run_rows(db_url)}
    assert pids == {p.pid for p in procs}, "every worker took part"


def test_killed_worker_jobs_are_rescued_and_only_they_may_run_twice(db_url, make_app, workers):
    app = make_app()
    ids = app.enqueue_many([basic.record.prepare(sleep=0.3) for _ in range(120)])
    victim = workers(concurrency=4, name="victim")
    wait_until(
        lambda: any(r["pid"] == victim.pid for r in run_rows(db_url)), 30, message="victim starts work"
    )
    survivor = workers(concurrency=4, name="survivor")
    time.sleep(0.5)
    victim.signal(signal.SIGKILL)
    victim.wait(10)
    wait_until(lambda: _all_completed(app, ids), 90, 0.3, "every job completed")
    rows = run_rows(db_url)
    started_by_victim = {r["job_id"] for r in rows if r["phase"] == "start" and r["pid"] == victim.pid}
    # In flight at the kill = started by the victim and never acknowledged: still running, or
    # ended by the task while its batched acknowledgement was not yet committed.
    executions = {job_id: app.store.executions(job_id) for job_id in started_by_victim}
    in_flight_at_kill = {j for j, execs in executions.items() if execs[0]["status"] != "completed"}
    runs = count_runs(db_url)
    assert set(runs) == set(ids), "no job lost"
    duplicated = {j for j, n in runs.items() if n > 1}
    assert duplicated <= in_flight_at_kill, "only an unacknowledged attempt of the victim may run again"
    assert in_flight_at_kill, "the victim held running jobs when killed"
    for job_id in in_flight_at_kill:
        execs = executions[job_id]
        assert execs[0]["status"] == "failed" and execs[0]["error_type"] == "lease_expired"
        assert execs[-1]["status"] == "completed"
    for job_id in started_by_victim - in_flight_at_kill:
        assert runs[job_id] == 1, "an acknowledged job never runs again"
    assert "job_rescued" in survivor.log()


def test_sigterm_lets_running_jobs_finish_and_exits_zero(db_url, make_app, workers):
    app = make_app()
    ids = app.enqueue_many([basic.record.prepare(sleep=1.5) for _ in range(12)])
    w = workers(concurrency=4, name="graceful")
    wait_until(lambda: len(run_rows(db_url)) >= 4, 30, message="4 jobs running")
    w.signal(signal.SIGTERM)
    assert w.wait(15) == 0, w.log()[-2000:]
    rows = run_rows(db_url)
    started = {r["job_id"] for r in rows if r["phase"] == "start"}
    finished = {r["job_id"] for r in rows if r["phase"] == "end"}
    assert started == finished, "running jobs finished before exit"
    assert all(app.get_job(i).state == JobState.COMPLETED for i in started)
    assert all(app.get_job(i).state == JobState.AVAILABLE for i in set(ids) - started), "the rest untouched"
    rest = workers(concurrency=4, burst=True, name="rest")
    assert rest.wait(60) == 0
    assert set(count_runs(db_url).values()) == {1} and _all_completed(app, ids)


def test_sigterm_past_grace_period_releases_unfinished_jobs_to_the_queue(db_url, make_app, workers):
    app = make_app()
    sync_job, async_job = app.enqueue_many(
        [basic.record.prepare(sleep=8), basic.record_async.prepare(sleep=8)]
    )
    w = workers(concurrency=2, name="short-grace", env={"LEDGERFLOW_GRACE_SECONDS": "0.5"})
    wait_until(lambda: len(run_rows(db_url)) == 2, 90, message="both jobs running")
    w.signal(signal.SIGTERM)
    assert w.wait(15) == 0
    released = app.get_job(async_job)  # cancelled: handed back at once
    assert released.state == JobState.AVAILABLE and released.max_attempts == 6  # the attempt is given back
    assert app.store.executions(async_job)[0]["error_type"] == "shutdown"
    assert "job_released" in w.log()
    # a sync task's thread cannot be stopped: not handed back while it may run, only once the
    # process is gone (its lease lapses and a rescue makes it available), its attempt given back
    left = app.get_job(sync_job)
    assert left.state == JobState.RUNNING and left.max_attempts == 6
    assert "job_left_until_exit" in w.log()
    rest = workers(concurrency=2, name="rest")
    wait_until(lambda: _all_completed(app, [sync_job, async_job]), 60, 0.2, "both jobs run again")
    assert [(e["attempt"], e["error_type"]) for e in app.store.executions(sync_job)] == [
        (1, "lease_expired"),
        (2, None),
    ]
    assert "job_rescued" in rest.log()


def test_frozen_worker_is_fenced_and_the_rescuer_outcome_stands(db_url, make_app, workers):
    app = make_app()
    (job_id,) = app.enqueue_many([basic.record.prepare(sleep=3.0, label="fence")])
    frozen = workers(concurrency=1, name="frozen")
    wait_until(lambda: run_rows(db_url), 30, message="job started in the first worker")
    frozen.signal(signal.SIGSTOP)
    rescuer = workers(concurrency=1, name="rescuer")
    wait_until(
        lambda: any(r["pid"] == rescuer.pid and r["phase"] == "end" for r in run_rows(db_url)),
        60,
        0.2,
        "rescuer completes the job",
    )
    # its outcome is written in the rescuer's next cycle: committed before the frozen one wakes
    wait_until(lambda: app.get_job(job_id).state == JobState.COMPLETED, 30, 0.1, "rescuer's outcome written")
    frozen.signal(signal.SIGCONT)
    wait_until(lambda: "lease_lost" in frozen.log(), 20, 0.2, "frozen worker notices its lost lease")
    job = app.get_job(job_id)
    assert job.state == JobState.COMPLETED
    execs = app.store.executions(job_id)
    assert [(e["attempt"], e["status"]) for e in execs] == [(1, "failed"), (2, "completed")]
    assert execs[0]["error_type"] == "lease_expired"
    assert execs[1]["worker_id"] == job.worker_id
    assert str(rescuer.pid) in (job.worker_id or "")
    events = [json.loads(line)["event"] for line in frozen.log().splitlines() if line.startswith("{")]
    assert "job_completed" not in events


def test_tasks_blocking_three_leases_are_not_rescued_while_their_process_lives(db_url, make_app, workers):
    app = make_app()
    blocking = app.enqueue_many([basic.block_sync.prepare(6.0), basic.block_async.prepare(6.0)])
    busy = workers(concurrency=2, name="busy")
    wait_until(lambda: len(run_rows(db_url)) >= 2, 30, message="both blocking jobs started")
    watcher = workers(concurrency=2, name="watcher")  # would rescue anything it could
    wait_until(lambda: _all_completed(app, blocking), 40, 0.3, "blocking jobs complete")
    assert count_runs(db_url) == {blocking[0]: 1, blocking[1]: 1}
    for job_id in blocking:
        assert [e["status"] for e in app.store.executions(job_id)] == ["completed"]
    assert "job_rescued" not in watcher.log() + busy.log()


def test_worker_restarts_itself_after_too_many_abandoned_threads(db_url, make_app, workers):
    app = make_app()
    stuck = app.enqueue_many([basic.sleep_sync.prepare(30) for _ in range(2)])
    w = workers(concurrency=2, name="restarter", env={"LEDGERFLOW_MAX_ABANDONED_THREADS": "2"})
    wait_until(lambda: "worker_restart_requested" in w.log(), 30, 0.2, "restart requested")
    wait_until(lambda: w.log().count("worker_started") >= 2, 30, 0.2, "worker started again (same pid)")
    assert w.proc.poll() is None
    later = app.enqueue_many([basic.record.prepare()])
    wait_until(lambda: _all_completed(app, later), 30, 0.2, "restarted worker keeps working")
    for job_id in stuck:
        assert app.get_job(job_id).errors[0].type == "timeout"


def test_three_idle_workers_race_single_enqueues_exactly_once(db_url, make_app, workers):
    """Each job enqueued on its own, a notification per job (SQLite: a data version change), to
    three idle worker processes whose armed claims the notifications start (review4)."""
    app = make_app()
    procs = [workers(concurrency=2, name=f"w{i}") for i in range(3)]

    def one_by_one() -> list[int]:
        ids = []
        for n in range(150):
            ids.append(int(app.enqueue(basic.record.prepare()).id))
            time.sleep(0.003 * (n % 4))  # some while claims run, some while the workers idle
        return ids

    race_workers(db_url, app, procs, one_by_one, {("default", "record", "completed"): 150})
