"""Apps run by benchmark worker processes."""

from __future__ import annotations

import time

from bench import stamp
from ledgerflow import App, current_job

app = App()


@app.task(name="bench.noop")
def noop(i: int = 0) -> None:
    """Does nothing but record its start (see bench/stamp.py): measures the queue, not the work."""
    stamp.record(i)


@app.task(name="bench.noop_async")
async def noop_async(i: int = 0) -> None:
    """`noop` as an async task (run on the worker's event loop): the like-for-like job beside
    peers whose entrypoints are async."""
    stamp.record(i)


@app.task(name="bench.hold", max_attempts=3, timeout=600)
def hold(seconds: float, round_no: int = 0) -> int:
    """Holds its first attempt for `seconds` (the worker is killed meanwhile); later attempts
    return at once. The slow job (round -1) holds every attempt: it must never be rescued."""
    job = current_job()
    if job is not None and (job.attempt == 1 or round_no < 0):
        time.sleep(seconds)
    return round_no
