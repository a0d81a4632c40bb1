"""CPU of an idle SQLite worker's waker while another process commits (not part of `make bench`).

python -m bench.waker [--rate 100] [--seconds 10]

Starts a `DataVersionWaker` (ready, poll 5 s) on a fresh WAL database in this process, whose
main thread only sleeps, while a child process commits `rate` single-row inserts a second for
`seconds`; prints this process's CPU time (`getrusage`, the waker thread's, the child's not
counted), the commits and the wake-ups. Compare trees with `PYTHONPATH=/tmp/X/src`.
"""

from __future__ import annotations

import argparse
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def write(path: str, rate: float, seconds: float) -> int:
    """Commit `rate` inserts a second for `seconds`, each its own transaction; the count."""
    conn = sqlite3.connect(path, isolation_level=None)
    start = next_at = time.monotonic()
    count = 0
    while time.monotonic() - start < seconds:
        conn.execute("INSERT INTO t VALUES (?)", (count,))
        count += 1
        next_at += 1.0 / rate
        time.sleep(max(0.0, next_at - time.monotonic()))
    conn.close()
    return count


def measure(rate: float, seconds: float) -> dict[str, float]:
    """The waker's CPU (ms) while a child process commits, with the commits and wake-ups."""
    from ledgerflow.db.sqlite import DataVersionWaker

    with tempfile.TemporaryDirectory() as folder:
        path = str(Path(folder) / "waker.db")
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE t (x)")
        wakeups = [0]
        waker = DataVersionWaker(path, 5.0)
        waker.ready(True)
        waker.start(lambda _payload: wakeups.__setitem__(0, wakeups[0] + 1))
        try:
            time.sleep(0.5)
            before = _cpu()
            child = [sys.executable, "-m", "bench.waker", "--write", path, "--rate", str(rate), "--seconds"]
            out = subprocess.run([*child, str(seconds)], capture_output=True, text=True, check=True)
            time.sleep(0.6)  # the last recheck window
            cpu_ms = (_cpu() - before) * 1000
        finally:
            waker.stop()
            conn.close()
    return {"cpu_ms": round(cpu_ms, 1), "commits": int(out.stdout), "wakeups": wakeups[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--write", help=argparse.SUPPRESS)  # the committing child
    args = parser.parse_args()
    if args.write:
        print(write(args.write, args.rate, args.seconds))
        return
    print(measure(args.rate, args.seconds))


if __name__ == "__main__":
    main()
