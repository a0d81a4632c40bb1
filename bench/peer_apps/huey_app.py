"""Huey with its SQLite storage (no acknowledgements), for the peer benchmark."""

import os

from huey import SqliteHuey

huey = SqliteHuey(filename=os.environ.get("HUEY_DB", "/tmp/huey-bench.db"), results=False)


@huey.task()
def noop(i: int = 0) -> None:
    """Does nothing."""
