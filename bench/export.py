"""Export benchmark: end-to-end daily export vs a plain csv.writer loop over the same cursor,
repeated on the same entries (median and min-max)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy import literal, select

from bench.common import ROOT, database
from bench.fair import spread
from bench.ledger_data import load_entries
from ledgerflow import App
from ledgerflow.db.tables import journal_entries as e
from ledgerflow.db.tables import journal_lines as ln

SIZES = {"10k_lines": (2_500, 4), "10k_entries": (10_000, 4), "1m_lines": (50_000, 20)}


def reference_seconds(app: App, directory: Path) -> tuple[float, float]:
    """The floor: stream the same rows in the same order and write them with csv.writer, nothing else.

    Returns (wall seconds, CPU seconds of this process)."""
    query = (
        select(
            e.c.reference,
            e.c.entry_date,
            ln.c.account,
            ln.c.account_name,
            e.c.description,
            ln.c.debit_minor,
            ln.c.credit_minor,
            ln.c.tax_code,
            e.c.currency,
            ln.c.memo,
            literal(1),
        )
        .select_from(e.join(ln, ln.c.entry_id == e.c.id))
        .order_by(e.c.entry_date, e.c.reference, ln.c.line_no)
    )
    started, cpu = time.perf_counter(), time.process_time()
    with (
        app.db.read(transaction=True) as conn,
        open(directory / "reference.csv", "w", encoding="utf-8-sig", newline="") as out,
    ):
        writer = csv.writer(out, lineterminator="\r\n")
        for r in conn.execution_options(stream_results=True, yield_per=5000).execute(query):
            writer.writerow(
                (
                    r[0],
                    r[1],
                    r[2],
                    r[3],
                    r[4],
                    f"{r[5] // 100}.{r[5] % 100:02d}",
                    f"{r[6] // 100}.{r[6] % 100:02d}",
                    r[7],
                    r[8],
                    r[9],
                )
            )
    return time.perf_counter() - started, time.process_time() - cpu


def reset(app: App) -> None:
    """Forget every export so the same entries can be exported again (benchmark data only)."""
    with app.db.begin() as conn:
        conn.exec_driver_sql(
            "UPDATE export_queue SET status = 'queued', batch_id = NULL, file_id = NULL, "
            "file_link = NULL, error = NULL, exported_at = NULL"
        )
        for table in ("export_batch_entries", "export_logs", "export_batches"):
            conn.exec_driver_sql(f"DELETE FROM {table}")
    if not app.db.is_sqlite:  # no dead rows carried into the next repetition
        with app.db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM (ANALYZE) export_queue, export_batches, export_logs")


def one(backend: str, entries: int, lines: int, reps: int) -> dict[str, Any]:
    """`reps` daily exports of the same entries (each in a child process, RSS sampled), each
    beside a bare csv.writer pass over the same ordered cursor."""
    exports: list[dict[str, Any]] = []
    references: list[tuple[float, float]] = []
    with database(backend) as url, tempfile.TemporaryDirectory(prefix="lf-bench-export-") as tmp:
        app = App(database_url=url, log_level="WARNING")
        app.migrate()
        load_entries(app, entries, lines)
        for rep in range(reps):
            if rep:
                reset(app)
            references.append(reference_seconds(app, Path(tmp)))
            out = subprocess.run(
                [sys.executable, "-m", "bench.export_memory", url, f"{tmp}/out{rep}"],
                capture_output=True,
                text=True,
                cwd=ROOT,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
                check=True,
            )
            exports.append(json.loads(out.stdout))
        app.close()
    last = exports[-1]
    return {
        "entries": last["entries"],
        "lines": last["lines"],
        "state": sorted({e["state"] for e in exports}),
        "seconds": spread([e["seconds"] for e in exports], 3),
        "reference_seconds": spread([r[0] for r in references], 3),
        "ratio_to_reference": spread(
            [e["seconds"] / r[0] for e, r in zip(exports, references, strict=True)], 2
        ),
        # client CPU only: robust to a loaded machine, blind to the database server's share
        "cpu_seconds": spread([e["cpu_seconds"] for e in exports], 3),
        "reference_cpu_seconds": spread([r[1] for r in references], 3),
        "cpu_ratio_to_reference": spread(
            [e["cpu_seconds"] / r[1] for e, r in zip(exports, references, strict=True)], 2
        ),
        "rows_per_s": spread([e["rows_per_s"] for e in exports]),
        "peak_rss_mb": spread([e["peak_rss_mb"] for e in exports], 1),
        "rss_growth_mb": spread([e["rss_growth_mb"] for e in exports], 1),
        "bytes": last["bytes"],
    }


def run(backends: list[str], sizes: list[str] | None = None, reps: int = 5) -> dict[str, Any]:
    return {
        backend: {name: one(backend, *SIZES[name], reps) for name in (sizes or list(SIZES))}
        for backend in backends
    }


if __name__ == "__main__":
    print(json.dumps(run(sys.argv[1:] or ["sqlite", "postgresql"]), indent=2))
