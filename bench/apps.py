"""Apps run by benchmark worker processes."""

from __future__ import annotations

from ledgerflow import App

app = App()


@app.task(name="bench.noop")
def noop(i: int = 0) -> None:
    """Does nothing: measures the queue, not the work."""
