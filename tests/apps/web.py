"""The dashboard's end-to-end test app: the built-in tasks plus one that dies on its first attempt."""

from __future__ import annotations

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
