"""Shared benchmark helpers: throwaway databases, worker processes, RSS sampling."""

from __future__ import annotations

import compileall
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import psutil
import psycopg

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN = os.environ.get("LEDGERFLOW_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
    }


@contextmanager
def database(backend: str) -> Iterator[str]:
    """A fresh empty database URL for `backend` ('sqlite' or 'postgresql'), removed afterwards."""
    if backend == "sqlite":
        with tempfile.TemporaryDirectory(prefix="lf-bench-") as tmp:
            yield f"sqlite:///{tmp}/bench.db"
        return
    name = f"lf_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")  # type: ignore[arg-type]
    try:
        yield PG_ADMIN.rsplit("/", 1)[0] + "/" + name
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")  # type: ignore[arg-type]


class RssSampler(threading.Thread):
    """Samples the resident set size of processes; keeps the peak per pid."""

    def __init__(self, pids: list[int], interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.procs = [psutil.Process(p) for p in pids]
        self.peak: dict[int, int] = {p: 0 for p in pids}
        self.interval = interval
        self.stop_flag = threading.Event()

    def run(self) -> None:
        while not self.stop_flag.is_set():
            for p in self.procs:
                with suppress(psutil.Error):
                    self.peak[p.pid] = max(self.peak[p.pid], p.memory_info().rss)
            time.sleep(self.interval)

    def stop(self) -> list[float]:
        self.stop_flag.set()
        self.join()
        return [round(v / 2**20, 1) for v in self.peak.values()]


def spawn(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    full = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    return subprocess.Popen(args, env=full, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def summary(values: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(percentile(values, 50) * 1000, 2),
        "p99_ms": round(percentile(values, 99) * 1000, 2),
        "mean_ms": round(statistics.fmean(values) * 1000, 2) if values else float("nan"),
    }


def python() -> str:
    return sys.executable


def precompile() -> None:
    """Byte-compile ledgerflow's sources and the bench apps once, as `pip install` does for the
    peers' wheels. Without it an editable install under `PYTHONDONTWRITEBYTECODE=1` (set on the
    benchmark machines) has no `.pyc`, and every worker process would compile ledgerflow again at
    start (about 0.3 s of CPU), a handicap no installed user has."""
    for tree in (ROOT / "src" / "ledgerflow", ROOT / "bench"):
        compileall.compile_dir(tree, quiet=1)


@contextmanager
def rows_read(conn: Any, sqlite: bool) -> Iterator[list[int]]:
    """PostgreSQL: rows of `jobs` read meanwhile in this transaction (sequential + by index).
    SQLite: thousands of virtual machine instructions run meanwhile."""
    counted = [0]
    if sqlite:
        raw = conn.connection.driver_connection

        def step() -> int:
            counted[0] += 1
            return 0

        raw.set_progress_handler(step, 1000)
        try:
            yield counted
        finally:
            raw.set_progress_handler(None, 0)
        return
    sql = (
        "SELECT coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0) FROM pg_stat_xact_user_tables "
        "WHERE relname = 'jobs'"
    )
    before = int(conn.exec_driver_sql(sql).scalar() or 0)
    yield counted
    counted[0] = int(conn.exec_driver_sql(sql).scalar() or 0) - before
