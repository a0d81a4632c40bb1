"""The app of outcome tests (`--app tests.apps.outcomes:app`): tasks whose outcome is hard to store."""

from __future__ import annotations

import os
import time
from typing import Any

from sqlalchemy import insert

from ledgerflow import App, current_job
from tests.runs import runs

app = App()


class Opaque:
    """A return value that JSON cannot encode."""


#: What `returns(kind)` gives back: values PostgreSQL or JSON cannot hold as they are.
VALUES: dict[str, Any] = {
    "nan": float("nan"),
    "inf": float("inf"),
    "nul": "before\x00after",
    "surrogate": "before\udc80after",
    "object": Opaque(),
    "poison": "poison",  # refused by a trigger in the test that installs one
    "stubborn": "stubborn",  # every outcome of its first attempt refused by a trigger
    "fine": {"ok": True},
}


def _mark(phase: str) -> None:
    job = current_job()
    assert job is not None
    with app.db.begin() as conn:
        conn.execute(
            insert(runs).values(job_id=job.job_id, attempt=job.attempt, pid=os.getpid(), phase=phase)
        )


@app.task(name="returns", max_attempts=1)
def returns(kind: str, sleep: float = 0.0) -> Any:
    _mark("start")
    time.sleep(sleep)
    return VALUES[kind]


@app.task(name="echo", max_attempts=1)
def echo(value: Any, sleep: float = 0.0) -> Any:
    """Its argument back, as the worker read it from the job."""
    _mark("start")
    time.sleep(sleep)
    return value


@app.task(name="raises_nul", max_attempts=1)
def raises_nul() -> None:
    raise RuntimeError("bad \x00 message \udc80 from the task")
