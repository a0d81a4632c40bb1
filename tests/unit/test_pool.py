"""The sync tasks' thread pool: calls end once, are cancelled only before they start."""

from __future__ import annotations

import threading
import time

from ledgerflow.engine.pool import DaemonThreadPool


def test_a_call_reports_its_value_or_error_once_in_its_thread():
    pool = DaemonThreadPool(2)
    ended: list[tuple[str, str]] = []
    done = threading.Event()

    def on_done(key: str) -> None:
        ended.append((key, threading.current_thread().name))
        if len(ended) == 3:
            done.set()

    def boom() -> None:
        raise ValueError("boom")

    def leave() -> None:
        raise SystemExit(3)

    ok = pool.call(lambda a, b: a + b, (1, 2), on_done, "ok")
    bad = pool.call(boom, (), on_done, "bad")
    out = pool.call(leave, (), on_done, "exit")
    assert done.wait(5)
    assert sorted(k for k, _ in ended) == ["bad", "exit", "ok"]
    assert all(name.startswith("ledgerflow-task") for _, name in ended)
    assert ok.done() and ok.value == 3 and ok.error is None
    assert bad.done() and isinstance(bad.error, ValueError)
    assert isinstance(out.error, SystemExit)  # the task's failure, not the thread's end
    assert not ok.cancel() and not bad.cancel()  # ran: cannot be cancelled
    pool.shutdown()


def test_a_call_cancelled_before_it_starts_never_runs_and_a_running_one_can_be_abandoned():
    pool = DaemonThreadPool(1)
    release = threading.Event()
    ran: list[str] = []
    ended: list[str] = []
    busy = pool.call(lambda: release.wait(10), (), ended.append, "busy")
    queued = pool.call(lambda: ran.append("queued"), (), ended.append, "queued")
    deadline = time.monotonic() + 5
    while busy.thread is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not busy.cancel() and not busy.done()  # started: too late to cancel
    assert queued.cancel() and queued.done() and queued.cancel()  # cancelled, and stays so
    pool.abandon(busy)  # its thread is retired; a replacement serves the next call
    after = threading.Event()
    pool.call(after.set, (), ended.append, "after")
    assert after.wait(5)
    release.set()
    deadline = time.monotonic() + 5
    while "busy" not in ended and time.monotonic() < deadline:
        time.sleep(0.01)
    assert ran == [] and sorted(ended) == ["after", "busy"]
    pool.shutdown()
