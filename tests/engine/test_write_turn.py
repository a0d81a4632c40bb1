"""SQLite: worker cycles take turns at the write lock (`WriteTurn`, `<database>-turn.lock`).

The turn is a hint: a waiter gets it as soon as the holder lets go, a dead holder loses it,
a frozen one holds the others back at most `WriteTurn.BOUND` once, and every job still runs
exactly once. Real processes and real SQLite files throughout."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from ledgerflow import JobState
from ledgerflow.db.sqlite import WriteTurn
from tests.apps import basic
from tests.conftest import count_runs, race_workers, run_rows, wait_until
from tests.engine.test_worker_faults import DB_THREAD, worker_cli
from tests.faults import process_state

pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # PostgreSQL: no turn


def turn_file(db_url: str) -> Path:
    return Path(db_url.removeprefix("sqlite:///") + "-turn.lock")


def completed(app) -> int:
    return app.store.counts().get(("default", "record", "completed"), 0)


def test_a_waiter_gets_the_turn_as_soon_as_the_holder_gives_it_back(db_url):
    holder, waiter = WriteTurn(str(turn_file(db_url)), 5.0), WriteTurn(str(turn_file(db_url)), 5.0)
    try:
        assert holder.acquire()
        got: list[float] = []
        thread = threading.Thread(target=lambda: waiter.acquire() and got.append(time.monotonic()))
        thread.start()
        time.sleep(0.3)
        assert not got, "two holders at once"
        released = time.monotonic()
        holder.release()
        thread.join(5)
        assert got and got[0] - released < 0.1, "the waiter slept on after the turn was free"
        waiter.release()
        assert holder.acquire(), "a given-back turn is free"
        holder.release()
    finally:
        holder.close()
        waiter.close()


def test_a_turn_held_past_the_bound_is_waited_for_once_then_skipped_until_it_is_free(db_url):
    holder, waiter = WriteTurn(str(turn_file(db_url)), 5.0), WriteTurn(str(turn_file(db_url)), 0.3)
    try:
        assert holder.acquire()
        started = time.monotonic()
        assert not waiter.acquire()
        assert 0.25 < time.monotonic() - started < 2, "waited the bound"
        started = time.monotonic()
        assert not waiter.acquire(), "still held"
        assert time.monotonic() - started < 0.05, "a holder stuck past the bound is not waited for again"
        waiter.release()  # went on without it: nothing to give back
        holder.release()
        # the abandoned wait takes the turn and gives it straight back
        wait_until(waiter.acquire, 5, 0.05, "the turn free again")
        waiter.release()
        assert holder.acquire(), "the abandoned wait gave the turn back"
        holder.release()
    finally:
        holder.close()
        waiter.close()


def test_a_sigkilled_holder_loses_the_turn_with_its_process(db_url):
    path = str(turn_file(db_url))
    code = (
        "import sys, time; from ledgerflow.db.sqlite import WriteTurn; "
        f"t = WriteTurn({path!r}, 1.0); assert t.acquire(); print('held', flush=True); time.sleep(60)"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    waiter = WriteTurn(path, 30.0)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        got: list[float] = []
        thread = threading.Thread(target=lambda: waiter.acquire() and got.append(time.monotonic()))
        thread.start()
        time.sleep(0.2)
        assert not got
        killed = time.monotonic()
        holder.send_signal(signal.SIGKILL)
        thread.join(10)
        assert got and got[0] - killed < 1, "the dead holder's turn was not given back"
    finally:
        holder.kill()
        holder.wait()
        waiter.close()


def test_the_turn_file_lies_beside_the_database_as_the_wake_up_lock_files_do(db_url, make_app, workers):
    app = make_app()
    ids = app.enqueue_many([basic.record.prepare() for _ in range(5)])
    worker = workers(concurrency=2, burst=True)
    assert worker.wait(60) == 0, worker.log()[-1500:]
    assert count_runs(db_url) == dict.fromkeys(ids, 1)
    lock = turn_file(db_url)
    wake = [p for p in lock.parent.iterdir() if "-wake-" in p.name]
    assert lock.is_file() and lock.stat().st_size == 0
    assert wake and stat.S_IMODE(lock.stat().st_mode) == stat.S_IMODE(wake[0].stat().st_mode)
    assert lock.stat().st_uid == wake[0].stat().st_uid == os.getuid()


def test_a_turn_file_that_cannot_be_opened_costs_the_turn_not_the_jobs(db_url, make_app, workers):
    turn_file(db_url).mkdir()  # a directory where the file would go (root ignores permissions)
    app = make_app()
    ids = app.enqueue_many([basic.record.prepare() for _ in range(5)])
    worker = workers(concurrency=2, burst=True)
    assert worker.wait(60) == 0, worker.log()[-1500:]
    assert count_runs(db_url) == dict.fromkeys(ids, 1)
    assert "-turn.lock unavailable" in worker.log()


def test_worker_processes_taking_turns_run_every_job_exactly_once(db_url, make_app, workers):
    app = make_app()
    procs = [workers(concurrency=4, name=f"w{i}") for i in range(3)]
    done = {("default", "record", "completed"): 600}
    race_workers(
        db_url, app, procs, lambda: app.enqueue_many([basic.record.prepare() for _ in range(600)]), done
    )
    assert {r["pid"] for r in run_rows(db_url)} == {p.pid for p in procs}, "every worker took part"
    assert turn_file(db_url).is_file()


def test_a_worker_sigkilled_holding_the_turn_mid_cycle_loses_no_job_to_the_others(
    db_url, make_app, workers, tmp_path
):
    """The victim dies just before the COMMIT of a cycle that completes and claims (the turn and
    SQLite's write lock held); the survivor goes on, rescues the victim's jobs, and only the
    victim's unacknowledged jobs may run twice."""
    app = make_app()
    ids = app.enqueue_many([basic.record.prepare(sleep=0.01) for _ in range(300)])
    log = tmp_path / "victim.log"
    victim = worker_cli(db_url, log, f"kill:3:{DB_THREAD}:finished.duration", burst=False, concurrency=4)
    survivor = workers(concurrency=4, name="survivor")
    assert victim.wait(60) == -signal.SIGKILL, log.read_text()[-1500:]
    wait_until(lambda: {app.get_job(i).state for i in ids} == {JobState.COMPLETED}, 90, 0.3, "all done")
    rows = run_rows(db_url)
    by_victim = {r["job_id"] for r in rows if r["phase"] == "start" and r["pid"] == victim.pid}
    assert by_victim, "the victim ran jobs before it died"
    ran = count_runs(db_url)
    assert set(ran) == set(ids), "no job lost"
    assert {j for j, n in ran.items() if n > 1} <= by_victim, "only the victim's jobs may run twice"
    for job_id in ids:
        statuses = [e["status"] for e in app.store.executions(job_id)]
        assert statuses.count("completed") == 1 and "running" not in statuses, (job_id, statuses)
    assert survivor.proc.poll() is None, survivor.log()[-1500:]


def test_a_worker_frozen_holding_the_turn_holds_the_others_back_once_by_the_bound(
    db_url, make_app, workers, tmp_path
):
    """The frozen worker (SIGSTOP) took the turn for its first cycle, before its BEGIN
    IMMEDIATE: another worker waits for it `WriteTurn.BOUND` once, then runs every job through
    SQLite's own lock while the holder stays frozen, without waiting the bound per cycle."""
    app = make_app()
    first = app.enqueue_many([basic.record.prepare() for _ in range(4)])
    log = tmp_path / "frozen.log"
    frozen = worker_cli(db_url, log, f"stop:1:{DB_THREAD}:^BEGIN IMMEDIATE", burst=True, concurrency=4)
    try:
        wait_until(lambda: process_state(frozen.pid) == "T", 60, 0.05, "the worker frozen holding the turn")
        other = workers(concurrency=4, name="other")
        wait_until(lambda: "worker_started" in other.log(), 60, 0.05, "the other worker started")
        started = time.monotonic()
        ids = app.enqueue_many([basic.record.prepare() for _ in range(150)])
        for batch in range(5):  # cycles apart: each would wait the bound again without the skip
            ids += app.enqueue_many([basic.record.prepare() for _ in range(10)])
            wait_until(lambda n=164 + 10 * batch: completed(app) >= n, 60, 0.02, "the batch done")
        took = time.monotonic() - started
        assert process_state(frozen.pid) == "T", "still frozen"
        assert {app.get_job(i).state for i in first + ids} == {JobState.COMPLETED}
        assert took < WriteTurn.BOUND + 8, f"{took:.1f} s: the other worker waited the bound per cycle"
    finally:
        frozen.send_signal(signal.SIGCONT)
    assert frozen.wait(60) == 0, log.read_text()[-1500:]
    ran = count_runs(db_url)
    assert set(ran) == set(first + ids) and set(ran.values()) == {1}, "a job ran twice"
