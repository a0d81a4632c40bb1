"""Huey with its SQLite storage, as its documentation configures it, for the peer benchmark.

WAL journal and 8 MB page cache (its defaults), `fsync=False` as its documentation describes
the default (the code leaves SQLite's FULL in place unless told: False means synchronous=OFF,
faster and not durable through an OS crash). Results are not stored (nothing to keep).
"""

import os

from huey import SqliteHuey

from bench import stamp

huey = SqliteHuey(filename=os.environ.get("HUEY_DB", "/tmp/huey-bench.db"), results=False, fsync=False)


@huey.task()
def noop(i: int = 0) -> None:
    """Records its start (bench/stamp.py), nothing else."""
    stamp.record(i)
