"""The dashboard's end-to-end test app: the built-in tasks plus one that dies on its first attempt."""

from __future__ import annotations

import os
import time

from ledgerflow import current_job
from ledgerflow.builtin import build_app

app = build_app()


@app.task(name="web.flaky", max_attempts=1)
def flaky(note: str) -> str:
    """Fails on attempt 1 (so it lands in the dead-letter queue), succeeds when retried."""
    job = current_job()
    if job is not None and job.attempt == 1:
        raise RuntimeError(f"first attempt fails: {note}")
    return note


@app.task(name="web.pages", timeout=300)
def pages(release: str) -> str:
    """Reports "page 2 of 3" with its metadata, then waits until the file `release` exists."""
    job = current_job()
    assert job is not None
    job.progress(40, "page 2 of 3")
    job.set_metadata({"statement": "ธนาคาร 2026-11"})
    while not os.path.exists(release):
        time.sleep(0.1)
    job.progress(100, "all 3 pages")
    return "read"
