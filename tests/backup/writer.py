"""A process that keeps writing to a ledgerflow database from two threads until a file appears.

`python -m tests.backup.writer DATABASE_URL STOP_FILE`: each thread inserts a `test_runs` row
and commits, again and again (the load a busy worker puts on the database).
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

from sqlalchemy import insert

from ledgerflow.db.database import Database
from tests.conftest import runs


def write_until(db: Database, stop: Path, thread: int, parent: int) -> None:
    n = 0
    while not stop.exists() and os.getppid() == parent:  # an orphan stops too
        n += 1
        with db.begin() as conn:
            conn.execute(insert(runs).values(job_id=n, attempt=thread, pid=os.getpid(), phase="start"))


def main() -> None:
    db = Database(sys.argv[1])
    stop = Path(sys.argv[2])
    threads = [threading.Thread(target=write_until, args=(db, stop, t, os.getppid())) for t in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    db.dispose()


if __name__ == "__main__":
    main()
