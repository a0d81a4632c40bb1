"""Backup benchmark: a verified backup of a database holding 100,000 jobs with their executions."""

from __future__ import annotations

import os
import tempfile
import time
from typing import Any

from bench.common import database
from bench.dashboard import seed
from ledgerflow.backup import create_backup
from ledgerflow.builtin import build_app
from ledgerflow.config import load_settings


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


def run(backends: list[str], jobs: int = 100_000) -> dict[str, Any]:
    results = {}
    for backend in backends:
        with database(backend) as url:
            results[backend] = measure(url, jobs)
    return results
