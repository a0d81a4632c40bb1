"""Run one daily export in this process and report time and memory (used by tests and `make bench`).

Memory is the resident set sampled every 10 ms (`ru_maxrss` is useless here: Linux carries the
parent's high-water mark into a forked child).

Usage: python -m bench.export_memory DATABASE_URL OUT_DIR [DATE]  → prints one JSON line (the
export of DATE, default 2026-11-26).
"""

from __future__ import annotations

import json
import sys
import threading
import time
from datetime import date

import psutil

from ledgerflow.builtin import build_app
from ledgerflow.config import load_settings
from ledgerflow.export.saga import ExportSaga


def main(url: str, out: str, day: date = date(2026, 11, 26)) -> dict[str, object]:
    app = build_app(
        load_settings(
            database_url=url,
            export_destination=f"file://{out}",
            export_work_dir=f"{out}.work",
            export_generation_timeout=3600,
            log_level="WARNING",
        )
    )
    app.db.ping()
    saga = ExportSaga(app)
    process = psutil.Process()
    baseline = process.memory_info().rss
    peak = [baseline]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.01):
            peak[0] = max(peak[0], process.memory_info().rss)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started, cpu = time.perf_counter(), time.process_time()
    result = saga.run_daily(day)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    done.set()
    sampler.join()
    return {
        "state": result.state,
        "entries": result.entry_count,
        "lines": result.line_count,
        "seconds": round(seconds, 3),
        "cpu_seconds": round(cpu, 3),  # this process only (the database server's time is not in it)
        "rows_per_s": round(result.line_count / seconds) if seconds else None,
        "baseline_rss_mb": round(baseline / 2**20, 1),
        "peak_rss_mb": round(peak[0] / 2**20, 1),
        "rss_growth_mb": round((peak[0] - baseline) / 2**20, 1),
        "bytes": sum(f["bytes"] for f in result.files),
    }


if __name__ == "__main__":
    day = date.fromisoformat(sys.argv[3]) if len(sys.argv) > 3 else date(2026, 11, 26)
    print(json.dumps(main(sys.argv[1], sys.argv[2], day)))
