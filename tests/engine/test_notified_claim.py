"""A notification starts the idle worker's armed claim on the database thread at once (not via
the event loop) without losing a wake-up: one that arrives while that claim runs, a burst, a
listener that reconnects, a stop while the claim runs. The worker runs in a thread of the test
(its own pool, waker and loop); jobs are enqueued by another `App`, so they wake it only
through the database (NOTIFY, or SQLite's data version). The poll interval is 30 s: a lost
wake-up shows as a job that waits for it."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import text

from ledgerflow.engine.states import JobState
from ledgerflow.errors import DatabaseUnavailable
from tests.conftest import wait_until

POLL = 30.0  # a lost wake-up waits this long
PROMPT = 5.0  # a job woken for starts within this (a loaded machine included)


class Running:
    """A worker of `app` running in a thread; records each job's start (monotonic) by key."""

    def __init__(self, app: Any, concurrency: int = 4) -> None:
        self.started: dict[int, float] = {}
        self.launched: list[bool] = []  # per notification: did it start the armed claim?
        self.hold: dict[int, threading.Event] = {}  # a job of this key runs until it is set
        started = self.started

        @app.task(name="mark")
        def mark(key: int) -> None:
            started.setdefault(key, time.monotonic())
            if key in self.hold:
                self.hold[key].wait(POLL)

        self.worker = app.worker(concurrency=concurrency, poll_interval=POLL)
        signal = self.worker._signal

        def counted(start_claim: bool) -> None:
            armed = self.worker._armed
            signal(start_claim)
            if start_claim:
                self.launched.append(armed is not None and armed.cycle is not None)

        self.worker._signal = counted
        self.thread = threading.Thread(target=self.worker.run, name="test-worker", daemon=True)

    def wait_started(self, key: int, since: float) -> float:
        """Seconds from `since` to the start of job `key` (fails past PROMPT)."""
        wait_until(lambda: key in self.started, PROMPT, 0.005, f"job {key} started (a lost wake-up?)")
        return self.started[key] - since


@pytest.fixture
def running(make_app) -> Iterator[Callable[..., tuple[Running, Any]]]:
    """(the running worker, a client app of the same tasks), the worker idle and listening."""
    made: list[Running] = []

    def start(concurrency: int = 4) -> tuple[Running, Any]:
        run = Running(make_app(), concurrency)
        made.append(run)
        client = make_app()
        client.task(name="mark")(lambda key: None)
        run.thread.start()
        wait_until(lambda: run.worker._armed is not None, 30, 0.01, "the worker armed (idle)")
        first = enqueue(client, -1)
        run.wait_started(-1, time.monotonic())  # the waker listens
        # its outcome written (the loop disarms to write it), then armed again: idle (review4)
        wait_until(lambda: client.get_job(first).state == JobState.COMPLETED, PROMPT, 0.005, "job -1 done")
        wait_until(lambda: run.worker._armed is not None, PROMPT, 0.005, "idle again")
        return run, client

    yield start
    for run in made:
        run.worker.stop()
        run.thread.join(30)
        assert not run.thread.is_alive(), "the worker did not stop"


def enqueue(client: Any, key: int) -> int:
    return int(client.enqueue(client.registry.get("mark").prepare(key=key)).id)


def test_a_notification_starts_the_claim_and_one_arriving_during_it_is_claimed_again(running):
    """Job 2 commits after the started claim read the jobs (the claim misses it) and its
    notification arrives before that claim is back: it must be claimed at once, not at the poll."""
    run, client = running()
    worker = run.worker
    cycle = worker._cycle
    second: dict[str, Any] = {}

    def slow_cycle(outcomes: list[Any], slots: dict[str, int]) -> Any:
        out = cycle(outcomes, slots)
        if not second and any(c.job.kwargs.get("key") == 1 for c in out[0]):
            wakes = worker._wakes
            second["at"] = time.monotonic()
            second["id"] = enqueue(client, 2)
            wait_until(lambda: worker._wakes > wakes, PROMPT, 0.002, "job 2's notification counted")
        return out

    worker._cycle = slow_cycle
    before = len(run.launched)
    enqueue(client, 1)
    run.wait_started(1, time.monotonic())
    assert run.launched[before], "job 1's notification did not start the claim"
    run.wait_started(2, second["at"])
    assert client.get_job(second["id"]).attempt == 1


def test_a_burst_of_single_enqueues_each_starts_promptly_and_once(running):
    run, client = running()
    keys = list(range(100, 160))
    since = {}
    for n, key in enumerate(keys):
        since[key] = time.monotonic()
        enqueue(client, key)
        time.sleep(0.002 * (n % 3))  # some during a claim, some between, some together
    for key in keys:
        run.wait_started(key, since[key])
    assert any(run.launched), "no notification started a claim"
    wait_until(lambda: client.store.counts().get(("default", "mark", "completed"), 0) >= 61, PROMPT)
    with client.db.read() as conn:
        attempts = conn.execute(text("SELECT attempt, count(*) FROM jobs GROUP BY attempt")).all()
    assert attempts == [(1, 61)]


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)  # its LISTEN connection
def test_a_job_enqueued_while_the_listener_reconnects_starts_after_it_reconnects(running):
    run, client = running()
    with client.db.read() as conn:
        listeners = conn.execute(  # its last statement: LISTEN, or the election's lock
            text(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                " AND pid <> pg_backend_pid() AND (query LIKE 'LISTEN%' OR query LIKE '%advisory%')"
            )
        ).all()
        assert len(listeners) == 1
        since = time.monotonic()
        conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": listeners[0][0]})
    key = enqueue(client, 3)
    assert run.wait_started(3, since) < PROMPT
    assert client.get_job(key).attempt == 1
    since = time.monotonic()
    enqueue(client, 4)  # and the new connection listens
    run.wait_started(4, since)


def test_a_stop_while_the_started_claim_runs_gives_its_jobs_back(running):
    """The loop begins to stop while the claim a notification started has not yet claimed: that
    claim's job is given back (available, no attempt) before the worker exits, not held until
    its lease runs out."""
    run, client = running()
    worker = run.worker
    cycle = worker._cycle
    claimed: list[int] = []

    def stopped_first(outcomes: list[Any], slots: dict[str, int]) -> Any:
        if not claimed:  # the first cycle after the enqueue: the one the notification started
            worker.stop()
            time.sleep(0.2)  # the loop begins to drain before this claim is back (see below)
        out = cycle(outcomes, slots)
        claimed.extend(c.job.id for c in out[0])
        return out

    woken = worker._woken

    def woken_after_the_stop() -> None:  # the loop wakes only once stopping
        wait_until(lambda: worker._stopping, PROMPT, 0.001, "the stop")
        woken()

    worker._cycle = stopped_first
    worker._woken = woken_after_the_stop
    before = len(run.launched)
    key = enqueue(client, 5)
    run.thread.join(30)
    assert not run.thread.is_alive()
    assert run.launched[before], "job 5's notification did not start the claim"
    assert claimed == [key]
    job = client.get_job(key)
    assert (job.state, job.attempt, 5 in run.started) == (JobState.AVAILABLE, 0, False)


def busy_loop_until_back(
    worker: Any, first: Callable[[Any], bool], then: Callable[[], None]
) -> Callable[..., Any]:
    """A `_cycle` whose first call that `first` accepts (by its result) keeps the event loop busy
    (as an async job's step would) from before `then` runs until after that claim is back, so
    the loop sees `then`'s wake-up and the claim's own only after both were sent (review4)."""
    cycle = worker._cycle
    calls: list[int] = []

    def busy_cycle(outcomes: list[Any], slots: dict[str, int]) -> Any:
        out = cycle(outcomes, slots)
        if not calls and first(out):
            calls.append(1)
            release = threading.Event()
            worker._loop.call_soon_threadsafe(release.wait, PROMPT)  # the loop is busy
            then()
            threading.Timer(0.3, release.set).start()  # after this claim is back and has woken it
        return out

    return busy_cycle


def test_a_notification_while_the_claim_comes_back_to_a_busy_loop_is_claimed_again(running):
    """The claim job 5's notification started read the jobs before job 6 committed; job 6's
    notification and the claim's return (job 5, fewer than the budget) both reach the loop before
    it runs again: one clear of the wake event must not swallow job 6's wake-up (it would wait for
    the poll interval; job 5 runs meanwhile, so no outcome makes the loop claim)."""
    run, client = running()
    worker = run.worker
    second: dict[str, Any] = {}

    def enqueue_second() -> None:
        wakes = worker._wakes
        second["at"] = time.monotonic()
        second["id"] = enqueue(client, 6)
        wait_until(lambda: worker._wakes > wakes, PROMPT, 0.002, "job 6's notification counted")

    run.hold[5] = threading.Event()
    worker._cycle = busy_loop_until_back(
        worker, lambda out: any(c.job.kwargs.get("key") == 5 for c in out[0]), enqueue_second
    )
    before = len(run.launched)
    enqueue(client, 5)
    wait_until(lambda: "id" in second, PROMPT, 0.005, "job 6 enqueued during job 5's claim")
    assert run.launched[before], "job 5's notification did not start the claim"
    try:
        run.wait_started(6, second["at"])
    finally:
        run.hold[5].set()
    assert client.get_job(second["id"]).attempt == 1


def test_a_stop_while_the_claim_comes_back_to_a_busy_loop_exits_at_once(running):
    """A stop whose wake-up reaches the loop together with the started claim's return: the worker
    exits at once (the loop was busy 0.3 s), not after the poll interval (30 s). Main before
    review4 passes too, later (0.5-0.8 s): another wake-up (PostgreSQL: the waker's hand-over
    NOTIFY once not ready; SQLite: a data version change) made up for the cleared one."""
    run, _client = running()
    worker = run.worker
    worker._cycle = busy_loop_until_back(worker, lambda out: True, worker.stop)
    before = len(run.launched)
    since = time.monotonic()
    worker._notified(None)
    assert run.launched[before], "the notification did not start the claim"
    run.thread.join(PROMPT)
    assert not run.thread.is_alive(), "the worker did not stop at once"
    assert time.monotonic() - since < 2.0


def test_a_notified_claim_the_database_fails_is_retried_by_the_loop_and_runs_once(running):
    """The claim a notification started fails (the database unreachable before its statement):
    the loop backs off and claims again, job 7 runs once, at once (a guard, review4)."""
    run, client = running()
    worker = run.worker
    cycle = worker._cycle
    failed: list[int] = []

    def unreachable_first(outcomes: list[Any], slots: dict[str, int]) -> Any:
        if not failed:
            failed.append(1)
            raise DatabaseUnavailable("injected: the database is unreachable")
        return cycle(outcomes, slots)

    worker._cycle = unreachable_first
    before = len(run.launched)
    since = time.monotonic()
    key = enqueue(client, 7)
    run.wait_started(7, since)
    assert run.launched[before], "job 7's notification did not start the claim"
    assert failed, "the fault fired"
    wait_until(lambda: client.get_job(key).state == JobState.COMPLETED, PROMPT, 0.005, "job 7 done")
    assert client.get_job(key).attempt == 1
    assert len(client.store.executions(key)) == 1


def test_a_claim_gate_that_raises_on_the_waker_s_thread_leaves_the_claim_to_the_loop(running):
    """A claim gate is asked on the waker's thread when a notification would start the armed
    claim. One that raises there must not end the waker's thread (every later notification
    lost, each job waiting for the poll): the loop is woken and claims as before."""
    run, client = running()

    def gate() -> bool:
        if threading.current_thread() is not run.thread:
            raise RuntimeError("a gate that fails off the loop's thread")
        return True

    run.worker.app._claim_gates.append(gate)
    for key in (1, 2):  # the second one needs the waker alive after the first
        since = time.monotonic()
        enqueue(client, key)
        run.wait_started(key, since)
