"""Procrastinate on PostgreSQL, for the peer benchmark."""

import os

from procrastinate import App, PsycopgConnector

app = App(connector=PsycopgConnector(conninfo=os.environ.get("PEER_DSN", "")))


@app.task(name="noop")
def noop(i: int = 0) -> None:
    """Does nothing."""
