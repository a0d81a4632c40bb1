"""Job-start timestamps recorded outside the queue, the same way for every system measured.

A benchmark sets `BENCH_STAMPS` to a file; each no-op job (ledgerflow's and every peer's)
calls `record(key)`, which appends `"<key> <unix time> <pid>\\n"` with one `write` on an
O_APPEND descriptor (atomic for lines this short, so processes can share the file). Processing
time is then read from the file, never from the queue's own bookkeeping; the pid tells which
worker process ran the job (`Stamps.by_pid`). Lines without a pid (older files) still read.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

_fd: tuple[int, int] | None = None  # (pid, descriptor): reopened after a fork


def record(key: object) -> None:
    """Append this job's key and the current time (no-op when `BENCH_STAMPS` is unset)."""
    global _fd
    path = os.environ.get("BENCH_STAMPS")
    if not path:
        return
    if _fd is None or _fd[0] != os.getpid():
        _fd = (os.getpid(), os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644))
    os.write(_fd[1], f"{key} {time.time():.6f} {_fd[0]}\n".encode())


def parse(line: str) -> tuple[str, float, int | None] | None:
    """One stamp line: (key, unix time, pid or None for a line without one); None if malformed."""
    parts = line.split(" ")
    if len(parts) < 2 or not parts[1]:
        return None
    return parts[0], float(parts[1]), int(parts[2]) if len(parts) > 2 else None


@dataclass(frozen=True)
class Stamps:
    """What a stamps file holds: start times in order, how often each key ran, and each worker
    process's start times in order (`by_pid`; key None for lines without a pid)."""

    times: list[float]
    runs: Counter[str]
    by_pid: dict[int | None, list[float]]

    @classmethod
    def read(cls, path: Path, prefix: str = "") -> Stamps:
        """The stamps of `path`, or only those whose key starts with `prefix`."""
        times: list[float] = []
        runs: Counter[str] = Counter()
        by_pid: dict[int | None, list[float]] = {}
        if path.exists():
            for line in path.read_text().splitlines():
                stamp = parse(line)
                if stamp is not None and stamp[0].startswith(prefix):
                    key, at, pid = stamp
                    runs[key] += 1
                    times.append(at)
                    by_pid.setdefault(pid, []).append(at)
        times.sort()
        for pid_times in by_pid.values():
            pid_times.sort()
        return cls(times, runs, by_pid)

    @property
    def count(self) -> int:
        return len(self.times)

    @property
    def duplicates(self) -> int:
        """Executions beyond the first of the same key (a queue delivering a job twice)."""
        return sum(n - 1 for n in self.runs.values())

    def rate(self, first: int = 0, last: int | None = None) -> float:
        """Jobs per second from the `first`-th start to the `last`-th (default: all of them)."""
        last = self.count - 1 if last is None else last
        seconds = self.times[last] - self.times[first]
        return (last - first + 1) / seconds if seconds > 0 else float("nan")


def count_lines(path: Path) -> int:
    """How many jobs have started so far (cheap enough to poll)."""
    try:
        with open(path, "rb") as f:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 16), b""))
    except FileNotFoundError:
        return 0
