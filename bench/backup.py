"""Backup benchmark: verified backups of a 100,000-job database, and of a ~100 MB one idle and
while another process writes from two threads (the load under which the old stepwise SQLite
copy never finished)."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.common import database
from bench.dashboard import seed
from ledgerflow.backup import create_backup
from ledgerflow.builtin import build_app
from ledgerflow.config import load_settings

ROOT = Path(__file__).resolve().parent.parent


def _database_bytes(app: Any) -> int:
    if app.db.is_sqlite:
        path = app.db.engine.url.database
        return sum(os.path.getsize(p) for p in (path, f"{path}-wal") if os.path.exists(p))
    with app.db.read() as conn:
        from sqlalchemy import text

        return int(conn.execute(text("SELECT pg_database_size(current_database())")).scalar_one())


def measure(url: str, jobs: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="lf-bench-backup-") as folder:
        app = build_app(load_settings(database_url=url, backup_dir=folder, log_level="WARNING"))
        app.migrate()
        seed(app, jobs)
        size = _database_bytes(app)
        started = time.perf_counter()
        backup = create_backup(app)
        seconds = time.perf_counter() - started
        app.close()
        return {
            "jobs": jobs,
            "database_mb": round(size / 2**20, 1),
            "backup_mb": round(backup.bytes / 2**20, 1),
            "ratio": round(backup.bytes / size, 3),
            "seconds_with_verification": round(seconds, 2),
            "rows": backup.total_rows,
        }


def measure_under_load(url: str, megabytes: int = 100) -> dict[str, Any]:
    """A ~`megabytes` database (jobs with 100 KB of args), backed up idle, then under a writer."""
    with tempfile.TemporaryDirectory(prefix="lf-bench-backup-") as folder:
        app = build_app(load_settings(database_url=url, backup_dir=folder, log_level="WARNING"))
        app.migrate()
        task = app.registry.get("ledgerflow.cleanup")
        for _ in range(megabytes // 10):  # random text: PostgreSQL would compress repeated bytes away
            app.enqueue_many(
                [task.prepare([base64.b64encode(os.urandom(75_000)).decode()]) for _ in range(100)]
            )
        size = _database_bytes(app)
        started = time.perf_counter()
        create_backup(app)
        idle = time.perf_counter() - started
        stop = Path(folder) / "stop"
        writer = subprocess.Popen(
            [sys.executable, "-m", "bench.backup", "write", url, str(stop)],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        try:
            time.sleep(2)  # a benchmark, not a test: let the writer reach its pace
            before = _jobs(app)
            started = time.perf_counter()
            create_backup(app)
            loaded = time.perf_counter() - started
            written = _jobs(app) - before
        finally:
            stop.touch()
            writer.wait(60)
        app.close()
        return {
            "database_mb": round(size / 2**20, 1),
            "seconds_idle": round(idle, 2),
            "seconds_under_2_thread_writer": round(loaded, 2),
            "rows_written_during_backup": written,
        }


def _jobs(app: Any) -> int:
    from sqlalchemy import func, select

    from ledgerflow.db.tables import jobs

    with app.db.read() as conn:
        return int(conn.execute(select(func.count()).select_from(jobs)).scalar_one())


def _write(url: str, stop: Path) -> None:
    """Two threads enqueueing one small job per transaction until `stop` exists."""
    app = build_app(load_settings(database_url=url, log_level="WARNING"))
    task = app.registry.get("ledgerflow.cleanup")

    def loop() -> None:
        while not stop.exists():
            app.enqueue(task.prepare(1))

    threads = [threading.Thread(target=loop) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    app.close()


def run(backends: list[str], jobs: int = 100_000) -> dict[str, Any]:
    results = {}
    for backend in backends:
        with database(backend) as url:
            results[backend] = measure(url, jobs)
        with database(backend) as url:
            results[f"{backend}_100mb_under_load"] = measure_under_load(url)
    return results


if __name__ == "__main__" and sys.argv[1:2] == ["write"]:
    _write(sys.argv[2], Path(sys.argv[3]))
