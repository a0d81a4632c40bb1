"""Huey with its SQLite storage, as its documentation configures it, for the peer benchmark.

Defaults kept: WAL journal, 8 MB page cache, no fsync pragma. Results are not stored (the
no-op returns nothing to keep).
"""

import os

from huey import SqliteHuey

from bench import stamp

huey = SqliteHuey(filename=os.environ.get("HUEY_DB", "/tmp/huey-bench.db"), results=False)


@huey.task()
def noop(i: int = 0) -> None:
    """Records its start (bench/stamp.py), nothing else."""
    stamp.record(i)
