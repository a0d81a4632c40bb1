"""Apps run by benchmark worker processes."""

from __future__ import annotations

from bench import stamp
from ledgerflow import App

app = App()


@app.task(name="bench.noop")
def noop(i: int = 0) -> None:
    """Does nothing but record its start (see bench/stamp.py): measures the queue, not the work."""
    stamp.record(i)
