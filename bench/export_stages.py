"""Where one daily export's time goes, step by step: wall, this process's CPU and (PostgreSQL)
the database server's CPU, in a warm process, beside the reference `csv.writer` loop.

Usage: python -m bench.export_stages DATABASE_URL [REPS]  (a database loaded by
`bench.ledger_data.load_entries` for 2026-11-26; each repetition resets the export state).
The server's CPU is read from `/proc` for the backends of this process's connections
(`pg_backend_pid()`), so the database must run on this machine.
"""

from __future__ import annotations

import functools
import os
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import psutil
from sqlalchemy import event

from bench.export import reference_seconds, reset
from ledgerflow.builtin import build_app
from ledgerflow.config import load_settings
from ledgerflow.export import saga

#: The saga's steps timed (nested ones indented); `generate` is the stream and the files. The
#: books' SQL sum runs on its own thread while the files are re-read (CPU is per process).
STEPS: dict[str, tuple[Any, str]] = {
    "claim": (saga.ExportSaga, "_claim"),
    "  snapshot": (saga.ExportSaga, "_snapshot"),
    "generate": (saga.ExportSaga, "_generate"),
    "books summed in SQL (thread)": (saga.ExportSaga, "_books"),
    "files re-read for the totals": (saga, "file_totals"),
    "upload": (saga.ExportSaga, "_upload"),
    "  entries marked processing": (saga.ExportSaga, "_set_queue_status"),
    "complete": (saga.ExportSaga, "_complete"),
}


class Clocks:
    """Wall, this process's CPU and the server backends' CPU, summed per named step."""

    def __init__(self) -> None:
        self.backends: set[int] = set()
        self.totals: dict[str, list[float]] = {}

    def server(self) -> float:
        total = 0.0
        for pid in list(self.backends):
            try:
                cpu = psutil.Process(pid).cpu_times()
            except psutil.Error:
                continue
            total += cpu.user + cpu.system
        return total

    def now(self) -> tuple[float, float, float]:
        return time.perf_counter(), time.process_time(), self.server()

    def add(self, name: str, start: tuple[float, float, float]) -> None:
        row = self.totals.setdefault(name, [0.0, 0.0, 0.0])
        for i, (end, begin) in enumerate(zip(self.now(), start, strict=True)):
            row[i] += end - begin

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = self.now()
            try:
                return fn(*args, **kwargs)
            finally:
                self.add(name, start)

        return timed


def main(url: str, reps: int) -> None:
    clocks = Clocks()
    for name, (owner, attr) in STEPS.items():
        setattr(owner, attr, clocks.wrap(name, getattr(owner, attr)))
    with tempfile.TemporaryDirectory(prefix="lf-stages-") as tmp:
        for rep in range(reps):
            app = build_app(
                load_settings(
                    database_url=url,
                    export_destination=f"file://{tmp}/out{rep}",
                    export_work_dir=f"{tmp}/work",
                    export_generation_timeout=3600,
                    log_level="WARNING",
                )
            )
            if not app.db.is_sqlite:

                @event.listens_for(app.db.engine, "connect")
                def _backend(dbapi: Any, _record: Any) -> None:
                    with dbapi.cursor() as cursor:
                        cursor.execute("SELECT pg_backend_pid()")
                        clocks.backends.add(cursor.fetchone()[0])

            reset(app)
            clocks.totals.clear()
            app.db.ping()
            start = clocks.now()
            result = saga.ExportSaga(app).run_daily(date(2026, 11, 26))
            clocks.add("whole export", start)
            assert result.state == "completed", result
            start = clocks.now()
            reference_seconds(app, Path(tmp))
            clocks.add("reference csv.writer loop", start)
            print(f"repetition {rep + 1}, {result.line_count:,} lines, load {os.getloadavg()[0]:.1f}")
            print(f"  {'step':32s} {'wall s':>8s} {'CPU s':>8s} {'server s':>9s}")
            for name, (wall, cpu, server) in clocks.totals.items():
                print(f"  {name:32s} {wall:8.3f} {cpu:8.3f} {server:9.3f}")
            app.close()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 1)
