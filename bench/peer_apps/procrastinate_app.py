"""Procrastinate on PostgreSQL, for the peer benchmark: an async no-op task, as its docs
recommend for concurrency within one worker (`procrastinate worker --concurrency N`)."""

import os

from procrastinate import App, PsycopgConnector

from bench import stamp

app = App(connector=PsycopgConnector(conninfo=os.environ.get("PEER_DSN", "")))


@app.task(name="noop")
async def noop(i: int = 0) -> None:
    """Records its start (bench/stamp.py), nothing else."""
    stamp.record(i)
