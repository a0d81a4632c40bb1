"""A test app run by real worker processes (`--app tests.apps.basic:app`)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from pathlib import Path

from sqlalchemy import insert

from ledgerflow import App, current_job
from tests.runs import runs

app = App()


def _mark(phase: str, label: str | None = None) -> None:
    job = current_job()
    assert job is not None
    with app.db.begin() as conn:
        conn.execute(
            insert(runs).values(
                job_id=job.job_id, attempt=job.attempt, pid=os.getpid(), label=label, phase=phase
            )
        )


@app.task(name="record", retry_backoff=0.2)
def record(sleep: float = 0.0, label: str | None = None) -> None:
    """Record the run (start and end) around an optional sleep."""
    _mark("start", label)
    if sleep:
        time.sleep(sleep)
    _mark("end", label)


@app.task(name="record_async", retry_backoff=0.2)
async def record_async(sleep: float = 0.0, label: str | None = None) -> None:
    _mark("start", label)
    if sleep:
        await asyncio.sleep(sleep)
    _mark("end", label)


@app.task(name="fail_always", max_attempts=3, retry_backoff=[0.3, 0.9])
def fail_always() -> None:
    _mark("start")
    raise RuntimeError("this task always fails")


@app.task(name="sleep_sync", timeout=1.0, max_attempts=2, retry_backoff=0.1)
def sleep_sync(seconds: float) -> None:
    _mark("start")
    time.sleep(seconds)


@app.task(name="sleep_async", timeout=1.0, max_attempts=2, retry_backoff=0.1)
async def sleep_async(seconds: float) -> None:
    _mark("start")
    await asyncio.sleep(seconds)


@app.task(name="spin", isolation="process", timeout=1.5, max_attempts=1)
def spin() -> None:
    """Pure-Python busy loop: only killing the process can stop it."""
    while True:
        pass


@app.task(name="block_sync", timeout=120)
def block_sync(seconds: float) -> None:
    _mark("start")
    time.sleep(seconds)
    _mark("end")


@app.task(name="block_async", timeout=120)
async def block_async(seconds: float) -> None:
    """Blocks its event loop with a synchronous sleep (a badly written async task)."""
    _mark("start")
    time.sleep(seconds)
    _mark("end")


@app.task(name="isolated_ok", isolation="process", timeout=30)
def isolated_ok(x: int) -> int:
    return x * 2


@app.task(name="report_progress", timeout=120)
def report_progress(steps: int, release: str) -> str:
    """Report `steps` progress values and some metadata, then wait until the file `release` exists."""
    job = current_job()
    assert job is not None
    for step in range(1, steps + 1):
        job.progress(100 * step // (steps + 1), f"page {step} of {steps + 1}")
    job.set_metadata({"pages": steps + 1, "file": "statement-2026-11.pdf"})
    while not os.path.exists(release):
        time.sleep(0.05)
    job.progress(100, "done")
    return "finished"


@app.task(name="isolated_effect", isolation="process", timeout=60, max_attempts=1)
def isolated_effect(folder: str, seconds: float) -> None:
    """Notes its start (with its pid) in `folder`, then after `seconds` leaves its side effect."""
    Path(folder, "started").write_text(str(os.getpid()))
    time.sleep(seconds)
    Path(folder, "effect").write_text("done")


@app.task(name="isolated_progress", isolation="process", timeout=120)
def isolated_progress(steps: int, release: str) -> str:
    """`report_progress` in a child process: reports through the worker, then waits for `release`."""
    job = current_job()
    assert job is not None and job.task == "isolated_progress"
    for step in range(1, steps + 1):
        job.progress(100 * step // (steps + 1), f"page {step} of {steps + 1}")
    job.set_metadata({"pages": steps + 1, "pid": os.getpid()})
    while not os.path.exists(release):
        time.sleep(0.05)
    job.progress(100, "done")
    return "finished"


@app.task(name="exit_sync", max_attempts=1)
def exit_sync(kind: str, seconds: float) -> None:
    """After `seconds`, raise SystemExit or KeyboardInterrupt from the task's own thread."""
    _mark("start")
    time.sleep(seconds)
    raise SystemExit(3) if kind == "exit" else KeyboardInterrupt()


@app.task(name="exit_async", max_attempts=1)
async def exit_async(kind: str, seconds: float) -> None:
    """`exit_sync` as an async task: raises in the worker's event loop."""
    _mark("start")
    await asyncio.sleep(seconds)
    raise SystemExit(3) if kind == "exit" else KeyboardInterrupt()


@app.task(name="pause")
def pause(seconds: float = 0.0) -> None:
    """Sleep `seconds` (0: a no-op job), recording nothing: the worker's own cost dominates."""
    if seconds:
        time.sleep(seconds)


@app.task(name="stubborn_async", timeout=60)
async def stubborn_async(seconds: float) -> str:
    """Ignores every cancellation (its timeout's, a shutdown's) for `seconds`, then returns."""
    _mark("start")
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(until - time.monotonic())
    _mark("end")
    return "late"
